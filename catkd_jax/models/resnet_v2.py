"""CIFAR ResNet18 and ResNet50 of the mdistiller toolbox (its `resnetv2`).

ImageNet-width ResNets with a 3x3 stride-1 stem and no max pool: four stages (64, 128, 256,
512 planes; stride 1, 2, 2, 2); `features` is the ReLU output of the last block,
`[N, 4, 4, 512 * expansion]` for 32x32 inputs.
"""

from __future__ import annotations

import functools
from typing import Callable, ClassVar, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from catkd_jax.models.layers import BatchNorm, Dtype, classify, conv, kaiming_normal_fan_out
from catkd_jax.models.resnet import BasicBlock, shortcut


class Bottleneck(nn.Module):
    """conv1x1-BN-ReLU-conv3x3(stride)-BN-ReLU-conv1x1(4x)-BN, plus the (projected) input, ReLU.

    The stride sits on the 3x3 conv (torchvision's "v1.5"). `shortcut_name` is what the
    reference calls the projection: 'shortcut' here, 'downsample' in torchvision's ResNet50.
    """

    planes: int
    stride: int = 1
    dtype: Dtype = jnp.float32
    shortcut_name: str = "shortcut"

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        norm = lambda name: BatchNorm(use_running_average=not train, dtype=self.dtype, name=name)
        width = 4 * self.planes  # the bottleneck expansion
        out = conv(self.planes, 1, padding=0, dtype=self.dtype, name="conv1")(x)
        out = nn.relu(norm("bn1")(out))
        out = conv(self.planes, 3, stride=self.stride, dtype=self.dtype, name="conv2")(out)
        out = nn.relu(norm("bn2")(out))
        out = conv(width, 1, padding=0, dtype=self.dtype, name="conv3")(out)
        out = norm("bn3")(out)
        residual = shortcut(x, width, self.stride, train, self.dtype, self.shortcut_name)
        return nn.relu(out + residual)


def four_stages(
    x: jax.Array, block: Callable[..., nn.Module], num_blocks: Sequence[int], train: bool, dtype: Dtype
) -> jax.Array:
    """The body after the stem: four stages of `block`s (64, 128, 256, 512 planes; stride 1, 2,
    2, 2 on each stage's first block), named `layer{stage}.{index}` as in PyTorch.

    Shared by these CIFAR ResNets and torchvision's ImageNet ResNets, which differ in their
    stem only. Called inside a model's compact `__call__`, so the blocks belong to that model.
    """
    stages = zip((64, 128, 256, 512), (1, 2, 2, 2), num_blocks)
    for stage, (planes, stride, count) in enumerate(stages, start=1):
        for index in range(count):
            x = block(planes, stride if index == 0 else 1, dtype=dtype, name=f"layer{stage}.{index}")(x, train)
    return x


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
        x = nn.relu(BatchNorm(use_running_average=not train, dtype=self.dtype, name="bn1")(x))
        x = four_stages(x, self.block, self.num_blocks, train, self.dtype)
        # As in the CIFAR ResNets: `linear` keeps PyTorch's Linear default, the init loop draws
        # the CAM-head `conv_test` (made before it) like every conv.
        logits = classify(
            x,
            self.num_classes,
            use_bias=self.classifier_bias,
            dtype=self.dtype,
            cam_head_kernel_init=kaiming_normal_fan_out,
        )
        return logits, x


MODELS: dict[str, Callable[..., nn.Module]] = {
    "ResNet18": functools.partial(
        ResNetV2, block=functools.partial(BasicBlock, shortcut_name="shortcut"), num_blocks=(2, 2, 2, 2)
    ),
    "ResNet50": functools.partial(ResNetV2, block=Bottleneck, num_blocks=(3, 4, 6, 3)),
}
