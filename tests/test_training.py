"""End-to-end tests of training and evaluation on small synthetic and mock data."""

from __future__ import annotations

import collections
import json
import os
import pathlib
import re
import shutil
import subprocess
import struct
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from catkd_jax import checkpoints, convert, runs, testing, training
from catkd_jax.errors import DivergedError, UserError
from catkd_jax.models import create_model
from conftest import REPO_ROOT, read_metrics, shared_path, tiny_config, xla_flags


@pytest.mark.parametrize(
    "method, terms",
    [
        ("vanilla", {"train_loss_ce"}),
        ("cat_kd", {"train_loss_ce", "train_loss_cat"}),
        ("kd", {"train_loss_ce", "train_loss_kd"}),
        ("dkd", {"train_loss_ce", "train_loss_dkd"}),
    ],
)
def test_each_method_trains_logs_and_checkpoints(method, terms, teacher_dir, tmp_path):
    config = tiny_config(method=method, num_epochs=2, teacher__checkpoint=str(teacher_dir))
    if method == "cat_kd":
        config.student.classifier_bias = False
        config.cat_kd.num_cams = 3
        # The original's CAM-head init, N(0, 2 / classes), is wide for 10 classes: at lr 0.05
        # CAT's gradients (beta 15) make this 64-image run diverge.
        config.optim.lr = 0.01
    summary = training.train_and_evaluate(config, tmp_path)
    records = read_metrics(tmp_path)
    assert [r["epoch"] for r in records] == [1, 2]
    for record in records:
        assert terms <= set(record)
        assert np.isclose(record["train_loss"], sum(record[t] for t in terms), rtol=1e-5)
        for key in ("lr", "train_acc", "test_acc", "test_acc_top5", "test_loss", "best_test_acc", "epoch_seconds"):
            assert np.isfinite(record[key]), key
    assert summary["best_test_acc"] == max(r["test_acc"] for r in records)
    assert summary["final_test_acc"] == records[-1]["test_acc"]
    assert (tmp_path / "config.json").is_file()
    scalars = tensorboard_scalars(tmp_path / "tensorboard")
    assert scalars["train_loss"] == [(r["epoch"], pytest.approx(r["train_loss"])) for r in records]
    assert {key for r in records for key in r} - {"epoch"} == set(scalars)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()) == ["4", "8"]


def tensorboard_scalars(directory: pathlib.Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar of the TensorBoard event files in `directory`: tag -> [(step, value)].

    Event files are TFRecords (length, its CRC, an Event proto, its CRC); read without TensorFlow.
    """
    from tensorboardX.proto import event_pb2  # pylint: disable=import-outside-toplevel

    scalars = collections.defaultdict(list)
    for path in sorted(directory.iterdir()):
        data, offset = path.read_bytes(), 0
        while offset < len(data):
            (length,) = struct.unpack("<Q", data[offset:offset + 8])
            event = event_pb2.Event.FromString(data[offset + 12:offset + 12 + length])
            offset += 12 + length + 4
            for value in event.summary.value:
                scalars[value.tag].append((event.step, value.simple_value))
    return dict(scalars)


def test_learning_rate_is_constant_within_epochs_and_decays_after_listed_epochs():
    config = tiny_config()
    config.optim.lr, config.optim.decay_epochs, config.optim.decay_rate = 0.1, (2, 3), 0.5
    schedule = training.learning_rate_schedule(config, steps_per_epoch=10)
    # Epoch e (1-based) runs steps 10(e-1) .. 10e-1.
    for step, lr in [(0, 0.1), (19, 0.1), (20, 0.05), (29, 0.05), (30, 0.025), (99, 0.025)]:
        assert float(schedule(step)) == pytest.approx(lr), step


def test_learning_rate_scales_linearly_with_the_batch_when_asked():
    config = tiny_config(optim__lr=0.2, optim__decay_epochs=(), batch_size=128)
    assert float(training.learning_rate_schedule(config, 10)(0)) == pytest.approx(0.2)
    config.optim.lr_batch_size = 512  # 0.2 is the rate of a batch of 512
    assert float(training.learning_rate_schedule(config, 10)(0)) == pytest.approx(0.05)


def test_optimizer_matches_torch_sgd_with_weight_decay_and_momentum():
    torch = pytest.importorskip("torch")
    config = tiny_config()
    config.optim.lr, config.optim.weight_decay, config.optim.decay_epochs = 0.1, 0.01, (1,)
    tx = training.create_optimizer(config, steps_per_epoch=2)
    rng = np.random.default_rng(0)
    params = {"w": jnp.asarray(rng.normal(size=(3, 2)), jnp.float32)}
    weight = torch.nn.Parameter(torch.tensor(np.asarray(params["w"])))
    optimizer = torch.optim.SGD([weight], lr=0.1, momentum=0.9, weight_decay=0.01)
    opt_state = tx.init(params)
    for step in range(4):
        grad = rng.normal(size=(3, 2)).astype(np.float32)
        if step == 2:  # epoch 2 starts: the lr decays by 0.1 in both
            optimizer.param_groups[0]["lr"] = 0.01
        weight.grad = torch.tensor(grad)
        optimizer.step()
        updates, opt_state = tx.update({"w": jnp.asarray(grad)}, opt_state, params)
        params = optax.apply_updates(params, updates)
        np.testing.assert_allclose(params["w"], weight.detach().numpy(), rtol=1e-6, atol=1e-7)


def test_resume_after_interruption_is_bit_identical(tmp_path):
    uninterrupted, interrupted = tmp_path / "a", tmp_path / "b"
    training.train_and_evaluate(tiny_config(num_epochs=2), uninterrupted)
    training.train_and_evaluate(tiny_config(num_epochs=1), interrupted)  # "killed" after epoch 1
    training.train_and_evaluate(tiny_config(num_epochs=2), interrupted)  # the same command again
    a, _ = checkpoints.load_variables(uninterrupted)
    b, _ = checkpoints.load_variables(interrupted)
    jax.tree_util.tree_map(np.testing.assert_array_equal, a, b)
    assert [r["epoch"] for r in read_metrics(interrupted)] == [1, 2]
    assert read_metrics(interrupted)[1]["test_acc"] == read_metrics(uninterrupted)[1]["test_acc"]


def test_eval_from_checkpoint_equals_last_logged_accuracy(teacher_dir, capsys):
    result = training.evaluate(tiny_config(), teacher_dir)
    last = read_metrics(teacher_dir)[-1]
    assert result["test_count"] == 40
    assert result["test_acc"] == pytest.approx(last["test_acc"], abs=1e-9)
    assert result["test_loss"] == pytest.approx(last["test_loss"], rel=1e-5)
    printed = capsys.readouterr().out.strip().splitlines()[-1]
    assert printed.startswith(f"top1 {last['test_acc']:.2f} top5 ") and printed.endswith("(40 images)")


def test_published_pth_teacher_is_accepted(teacher_dir, tmp_path):
    variables, _ = checkpoints.load_variables(teacher_dir)
    pytest.importorskip("torch")
    import torch

    pth = tmp_path / "teacher.pth"
    torch.save({"model": {k: torch.from_numpy(v) for k, v in convert.to_torch_state_dict(variables, "resnet8").items()}}, pth)
    config = tiny_config(method="kd", teacher__checkpoint=str(pth))
    training.train_and_evaluate(config, tmp_path / "student")
    assert len(read_metrics(tmp_path / "student")) == 1


def test_teacher_is_trained_when_missing(tmp_path):
    config = tiny_config(method="cat_kd", teacher__train_if_missing=True, teacher__num_epochs=1)
    config.teacher.config = str(REPO_ROOT / "configs" / "cifar100_teacher_resnet56.py")
    config.teacher.arch = "resnet8"
    training.train_and_evaluate(config, tmp_path)
    teacher_info = json.loads((tmp_path / "teacher" / "config.json").read_text())
    assert teacher_info["method"] == "vanilla" and teacher_info["student"]["arch"] == "resnet8"
    assert teacher_info["data"]["source"] == "synthetic"
    assert len(read_metrics(tmp_path / "teacher")) == 1 and len(read_metrics(tmp_path)) == 1


def test_mismatched_teacher_is_refused_naming_both(teacher_dir, tmp_path):
    with pytest.raises(ValueError, match=r"arch 'resnet8' but the config asks for 'resnet20'"):
        training.train_and_evaluate(tiny_config(method="kd", teacher__arch="resnet20",
                                             teacher__checkpoint=str(teacher_dir)), tmp_path / "a")
    with pytest.raises(ValueError, match=r"num_classes 10 but the config asks for 100"):
        training.train_and_evaluate(tiny_config(method="kd", data__name="cifar100",
                                             teacher__checkpoint=str(teacher_dir)), tmp_path / "b")


def test_a_damaged_teacher_names_the_setting_that_points_at_it(teacher_dir, tmp_path):
    teacher = tmp_path / "teacher"
    shutil.copytree(teacher_dir, teacher)
    (step,) = (teacher / "checkpoints").iterdir()
    earlier = step.with_name(str(int(step.name) - 1))  # an intact step beside the damaged one
    shutil.copytree(step, earlier)
    data = max((path for path in (step / "state").rglob("*") if path.is_file()), key=lambda path: path.stat().st_size)
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
    with pytest.raises(UserError) as damaged:
        training.train_and_evaluate(tiny_config(method="kd", teacher__checkpoint=str(teacher)), tmp_path / "run")
    assert str(damaged.value).endswith(
        f"it is damaged. Point config.teacher.checkpoint at another step ({earlier}) or restore it from a copy")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(method="fsp"), "config.method='fsp' is unknown; use one of vanilla, cat_kd, kd, dkd, fitnet, at"),
        (dict(method="kd"), "needs a teacher but config.teacher.checkpoint is empty"),
        (dict(method="kd", teacher__checkpoint="/nonexistent/teacher"), "does not exist"),
        (dict(method="kd", teacher__train_if_missing=True, teacher__config=""),
         "config.teacher.train_if_missing trains the teacher with config.teacher.config, but it is empty; point"),
        (dict(dtype="float16"), "config.dtype='float16' is unknown; use one of float32, bfloat16"),
    ],
)
def test_config_errors_are_clear(overrides, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        training.train_and_evaluate(tiny_config(**overrides), tmp_path)


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint_and_its_record(teacher_dir, tmp_path):
    shutil.copytree(teacher_dir, tmp_path, dirs_exist_ok=True)  # one epoch of tiny_config()
    good, _ = checkpoints.load_variables(tmp_path)
    recorded = (tmp_path / "config.json").read_text()
    # An expected stop (a user error: one line, exit 1), naming where, what is kept and what to try.
    with pytest.raises(DivergedError) as error:
        training.train_and_evaluate(tiny_config(num_epochs=2, optim__lr=1e30, optim__decay_epochs=()), tmp_path,
                                 allow_changes=("optim.lr", "optim.decay_epochs"))
    assert isinstance(error.value, UserError) and "\n" not in str(error.value)
    assert re.fullmatch(rf"stopping: the training loss became (nan|inf) in epoch 2 \(steps 5-8\)\. The last good "
                        rf"checkpoint \(step 4\) is kept in {re.escape(str(tmp_path / 'checkpoints'))}\. Lower optim.lr, "
                        r"check the data, or \(distilling\) check the teacher's accuracy\.", str(error.value))
    kept, info = checkpoints.load_variables(tmp_path)
    assert info["epoch"] == 1
    jax.tree_util.tree_map(np.testing.assert_array_equal, kept, good)
    # No checkpoint was made with the allowed changes: the record still describes the kept one.
    assert (tmp_path / "config.json").read_text() == recorded
    assert not (tmp_path / "config_changes.jsonl").exists()


# Two steps: float differences of the cross-device reductions then stay below 1e-5. ReviewKD:
# its fusion modules' BatchNorms (in training mode) normalise over the batch split between the
# devices. lr 0.01: at 0.05 a diverging step amplifies the devices' different summation orders
# far beyond rounding. (CAT-KD and CRD on several devices: test_runs.py and test_multihost.py.)
_MULTI_DEVICE_SETTINGS = dict(
    num_epochs=1, method="reviewkd", student__classifier_bias=True, data__synthetic_train_size=32, optim__lr=0.01,
    **{name.replace(".", "__"): value
       for name, value in testing.reference_method_settings("reviewkd", "resnet8", "resnet8").items()})

_MULTI_DEVICE_SCRIPT = textwrap.dedent(
    """
    import sys
    import jax
    from conftest import tiny_config
    from catkd_jax import training
    jax.config.update("jax_disable_most_optimizations", True)
    assert jax.device_count() == 4, jax.devices()
    training.train_and_evaluate(tiny_config(**{settings!r}), {workdir!r})
    # The metrics log's tensorboardX neither loaded torch (1.5 s) nor left it unimportable.
    assert "torch" not in sys.modules, sys.modules.get("torch")
    """
)


def test_four_devices_give_the_same_losses_as_one(teacher_dir, tmp_path):
    settings = dict(_MULTI_DEVICE_SETTINGS, teacher__checkpoint=str(teacher_dir))
    assert jax.device_count() == 1
    training.train_and_evaluate(tiny_config(**settings), tmp_path / "devices1")  # here, on this process's device
    script = _MULTI_DEVICE_SCRIPT.format(settings=settings, workdir=str(tmp_path / "devices4"))
    env = dict(os.environ, XLA_FLAGS=xla_flags("--xla_force_host_platform_device_count=4"), JAX_PLATFORMS="cpu",
               PYTHONPATH=str(REPO_ROOT / "tests"))  # for conftest
    subprocess.run([sys.executable, "-c", script], check=True, env=env, cwd=REPO_ROOT)
    one, four = read_metrics(tmp_path / "devices1")[0], read_metrics(tmp_path / "devices4")[0]
    for key in ("train_loss", "train_loss_ce", "train_loss_kd", "test_loss", "test_acc"):
        assert four[key] == pytest.approx(one[key], rel=1e-5, abs=1e-6), key


def test_a_student_starts_from_the_weights_init_checkpoint_names(teacher_dir, tmp_path, monkeypatch):
    config = tiny_config(student__init_checkpoint=str(teacher_dir))  # a resnet8 with a biased classifier
    plan = runs.plan_runs(config)
    student = create_model("resnet8", 10, jnp.float32, True)
    state = training.initial_states(student, plan, [config], (32, 32, 3), steps_per_epoch=4,
                                 weights=training.initial_weights(config, student, (32, 32, 3)))
    saved, _ = checkpoints.load_variables(teacher_dir)
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_array_equal(a[0], b), state.params, saved["params"])
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_array_equal(a[0], b), state.batch_stats, saved["batch_stats"])
    assert int(state.step[0]) == 0
    fresh = training.initial_states(student, plan, [tiny_config()], (32, 32, 3), steps_per_epoch=4)
    assert not np.array_equal(fresh.params["classifier"]["kernel"], state.params["classifier"]["kernel"])

    # Trains on from there. A relative path is recorded absolute: the record means the same
    # file when read from another directory.
    monkeypatch.chdir(teacher_dir.parent)
    summary = training.train_and_evaluate(tiny_config(student__init_checkpoint=teacher_dir.name), tmp_path)
    assert summary["best_test_acc"] >= 0 and read_metrics(tmp_path)[0]["epoch"] == 1
    assert json.loads((tmp_path / "config.json").read_text())["student"]["init_checkpoint"] == str(teacher_dir)


def test_init_weights_of_another_shape_are_refused_naming_the_fix(teacher_dir, tmp_path):
    with pytest.raises(UserError, match=r"does not fit the student resnet8 \(classifier_bias=False\).*match "
                                        r"student.classifier_bias"):
        training.train_and_evaluate(tiny_config(student__init_checkpoint=str(teacher_dir),
                                             student__classifier_bias=False), tmp_path / "a")
    assert not (tmp_path / "a").exists()  # refused before anything is written
    with pytest.raises(ValueError, match="arch 'resnet8' but the config asks for 'resnet20'"):
        training.train_and_evaluate(tiny_config(student__init_checkpoint=str(teacher_dir), student__arch="resnet20"),
                                 tmp_path / "b")


def test_a_cam_head_pth_initialises_a_student_without_classifier_bias(tmp_path):
    torch = pytest.importorskip("torch")
    spec = json.loads(shared_path("reference/mdistiller_cifar_state_dicts.json").read_text())
    variant = spec["resnet20"]  # how the ResNets' CAM-head (`_test`) networks differ from the plain ones
    rng = np.random.default_rng(0)
    tensor = lambda shape, dtype: (torch.tensor(7) if dtype == "int64"
                                   else torch.from_numpy(rng.normal(size=shape).astype(np.float32)))
    state_dict = {name: tensor(shape, dtype) for name, shape, dtype in spec["resnet8"]["state_dict"]
                  if name not in variant["test_variant_missing_keys"]}
    (cam_head,) = variant["test_variant_extra_keys"]
    state_dict[cam_head] = torch.from_numpy(rng.normal(size=(10, 64, 1, 1)).astype(np.float32))  # [C, K, 1, 1]
    path = tmp_path / "resnet8_test.pth"
    torch.save({"model": state_dict}, path)
    config = tiny_config(student__init_checkpoint=str(path), student__classifier_bias=False)
    weights = training.initial_weights(config, create_model("resnet8", 10, jnp.float32, False), (32, 32, 3))
    assert set(weights["params"]["classifier"]) == {"kernel"}
    np.testing.assert_array_equal(weights["params"]["classifier"]["kernel"], state_dict[cam_head].numpy()[:, :, 0, 0].T)


def test_step_records_log_the_steps_since_the_previous_one_and_a_resume_keeps_only_those_before_it(tmp_path, capsys):
    config = tiny_config(num_epochs=2, log_every_steps=2)  # 4 steps per epoch: records at steps 2, 4, 6, 8
    training.train_and_evaluate(config, tmp_path)
    records = read_metrics(tmp_path)
    steps = [r for r in records if r.get("record") == "steps"]
    epochs = [r for r in records if "step" not in r]
    assert [(r["epoch"], r["step"]) for r in steps] == [(1, 2), (1, 4), (2, 6), (2, 8)]
    assert [r["epoch"] for r in epochs] == [1, 2]
    for epoch in (1, 2):  # the two intervals of an epoch make up its mean: equal weights, 2 steps each
        pair = [r for r in steps if r["epoch"] == epoch]
        (record,) = [r for r in epochs if r["epoch"] == epoch]
        assert np.mean([r["train_loss"] for r in pair]) == pytest.approx(record["train_loss"], rel=1e-5)
        assert np.mean([r["train_acc"] for r in pair]) == pytest.approx(record["train_acc"], rel=1e-5)
    assert all(r["lr"] == pytest.approx(0.05) and r["images_per_sec"] > 0 for r in steps)
    # stderr is not a terminal here: progress lines at the same steps, no carriage returns.
    out = capsys.readouterr()
    assert "epoch 2/2 step 2/4: train loss" in out.out and "\r" not in out.err

    # Resumed from the end of epoch 1, the records of later steps go, the earlier ones stay.
    checkpoints_dir = tmp_path / "checkpoints"
    newest = max(checkpoints_dir.iterdir(), key=lambda path: int(path.name))
    shutil.rmtree(newest)
    training.train_and_evaluate(config, tmp_path)
    resumed = read_metrics(tmp_path)
    assert [(r["epoch"], r.get("step")) for r in resumed] == [(1, 2), (1, 4), (1, None), (2, 6), (2, 8), (2, None)]
    assert resumed[:3] == records[:3]  # kept as written
    assert [r["train_loss"] for r in resumed[3:]] == [r["train_loss"] for r in records[3:]]  # replayed exactly
