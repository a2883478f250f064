"""CIFAR ResNets of the mdistiller toolbox: resnet8 ... resnet110, resnet8x4, resnet32x4.

A 3x3 stem, three stages of basic blocks (stride 1, 2, 2), 6n+2 layers; `features` is the
ReLU output of the last block, `[N, 8, 8, K]` for 32x32 inputs.

Stages (`catkd_jax.models.stages`), as the original's `ResNet` / `ResNet_test`: feats = the stem's
ReLU output and each stage's output; preact_feats = the stem's output and each stage's last block
before its final ReLU; the CAM-head model's CAMs replace the last stage's output.
"""

from __future__ import annotations

from typing import ClassVar, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from catkd_jax.models.layers import BatchNorm, Dtype, classify, conv, kaiming_normal_fan_out
from catkd_jax.models.stages import Path, record_stages


def shortcut(
    x: jax.Array, features: int, stride: int, train: bool, dtype: Dtype, name: str
) -> jax.Array:
    """The input, or its 1x1 conv-BN projection (`{name}.0`, `{name}.1`) when the shape changes.

    Called inside a block's compact `__call__`, so the submodules belong to that block.
    """
    if stride == 1 and x.shape[-1] == features:
        return x
    x = conv(features, 1, stride=stride, padding=0, dtype=dtype, name=f"{name}.0")(x)
    return BatchNorm(use_running_average=not train, dtype=dtype, name=f"{name}.1")(x)


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN, plus the (projected) input, then ReLU: `(output, preact)`,
    `preact` the sum before that ReLU.

    `shortcut_name` is what the reference calls the projection: 'downsample' in the CIFAR
    ResNets, 'shortcut' in ResNet18/50.
    """

    planes: int
    stride: int = 1
    dtype: Dtype = jnp.float32
    shortcut_name: str = "downsample"

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> tuple[jax.Array, jax.Array]:
        norm = lambda name: BatchNorm(use_running_average=not train, dtype=self.dtype, name=name)
        out = conv(self.planes, 3, stride=self.stride, dtype=self.dtype, name="conv1")(x)
        out = nn.relu(norm("bn1")(out))
        out = conv(self.planes, 3, dtype=self.dtype, name="conv2")(out)
        out = norm("bn2")(out)
        preact = out + shortcut(x, self.planes, self.stride, train, self.dtype, self.shortcut_name)
        return nn.relu(preact), preact


class CifarResNet(nn.Module):
    """`__call__(x [N, 32, 32, 3], train) -> (logits [N, C], features [N, 8, 8, K])`."""

    depth: int
    widths: Sequence[int]  # stem, stage 1, stage 2, stage 3
    num_classes: int = 100
    dtype: Dtype = jnp.float32
    classifier_bias: bool = True

    torch_classifier_name: ClassVar[str] = "fc"

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> tuple[jax.Array, jax.Array]:
        if (self.depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {self.depth}")
        blocks_per_stage = (self.depth - 2) // 6
        x = x.astype(self.dtype)
        x = conv(self.widths[0], 3, dtype=self.dtype, name="conv1")(x)
        x = nn.relu(BatchNorm(use_running_average=not train, dtype=self.dtype, name="bn1")(x))
        feats, preact_feats = [x], [x]
        for stage, (planes, stride) in enumerate(zip(self.widths[1:], (1, 2, 2)), start=1):
            for index in range(blocks_per_stage):
                x, preact = BasicBlock(
                    planes, stride if index == 0 else 1, dtype=self.dtype, name=f"layer{stage}.{index}"
                )(x, train)
            feats.append(x)
            preact_feats.append(preact)
        # The reference's `fc` keeps PyTorch's Linear default; its CAM-head `conv_test` is made
        # before the init loop, which draws it like every conv.
        logits = classify(
            x,
            self.num_classes,
            use_bias=self.classifier_bias,
            dtype=self.dtype,
            cam_head_kernel_init=kaiming_normal_fan_out,
        )
        record_stages(self, feats, preact_feats, x, logits, cam_placement="replace")
        return logits, x

    def original_stage_channels(self) -> tuple[int, ...]:
        return tuple(self.widths)

    def original_bn_before_relu(self) -> tuple[Path, ...]:
        last = (self.depth - 2) // 6 - 1
        return tuple((f"layer{stage}.{last}", "bn2") for stage in (1, 2, 3))
