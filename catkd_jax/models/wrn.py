"""CIFAR Wide ResNets of the mdistiller toolbox: wrn_16_1, wrn_16_2, wrn_40_1, wrn_40_2.

Pre-activation basic blocks (BN-ReLU-conv) in three stages (stride 1, 2, 2), depth 6n+4,
then a final BN-ReLU; `features` is that ReLU output, `[N, 8, 8, 64 * widen]` for 32x32 inputs.

Stages (`catkd_jax.models.stages`), as the original's `WideResNet`: feats = the stem conv's output
and each stage's output (no ReLU: blocks are pre-activation); preact_feats = the stem's output,
then each stage's output through the BatchNorm that reads it next (the next stage's first block's
`bn1`, the final `bn1`), which the original calls a second time for them. In training that second
call updates those BatchNorms' running statistics once more in the original; here they are updated
once. The CAM-head model (`WideResNet_test`) returns no preact_feats, and its CAMs replace the
last stage's output.
"""

from __future__ import annotations

import functools
from typing import Callable, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from catkd_jax.models.layers import BatchNorm, Dtype, classify, conv, kaiming_normal_fan_out
from catkd_jax.models.stages import Path, record_stages


class BasicBlock(nn.Module):
    """BN-ReLU-conv3x3-BN-ReLU-conv3x3, plus the input or its 1x1 projection: `(output,
    normalized)`, `normalized` the input after `bn1` (before its ReLU).

    When the width changes, the projection reads the pre-activated input (BN-ReLU of `x`), not
    `x` itself, as in the reference; with equal widths the raw input is added.
    """

    planes: int
    stride: int = 1
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> tuple[jax.Array, jax.Array]:
        norm = lambda name: BatchNorm(use_running_average=not train, dtype=self.dtype, name=name)
        equal_in_out = x.shape[-1] == self.planes
        normalized = norm("bn1")(x)
        preact = nn.relu(normalized)
        out = conv(self.planes, 3, stride=self.stride, dtype=self.dtype, name="conv1")(preact)
        out = nn.relu(norm("bn2")(out))
        out = conv(self.planes, 3, dtype=self.dtype, name="conv2")(out)
        if equal_in_out:
            return x + out, normalized
        shortcut = conv(
            self.planes, 1, stride=self.stride, padding=0, dtype=self.dtype, name="convShortcut"
        )(preact)
        return shortcut + out, normalized


class WideResNet(nn.Module):
    """`__call__(x [N, 32, 32, 3], train) -> (logits [N, C], features [N, 8, 8, 64 * widen])`."""

    depth: int
    widen_factor: int
    num_classes: int = 100
    dtype: Dtype = jnp.float32
    classifier_bias: bool = True

    torch_classifier_name: ClassVar[str] = "fc"

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> tuple[jax.Array, jax.Array]:
        if (self.depth - 4) % 6:
            raise ValueError(f"WideResNet depth must be 6n+4, got {self.depth}")
        blocks_per_stage = (self.depth - 4) // 6
        widths = (16 * self.widen_factor, 32 * self.widen_factor, 64 * self.widen_factor)
        x = x.astype(self.dtype)
        x = conv(16, 3, dtype=self.dtype, name="conv1")(x)
        feats, preact_feats = [x], [x]
        for stage, (planes, stride) in enumerate(zip(widths, (1, 2, 2)), start=1):
            for index in range(blocks_per_stage):
                x, normalized = BasicBlock(
                    planes,
                    stride if index == 0 else 1,
                    dtype=self.dtype,
                    name=f"block{stage}.layer.{index}",
                )(x, train)
                if stage > 1 and index == 0:
                    preact_feats.append(normalized)
            feats.append(x)
        normalized = BatchNorm(use_running_average=not train, dtype=self.dtype, name="bn1")(x)
        preact_feats.append(normalized)
        x = nn.relu(normalized)
        # The reference zeroes the Linear bias but keeps PyTorch's default weight init; its
        # init loop draws the CAM-head `conv_test` like every conv, N(0, 2 / fan_out).
        logits = classify(
            x,
            self.num_classes,
            use_bias=self.classifier_bias,
            dtype=self.dtype,
            bias_init=nn.initializers.zeros,
            cam_head_kernel_init=kaiming_normal_fan_out,
        )
        cam_head = not self.classifier_bias  # WideResNet_test leaves its preact_feats out
        record_stages(self, feats, () if cam_head else preact_feats, x, logits, cam_placement="replace")
        return logits, x

    def original_stage_channels(self) -> tuple[int, ...]:
        return (16, 16 * self.widen_factor, 32 * self.widen_factor, 64 * self.widen_factor)

    def original_bn_before_relu(self) -> tuple[Path, ...]:
        return (("block2.layer.0", "bn1"), ("block3.layer.0", "bn1"), ("bn1",))


MODELS: dict[str, Callable[..., nn.Module]] = {
    "wrn_16_1": functools.partial(WideResNet, depth=16, widen_factor=1),
    "wrn_16_2": functools.partial(WideResNet, depth=16, widen_factor=2),
    "wrn_40_1": functools.partial(WideResNet, depth=40, widen_factor=1),
    "wrn_40_2": functools.partial(WideResNet, depth=40, widen_factor=2),
}
