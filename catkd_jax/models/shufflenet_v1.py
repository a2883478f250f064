"""CIFAR ShuffleNetV1 of the mdistiller toolbox: `ShuffleV1` (3 groups, widths 240/480/960).

A 1x1 stem (no downsampling), three stages of shuffle bottlenecks, each opened by a stride-2
block; `features` is the ReLU output of the last block, `[N, 4, 4, 960]` for 32x32 inputs.

Stages (`catkd_jax.models.stages`), as the original's `ShuffleNet` / `ShuffleNet_test`: feats =
the stem's ReLU output and each stage's output; preact_feats = the stem's output and each stage's
last block before its final ReLU; the CAM-head model's CAMs replace the last stage's output. The
original defines no `get_stage_channels()` and its `get_bn_before_relu()` raises.
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
from catkd_jax.models.stages import record_stages

_STEM_WIDTH = 24


class Bottleneck(nn.Module):
    """Grouped 1x1-BN-ReLU, shuffle, 3x3 depthwise-BN, grouped 1x1-BN, merge with input, ReLU.

    Stride 1 adds the input; stride 2 concatenates a 3x3 average pool of the input after the
    `out_planes` new channels. Returns `(output, preact)`, `preact` the merge before the ReLU.
    """

    out_planes: int
    stride: int
    groups: int
    input_groups: int  # groups of the first 1x1 conv and of the shuffle after it
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> tuple[jax.Array, jax.Array]:
        """`[N, H, W, in] -> [N, H / stride, W / stride, out_planes (+ in if stride 2)]`, twice."""
        norm = lambda name: BatchNorm(use_running_average=not train, dtype=self.dtype, name=name)
        make_conv = functools.partial(conv, dtype=self.dtype, kernel_init=torch_default_kernel_init)
        mid_planes = self.out_planes // 4
        out = make_conv(mid_planes, 1, groups=self.input_groups, name="conv1")(x)
        out = nn.relu(norm("bn1")(out))
        out = channel_shuffle(out, self.input_groups)
        out = make_conv(mid_planes, 3, stride=self.stride, groups=mid_planes, name="conv2")(out)
        out = nn.relu(norm("bn2")(out))
        out = make_conv(self.out_planes, 1, groups=self.groups, name="conv3")(out)
        out = norm("bn3")(out)
        if self.stride == 2:
            # PyTorch's AvgPool2d counts the zero padding: border windows are divided by 9 too.
            residual = nn.avg_pool(
                x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)), count_include_pad=True
            )
            preact = jnp.concatenate([out, residual], axis=-1)
        else:
            preact = out + x
        return nn.relu(preact), preact


class ShuffleNetV1(nn.Module):
    """`__call__(x [N, 32, 32, 3], train) -> (logits [N, C], features [N, 4, 4, K])`."""

    out_planes: Sequence[int]
    num_blocks: Sequence[int]
    groups: int
    num_classes: int = 100
    dtype: Dtype = jnp.float32
    classifier_bias: bool = True

    torch_classifier_name: ClassVar[str] = "linear"

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> tuple[jax.Array, jax.Array]:
        x = x.astype(self.dtype)
        x = conv(
            _STEM_WIDTH, 1, dtype=self.dtype, kernel_init=torch_default_kernel_init, name="conv1"
        )(x)
        x = nn.relu(BatchNorm(use_running_average=not train, dtype=self.dtype, name="bn1")(x))
        feats, preact_feats = [x], [x]
        stages = zip(self.out_planes, self.num_blocks)
        for stage, (planes, num_blocks) in enumerate(stages, start=1):
            for index in range(num_blocks):
                in_planes = x.shape[-1]
                # The stride-2 block concatenates its input, so it only makes the difference.
                x, preact = Bottleneck(
                    planes - in_planes if index == 0 else planes,
                    2 if index == 0 else 1,
                    self.groups,
                    # The reference keys this to the channel count: the 24-channel stem
                    # output is not grouped.
                    1 if in_planes == _STEM_WIDTH else self.groups,
                    dtype=self.dtype,
                    name=f"layer{stage}.{index}",
                )(x, train)
            feats.append(x)
            preact_feats.append(preact)
        logits = classify(x, self.num_classes, use_bias=self.classifier_bias, dtype=self.dtype)
        record_stages(self, feats, preact_feats, x, logits, cam_placement="replace")
        return logits, x


MODELS: dict[str, Callable[..., nn.Module]] = {
    "ShuffleV1": functools.partial(
        ShuffleNetV1, out_planes=(240, 480, 960), num_blocks=(4, 8, 4), groups=3
    ),
}
