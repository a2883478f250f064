"""Tests of the ImageNet architectures: shapes, parameter counts, torchvision/mdistiller key
layouts, import round trips and numerical parity with PyTorch references written here.

The references are plain `torch.nn` re-statements of torchvision's ResNets and mdistiller's
`models/imagenet/mobilenetv1.py` (torchvision itself is not a dependency); their state dicts
have exactly the published key names.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from catkd_jax import checkpoints, convert
from catkd_jax.convert import cli as convert_cli
from catkd_jax.models import create_model
from test_models import IMAGENET_ARCHS

# torchvision's (and for MobileNetV1, mdistiller's layout's) parameter counts at 1000 classes.
PARAMETER_COUNTS = {
    "imagenet_resnet18": 11_689_512,
    "imagenet_resnet34": 21_797_672,
    "imagenet_resnet50": 25_557_032,
    "imagenet_mobilenet_v1": 4_231_976,
}
# state_dict() lengths: weights, biases, and three buffers per BatchNorm.
STATE_DICT_SIZES = {
    "imagenet_resnet18": 122,
    "imagenet_resnet34": 218,
    "imagenet_resnet50": 320,
    "imagenet_mobilenet_v1": 164,
}
_RESNET_BLOCKS = {
    "imagenet_resnet18": ("basic", (2, 2, 2, 2)),
    "imagenet_resnet34": ("basic", (3, 4, 6, 3)),
    "imagenet_resnet50": ("bottleneck", (3, 4, 6, 3)),
}
_MOBILENET_V1_BLOCKS = ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), (512, 1),
                        (512, 1), (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1))  # fmt: skip


@pytest.mark.parametrize("arch", IMAGENET_ARCHS)
def test_shapes_at_224_and_parameter_counts(arch):
    model = create_model(arch)
    assert model.num_classes == 1000  # the ImageNet models default to ImageNet's classes
    (logits, features), variables = jax.eval_shape(
        lambda: model.init_with_output(jax.random.key(0), jnp.zeros((2, 224, 224, 3)), train=False)
    )
    assert logits.shape == (2, 1000)
    channels = {"imagenet_resnet50": 2048, "imagenet_mobilenet_v1": 1024}.get(arch, 512)
    assert features.shape == (2, 7, 7, channels)
    count = sum(math.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(variables["params"]))
    assert count == PARAMETER_COUNTS[arch]


def test_resnet18_layout_has_torchvision_key_names():
    layout = convert.torch_layout("imagenet_resnet18", 1000)
    sample = {
        "conv1.weight": (64, 3, 7, 7),
        "bn1.running_mean": (64,),
        "layer1.0.conv1.weight": (64, 64, 3, 3),
        "layer2.0.downsample.0.weight": (128, 64, 1, 1),
        "layer2.0.downsample.1.running_var": (128,),
        "layer3.1.bn1.bias": (256,),
        "layer4.1.bn2.running_var": (512,),
        "fc.weight": (1000, 512),
        "fc.bias": (1000,),
    }
    for key, shape in sample.items():
        assert convert.torch_shape(layout[key].shape) == shape, key
    assert "layer1.0.downsample.0.weight" not in layout  # 64 -> 64 planes, stride 1: identity
    exported = convert.to_torch_state_dict(_random_variables("imagenet_resnet18"), "imagenet_resnet18")
    assert len(exported) == STATE_DICT_SIZES["imagenet_resnet18"]
    assert exported["layer4.1.bn2.num_batches_tracked"].dtype == np.int64


def test_mobilenet_v1_layout_has_mdistiller_key_names():
    layout = convert.torch_layout("MobileNetV1", 1000)
    sample = {
        "model.0.0.weight": (32, 3, 3, 3),
        "model.0.1.running_mean": (32,),
        "model.1.0.weight": (32, 1, 3, 3),  # depthwise: one input channel per group
        "model.1.3.weight": (64, 32, 1, 1),
        "model.13.0.weight": (1024, 1, 3, 3),
        "model.13.4.running_var": (1024,),
        "fc.weight": (1000, 1024),
        "fc.bias": (1000,),
    }
    for key, shape in sample.items():
        assert convert.torch_shape(layout[key].shape) == shape, key


@pytest.mark.parametrize("arch", IMAGENET_ARCHS)
def test_import_round_trip(arch):
    variables = _random_variables(arch, num_classes=10)
    exported = convert.to_torch_state_dict(variables, arch)
    assert len(exported) == STATE_DICT_SIZES[arch]
    reimported = convert.from_torch_state_dict(exported, arch, num_classes=10)
    assert jax.tree_util.tree_structure(reimported) == jax.tree_util.tree_structure(variables)
    jax.tree_util.tree_map(np.testing.assert_array_equal, reimported, variables)


@pytest.mark.parametrize("arch", IMAGENET_ARCHS)
def test_key_set_and_shapes_equal_the_pytorch_reference(arch):
    torch = pytest.importorskip("torch")
    reference = _torch_reference(torch, arch, num_classes=1000)
    assert sum(p.numel() for p in reference.parameters()) == PARAMETER_COUNTS[arch]
    expected = {key: tuple(value.shape) for key, value in reference.state_dict().items()}
    exported = convert.to_torch_state_dict(_random_variables(arch), arch)
    assert {key: value.shape for key, value in exported.items()} == expected


@pytest.mark.parametrize("arch", ["imagenet_resnet18", "imagenet_mobilenet_v1"])
def test_parity_with_pytorch(arch):
    torch = pytest.importorskip("torch")
    reference, images = _calibrated_reference(torch, arch, num_classes=10)
    with torch.no_grad():
        torch_logits, torch_features = reference(images)
    variables = convert.from_torch_state_dict(reference.state_dict(), arch, num_classes=10)
    images_nhwc = jnp.asarray(images.permute(0, 2, 3, 1).numpy())
    model = create_model(arch, num_classes=10)
    logits, features = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, images_nhwc)
    assert features.shape == (2, 2, 2, torch_features.shape[1])  # 64x64 / 32
    theirs_features = torch_features.permute(0, 2, 3, 1).numpy()
    for ours, theirs in ((logits, torch_logits.numpy()), (features, theirs_features)):
        scale = np.abs(theirs).max()
        assert scale > 1e-3  # the comparison is not between two vanishing maps
        np.testing.assert_allclose(np.asarray(ours) / scale, theirs / scale, rtol=0, atol=1e-4)


def test_cli_reads_a_bare_state_dict_and_infers_the_class_count(tmp_path):
    torch = pytest.importorskip("torch")
    reference = _torch_reference(torch, "imagenet_mobilenet_v1", num_classes=10)
    path = tmp_path / "mobilenet_v1.pth"
    torch.save(reference.state_dict(), path)  # as torchvision publishes: no {"model": ...}
    convert_cli.main(["--arch", "MobileNetV1", "--checkpoint", str(path), "--output", str(tmp_path / "out")])
    variables, info = checkpoints.load_model(tmp_path / "out")
    assert info == {**info, "arch": "imagenet_mobilenet_v1", "num_classes": 10}
    expected = convert.from_torch_state_dict(reference.state_dict(), "imagenet_mobilenet_v1", 10)
    jax.tree_util.tree_map(np.testing.assert_array_equal, variables, expected)


def _random_variables(arch: str, num_classes: int = 1000, seed: int = 0) -> dict:
    """Distinct random values in every leaf (so a transposition or mix-up cannot pass)."""
    model = create_model(arch, num_classes=num_classes)
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False))
    rng = np.random.default_rng(seed)
    return jax.tree_util.tree_map(lambda s: rng.normal(size=s.shape).astype(np.float32), shapes)


def _calibrated_reference(torch, arch: str, num_classes: int):
    """A reference with random weights and BatchNorm statistics, and a `[2, 3, 64, 64]` batch.

    The statistics are first set from one batch (so activations keep a sensible scale through
    the depth), then perturbed, so that the running statistics matter and differ per channel.
    """
    torch.manual_seed(0)
    reference = _torch_reference(torch, arch, num_classes)
    batch_norms = [m for m in reference.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    with torch.no_grad():
        for bn in batch_norms:
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.normal_(0.0, 0.1)
            bn.momentum = 1.0  # the running statistics become this batch's
        reference.train()
        reference(torch.randn(8, 3, 64, 64))
        for bn in batch_norms:
            bn.running_mean.add_(torch.randn_like(bn.running_mean) * 0.1)
            bn.running_var.mul_(torch.empty_like(bn.running_var).uniform_(0.7, 1.3))
    reference.eval()
    return reference, torch.randn(2, 3, 64, 64)


def _torch_reference(torch, arch: str, num_classes: int):
    """The PyTorch model of `arch`; `forward(x NCHW) -> (logits, features NCHW)`."""
    nn, functional = torch.nn, torch.nn.functional

    def conv_bn(inp: int, out: int, kernel: int, stride: int, groups: int = 1) -> list:
        return [nn.Conv2d(inp, out, kernel, stride, kernel // 2, groups=groups, bias=False), nn.BatchNorm2d(out)]

    class Block(nn.Module):
        """torchvision's BasicBlock (`bottleneck=False`) or Bottleneck (stride on the 3x3)."""

        def __init__(self, inp: int, planes: int, stride: int, bottleneck: bool):
            super().__init__()
            out = planes * (4 if bottleneck else 1)
            if bottleneck:
                convs = [(inp, planes, 1, 1), (planes, planes, 3, stride), (planes, out, 1, 1)]
            else:
                convs = [(inp, planes, 3, stride), (planes, planes, 3, 1)]
            for index, spec in enumerate(convs, start=1):
                conv, bn = conv_bn(*spec)
                self.add_module(f"conv{index}", conv)
                self.add_module(f"bn{index}", bn)
            self.depth = len(convs)
            self.downsample = nn.Sequential(*conv_bn(inp, out, 1, stride)) if stride != 1 or inp != out else None

        def forward(self, x):
            out = x
            for index in range(1, self.depth + 1):
                out = getattr(self, f"bn{index}")(getattr(self, f"conv{index}")(out))
                out = functional.relu(out) if index < self.depth else out
            return functional.relu(out + (x if self.downsample is None else self.downsample(x)))

    class ResNet(nn.Module):
        def __init__(self, bottleneck: bool, counts):
            super().__init__()
            self.conv1, self.bn1 = conv_bn(3, 64, 7, 2)
            inp = 64
            for stage, (planes, count) in enumerate(zip((64, 128, 256, 512), counts), start=1):
                blocks = []
                for index in range(count):
                    blocks.append(Block(inp, planes, 2 if index == 0 and stage > 1 else 1, bottleneck))
                    inp = planes * (4 if bottleneck else 1)
                self.add_module(f"layer{stage}", nn.Sequential(*blocks))
            self.fc = nn.Linear(inp, num_classes)

        def forward(self, x):
            x = functional.max_pool2d(functional.relu(self.bn1(self.conv1(x))), 3, 2, 1)
            x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
            return self.fc(x.mean(dim=(2, 3))), x

    class MobileNetV1(nn.Module):
        def __init__(self):
            super().__init__()
            layers = [nn.Sequential(*conv_bn(3, 32, 3, 2), nn.ReLU())]
            inp = 32
            for out, stride in _MOBILENET_V1_BLOCKS:
                layers.append(nn.Sequential(
                    *conv_bn(inp, inp, 3, stride, groups=inp), nn.ReLU(), *conv_bn(inp, out, 1, 1), nn.ReLU()
                ))  # fmt: skip
                inp = out
            self.model = nn.Sequential(*layers)
            self.fc = nn.Linear(1024, num_classes)

        def forward(self, x):
            x = self.model(x)
            return self.fc(x.mean(dim=(2, 3))), x

    if arch == "imagenet_mobilenet_v1":
        return MobileNetV1()
    block, counts = _RESNET_BLOCKS[arch]
    return ResNet(block == "bottleneck", counts)
