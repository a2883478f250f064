"""The ImageNet pairs train end to end from their configs, with a pretrained-style .pth teacher."""

from __future__ import annotations

import os

import numpy as np
import pytest

from catkd_jax import config_files, convert, training
from catkd_jax.models import create_model
from conftest import REPO_ROOT, random_variables, read_metrics
from test_data import write_imagenet_folder


@pytest.mark.parametrize(
    "config_file, method_terms, networks",
    [
        # The ResNet50 -> MobileNet pair's networks: with every config (CATKD_TESTS_EVERY_CONFIG=1).
        ("imagenet_res34_res18.py", {"train_loss_ce", "train_loss_cat"}, {}),
        # The KD config's method on the same data and teacher path; its networks are the first
        # case's, so resnet8s spare compiling them again.
        ("imagenet_kd_res34_res18.py", {"train_loss_ce", "train_loss_kd"},
         {"teacher.arch": "resnet8", "student.arch": "resnet8"}),
    ],
)
def test_imagenet_config_trains_end_to_end_on_mock_data(config_file, method_terms, networks, tmp_path, capsys):
    record = _train_on_mock_imagenet(config_file, networks, tmp_path, image_size=96)
    assert method_terms <= set(record)
    assert "scaled linearly to 0.0015625 for the batch of 4" in capsys.readouterr().out


# Every ImageNet config, on its own networks at 224 pixels (ReviewKD's lists are fitted to that
# size): minutes of XLA compilation on a CPU, so only with CATKD_TESTS_EVERY_CONFIG=1 (a run of
# them: docs/benchmarks.md). The default suite trains the ResNet34 -> ResNet18 CAT-KD config above,
# and tests/test_configs.py holds each config to the original's.
EVERY_CONFIG = os.environ.get("CATKD_TESTS_EVERY_CONFIG") == "1"
IMAGENET_CONFIGS = sorted(path.name for path in (REPO_ROOT / "configs").glob("imagenet_*.py") if "teacher" not in path.name)


@pytest.mark.skipif(not EVERY_CONFIG, reason="minutes on a CPU: set CATKD_TESTS_EVERY_CONFIG=1 to train every ImageNet config")
@pytest.mark.parametrize("config_file", IMAGENET_CONFIGS)
def test_every_imagenet_config_trains_end_to_end_on_its_networks(config_file, tmp_path):
    record = _train_on_mock_imagenet(config_file, {}, tmp_path, image_size=224, batch_size=2)
    method_terms = {name for name in record if name.startswith("train_loss_")} - {"train_loss_ce"}
    assert "train_loss_ce" in record and method_terms, record  # CE and the method's own term


def _train_on_mock_imagenet(config_file: str, networks: dict, tmp_path, image_size: int, batch_size: int = 4) -> dict:
    """One epoch of `configs/<config_file>` (with `networks` overridden) on a mock ImageNet folder,
    a random .pth teacher; its metrics record, checked finite and at the recipe's scaled lr."""
    torch = pytest.importorskip("torch")
    write_imagenet_folder(tmp_path / "data")  # 8 classes of tiny JPEGs, ImageNet folder layout
    config = config_files.with_values(config_files.load_config(REPO_ROOT / "configs" / config_file), networks)
    teacher = create_model(config.teacher.arch, num_classes=8)
    variables = random_variables(teacher, (64, 64, 3))
    if image_size == 224:  # a random ResNet34/50's logits reach ~4e3 there (DKD's softmax: NaN); a trained one's ~10
        variables["params"]["classifier"]["kernel"] *= 1e-3
    teacher_pth = tmp_path / "teacher.pth"  # a bare state dict, as torchvision publishes them
    state_dict = convert.to_torch_state_dict(variables, config.teacher.arch)
    torch.save({key: torch.from_numpy(np.array(value)) for key, value in state_dict.items()}, teacher_pth)

    # 96 pixels for the small test: the last stage's maps are 3x3. At 64 they are 2x2, smaller
    # than the 3x3 kernels, and XLA's CPU convolutions then take a path 200x slower (measured:
    # 0.2 GFLOP/s); the test took 10 s longer.
    config.data.source, config.data.dir, config.data.image_size = "folder", str(tmp_path / "data"), image_size
    lr = config.optim.lr * batch_size / config.optim.lr_batch_size
    config.batch_size = config.eval_batch_size = batch_size
    config.num_epochs = 1
    config.teacher.checkpoint = str(teacher_pth)
    training.train_and_evaluate(config, tmp_path / "run")

    (record,) = read_metrics(tmp_path / "run")
    assert np.isfinite(record["train_loss"])
    assert record["lr"] == pytest.approx(lr)  # the recipe's lr, scaled to the batch
    return record
