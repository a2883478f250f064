"""CIFAR ResNet18 and ResNet50 of the mdistiller toolbox (its `resnetv2`).

ImageNet-width ResNets with a 3x3 stride-1 stem and no max pool: four stages (64, 128, 256,
512 planes; stride 1, 2, 2, 2); `features` is the ReLU output of the last block,
`[N, 4, 4, 512 * expansion]` for 32x32 inputs.

Stages (`catkd_jax.models.stages`), as the original's `ResNet` / `ResNet_test`: feats = the stem's
ReLU output and each stage's output; preact_feats = the stem's output and each stage's last block
before its final ReLU; the CAM-head model's CAMs replace the last stage's output.
"""

from __future__ import annotations

import functools
from typing import Callable, ClassVar, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from catkd_jax.models.layers import BatchNorm, Dtype, classify, conv, kaiming_normal_fan_out
from catkd_jax.models.resnet import BasicBlock, shortcut
from catkd_jax.models.stages import Path, record_stages


class Bottleneck(nn.Module):
    """conv1x1-BN-ReLU-conv3x3(stride)-BN-ReLU-conv1x1(4x)-BN, plus the (projected) input, ReLU:
    `(output, preact)`, `preact` the sum before that ReLU.

    The stride sits on the 3x3 conv (torchvision's "v1.5"). `shortcut_name` is what the
    reference calls the projection: 'shortcut' here, 'downsample' in torchvision's ResNet50.
    """

    planes: int
    stride: int = 1
    dtype: Dtype = jnp.float32
    shortcut_name: str = "shortcut"

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> tuple[jax.Array, jax.Array]:
        norm = lambda name: BatchNorm(use_running_average=not train, dtype=self.dtype, name=name)
        width = 4 * self.planes  # the bottleneck expansion
        out = conv(self.planes, 1, padding=0, dtype=self.dtype, name="conv1")(x)
        out = nn.relu(norm("bn1")(out))
        out = conv(self.planes, 3, stride=self.stride, dtype=self.dtype, name="conv2")(out)
        out = nn.relu(norm("bn2")(out))
        out = conv(width, 1, padding=0, dtype=self.dtype, name="conv3")(out)
        out = norm("bn3")(out)
        preact = out + shortcut(x, width, self.stride, train, self.dtype, self.shortcut_name)
        return nn.relu(preact), preact


def four_stages(
    x: jax.Array, block: Callable[..., nn.Module], num_blocks: Sequence[int], train: bool, dtype: Dtype
) -> tuple[tuple[jax.Array, ...], tuple[jax.Array, ...]]:
    """The body after the stem: four stages of `block`s (64, 128, 256, 512 planes; stride 1, 2,
    2, 2 on each stage's first block), named `layer{stage}.{index}` as in PyTorch.

    Returns each stage's output and its last block's pre-ReLU sum (`[N, h, w, K]` each, four of
    each); the last output is the body's.

    Shared by these CIFAR ResNets and torchvision's ImageNet ResNets, which differ in their
    stem only. Called inside a model's compact `__call__`, so the blocks belong to that model.
    """
    stages = zip((64, 128, 256, 512), (1, 2, 2, 2), num_blocks)
    outputs, preacts = [], []
    for stage, (planes, stride, count) in enumerate(stages, start=1):
        for index in range(count):
            x, preact = block(planes, stride if index == 0 else 1, dtype=dtype, name=f"layer{stage}.{index}")(x, train)
        outputs.append(x)
        preacts.append(preact)
    return tuple(outputs), tuple(preacts)


def last_block_norms(block: Callable[..., nn.Module], num_blocks: Sequence[int]) -> tuple[Path, ...]:
    """Each stage's last block's last BatchNorm (the one before the sum and ReLU), as paths."""
    last_norm = "bn3" if getattr(block, "func", block) is Bottleneck else "bn2"
    return tuple((f"layer{stage}.{count - 1}", last_norm) for stage, count in enumerate(num_blocks, start=1))


class ResNetV2(nn.Module):
    """`__call__(x [N, 32, 32, 3], train) -> (logits [N, C], features [N, 4, 4, 512 * e])`.

    `e` is the block's expansion: 1 for ResNet18, 4 for ResNet50.
    """

    block: Callable[..., nn.Module]  # BasicBlock or Bottleneck
    num_blocks: Sequence[int]  # per stage
    num_classes: int = 100
    dtype: Dtype = jnp.float32
    classifier_bias: bool = True

    torch_classifier_name: ClassVar[str] = "linear"

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> tuple[jax.Array, jax.Array]:
        x = x.astype(self.dtype)
        x = conv(64, 3, dtype=self.dtype, name="conv1")(x)
        stem = nn.relu(BatchNorm(use_running_average=not train, dtype=self.dtype, name="bn1")(x))
        outputs, preacts = four_stages(stem, self.block, self.num_blocks, train, self.dtype)
        x = outputs[-1]
        # As in the CIFAR ResNets: `linear` keeps PyTorch's Linear default, the init loop draws
        # the CAM-head `conv_test` (made before it) like every conv.
        logits = classify(
            x,
            self.num_classes,
            use_bias=self.classifier_bias,
            dtype=self.dtype,
            cam_head_kernel_init=kaiming_normal_fan_out,
        )
        record_stages(self, (stem, *outputs), (stem, *preacts), x, logits, cam_placement="replace")
        return logits, x

    def original_stage_channels(self) -> tuple[int, ...]:
        return (256, 512, 1024, 2048)  # the original's, also for ResNet18

    def original_bn_before_relu(self) -> tuple[Path, ...]:
        return last_block_norms(self.block, self.num_blocks)


MODELS: dict[str, Callable[..., nn.Module]] = {
    "ResNet18": functools.partial(
        ResNetV2, block=functools.partial(BasicBlock, shortcut_name="shortcut"), num_blocks=(2, 2, 2, 2)
    ),
    "ResNet50": functools.partial(ResNetV2, block=Bottleneck, num_blocks=(3, 4, 6, 3)),
}
