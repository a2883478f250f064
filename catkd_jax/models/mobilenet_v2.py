"""CIFAR MobileNetV2 of the mdistiller toolbox: `mobile_half` (expansion 6, width 0.5).

A stride-2 3x3 stem, seven stages of inverted residual blocks, a 1x1 conv to 1280 channels;
`features` is that conv's ReLU output, `[N, 2, 2, 1280]` for 32x32 inputs.

Stages (`catkd_jax.models.stages`), as the original's `MobileNetV2` / `MobileNetV2_test`: feats =
the stem's output and the outputs of stages 1, 2, 4 and 6 (0-based); no preact_feats; the
CAM-head model's CAMs follow them (six feats).
"""

from __future__ import annotations

import functools
from typing import Callable, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from catkd_jax.models.layers import BatchNorm, Dtype, classify, conv, kaiming_normal_fan_out
from catkd_jax.models.stages import Path, record_stages

# The stages whose outputs the original returns as feats (after the stem's).
_FEATURE_STAGES = (1, 2, 4, 6)

# (expansion or None for the model's, output channels before width scaling, blocks, stride).
_STAGES: tuple[tuple[int | None, int, int, int], ...] = (
    (1, 16, 1, 1),
    (None, 24, 2, 1),
    (None, 32, 3, 2),
    (None, 64, 4, 2),
    (None, 96, 3, 1),
    (None, 160, 3, 2),
    (None, 320, 1, 1),
)


class InvertedResidual(nn.Module):
    """1x1 expand-BN-ReLU, 3x3 depthwise-BN-ReLU, 1x1 project-BN; identity added if shapes allow.

    The expansion conv exists even for expansion 1 (the toolbox, unlike torchvision, keeps it).
    """

    out_planes: int
    stride: int
    expansion: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        """`[N, H, W, in] -> [N, H / stride, W / stride, out_planes]`."""
        norm = lambda name: BatchNorm(use_running_average=not train, dtype=self.dtype, name=name)
        hidden = x.shape[-1] * self.expansion
        out = conv(hidden, 1, dtype=self.dtype, name="conv.0")(x)
        out = nn.relu(norm("conv.1")(out))
        out = conv(
            hidden, 3, stride=self.stride, groups=hidden, dtype=self.dtype, name="conv.3"
        )(out)
        out = nn.relu(norm("conv.4")(out))
        out = conv(self.out_planes, 1, dtype=self.dtype, name="conv.6")(out)
        out = norm("conv.7")(out)
        if self.stride == 1 and x.shape[-1] == self.out_planes:
            return x + out
        return out


class MobileNetV2(nn.Module):
    """`__call__(x [N, 32, 32, 3], train) -> (logits [N, C], features [N, 2, 2, 1280])`."""

    expansion: int
    width_mult: float
    num_classes: int = 100
    dtype: Dtype = jnp.float32
    classifier_bias: bool = True

    torch_classifier_name: ClassVar[str] = "classifier.0"

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> tuple[jax.Array, jax.Array]:
        norm = lambda name: BatchNorm(use_running_average=not train, dtype=self.dtype, name=name)
        x = x.astype(self.dtype)
        x = conv(int(32 * self.width_mult), 3, stride=2, dtype=self.dtype, name="conv1.0")(x)
        x = nn.relu(norm("conv1.1")(x))
        feats = [x]
        for stage, (expansion, channels, num_blocks, stride) in enumerate(_STAGES):
            for index in range(num_blocks):
                x = InvertedResidual(
                    int(channels * self.width_mult),
                    stride if index == 0 else 1,
                    self.expansion if expansion is None else expansion,
                    dtype=self.dtype,
                    name=f"blocks.{stage}.{index}",
                )(x, train)
            if stage in _FEATURE_STAGES:
                feats.append(x)
        # The last width is only scaled up, never down (1280 for mobile_half).
        last_channel = int(1280 * self.width_mult) if self.width_mult > 1.0 else 1280
        x = conv(last_channel, 1, dtype=self.dtype, name="conv2.0")(x)
        x = nn.relu(norm("conv2.1")(x))
        # The reference's AvgPool2d(2, ceil_mode=True) covers the whole 2x2 map of a 32x32 input.
        # Its init loop draws the Linear N(0, 0.01) with a zero bias, and the CAM-head `conv_test`
        # (made before the loop) like every conv.
        logits = classify(
            x,
            self.num_classes,
            use_bias=self.classifier_bias,
            dtype=self.dtype,
            kernel_init=nn.initializers.normal(stddev=0.01),
            bias_init=nn.initializers.zeros,
            cam_head_kernel_init=kaiming_normal_fan_out,
        )
        record_stages(self, feats, (), x, logits, cam_placement="append")
        return logits, x

    def original_stage_channels(self) -> tuple[int, ...]:
        return tuple(int(c * self.width_mult) for c in (32, 24, 32, 96, 320))

    def original_bn_before_relu(self) -> tuple[Path, ...]:
        return tuple((f"blocks.{stage}.{_STAGES[stage][2] - 1}", "conv.7") for stage in _FEATURE_STAGES)


MODELS: dict[str, Callable[..., nn.Module]] = {
    "MobileNetV2": functools.partial(MobileNetV2, expansion=6, width_mult=0.5),
}
