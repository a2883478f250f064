"""CIFAR ShuffleNetV2 of the mdistiller toolbox: `ShuffleV2` (net size 1: 116/232/464, 1024).

A 1x1 stem (no downsampling), three stages each of one stride-2 down block and split blocks,
a 1x1 conv to 1024 channels; `features` is that conv's ReLU output, `[N, 4, 4, 1024]` for
32x32 inputs.

Stages (`catkd_jax.models.stages`), as the original's `ShuffleNetV2` / `ShuffleNetV2_test`: feats =
the stem's ReLU output and each stage's output; preact_feats = the stem's output and each stage's
last split block before its ReLU and shuffle (kept half, then the branch's last BatchNorm output);
the CAM-head model's CAMs (of the last 1x1 conv's ReLU output) follow them (five feats). The
original's `get_bn_before_relu()` raises.
"""

from __future__ import annotations

import functools
from typing import Callable, ClassVar, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from catkd_jax.models.layers import (
    BatchNorm,
    Dtype,
    channel_shuffle,
    classify,
    conv,
    torch_default_kernel_init,
)
from catkd_jax.models.stages import is_recording, record_stages

_STEM_WIDTH = 24


class SplitBlock(nn.Module):
    """Keeps the first half of the channels, transforms the second, concatenates, shuffles.

    1x1-BN-ReLU, 3x3 depthwise-BN (no ReLU), 1x1-BN-ReLU on the second half. Returns
    `(output, preact)`: `preact` is the concatenation before that ReLU and the shuffle, made only
    when the stages are recorded (None otherwise).
    """

    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> tuple[jax.Array, jax.Array | None]:
        """`[N, H, W, C] -> [N, H, W, C]`, twice."""
        norm = lambda name: BatchNorm(use_running_average=not train, dtype=self.dtype, name=name)
        make_conv = functools.partial(conv, dtype=self.dtype, kernel_init=torch_default_kernel_init)
        half = x.shape[-1] // 2
        kept, out = x[..., :half], x[..., half:]
        out = nn.relu(norm("bn1")(make_conv(half, 1, name="conv1")(out)))
        out = norm("bn2")(make_conv(half, 3, groups=half, name="conv2")(out))
        branch = norm("bn3")(make_conv(half, 1, name="conv3")(out))
        output = channel_shuffle(jnp.concatenate([kept, nn.relu(branch)], axis=-1), 2)
        return output, jnp.concatenate([kept, branch], axis=-1) if is_recording(self) else None


class DownBlock(nn.Module):
    """Two stride-2 branches on the whole input, concatenated (left first) and shuffled.

    Left: 3x3 depthwise-BN, 1x1-BN-ReLU. Right: 1x1-BN-ReLU, 3x3 depthwise-BN, 1x1-BN-ReLU.
    """

    out_channels: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        """`[N, H, W, in] -> [N, H / 2, W / 2, out_channels]`."""
        norm = lambda name: BatchNorm(use_running_average=not train, dtype=self.dtype, name=name)
        make_conv = functools.partial(conv, dtype=self.dtype, kernel_init=torch_default_kernel_init)
        in_channels, mid = x.shape[-1], self.out_channels // 2
        left = norm("bn1")(make_conv(in_channels, 3, stride=2, groups=in_channels, name="conv1")(x))
        left = nn.relu(norm("bn2")(make_conv(mid, 1, name="conv2")(left)))
        right = nn.relu(norm("bn3")(make_conv(mid, 1, name="conv3")(x)))
        right = norm("bn4")(make_conv(mid, 3, stride=2, groups=mid, name="conv4")(right))
        right = nn.relu(norm("bn5")(make_conv(mid, 1, name="conv5")(right)))
        return channel_shuffle(jnp.concatenate([left, right], axis=-1), 2)


class ShuffleNetV2(nn.Module):
    """`__call__(x [N, 32, 32, 3], train) -> (logits [N, C], features [N, 4, 4, K])`."""

    out_channels: Sequence[int]  # stage 1, stage 2, stage 3, last 1x1 conv
    num_blocks: Sequence[int]  # split blocks after each stage's down block
    num_classes: int = 100
    dtype: Dtype = jnp.float32
    classifier_bias: bool = True

    torch_classifier_name: ClassVar[str] = "linear"

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> tuple[jax.Array, jax.Array]:
        norm = lambda name: BatchNorm(use_running_average=not train, dtype=self.dtype, name=name)
        make_conv = functools.partial(conv, dtype=self.dtype, kernel_init=torch_default_kernel_init)
        x = x.astype(self.dtype)
        x = nn.relu(norm("bn1")(make_conv(_STEM_WIDTH, 1, name="conv1")(x)))
        feats, preact_feats = [x], [x]
        for stage, (channels, num_blocks) in enumerate(
            zip(self.out_channels[:3], self.num_blocks), start=1
        ):
            x = DownBlock(channels, dtype=self.dtype, name=f"layer{stage}.0")(x, train)
            for index in range(1, num_blocks + 1):
                x, preact = SplitBlock(dtype=self.dtype, name=f"layer{stage}.{index}")(x, train)
            feats.append(x)
            preact_feats.append(preact)
        x = nn.relu(norm("bn2")(make_conv(self.out_channels[3], 1, name="conv2")(x)))
        logits = classify(x, self.num_classes, use_bias=self.classifier_bias, dtype=self.dtype)
        record_stages(self, feats, preact_feats, x, logits, cam_placement="append")
        return logits, x

    def original_stage_channels(self) -> tuple[int, ...]:
        return (_STEM_WIDTH, *self.out_channels[:3])


MODELS: dict[str, Callable[..., nn.Module]] = {
    "ShuffleV2": functools.partial(
        ShuffleNetV2, out_channels=(116, 232, 464, 1024), num_blocks=(3, 7, 3)
    ),
}
