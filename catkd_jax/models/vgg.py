"""CIFAR VGGs with batch norm of the mdistiller toolbox (its `*_bn`): vgg8 ... vgg19.

Five blocks of conv3x3(bias)-BN-ReLU, the last ReLU of each block applied outside it, with
2x2 max pools after blocks 0-2. The pool after block 3 only runs for 64x64 inputs (a quirk of
the reference, reproduced), so `features` is the ReLU output of block 4, `[N, 4, 4, 512]` for
32x32 inputs.

Stages (`catkd_jax.models.stages`), as the original's `VGG` / `VGG_test`: feats = each block's
ReLU output before its pool; preact_feats = block 0's, then blocks 1-4 before their last ReLU;
the CAM-head model's CAMs follow block 4's output (six feats).
"""

from __future__ import annotations

import functools
from typing import Callable, ClassVar, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from catkd_jax.models.layers import BatchNorm, Dtype, classify, conv
from catkd_jax.models.stages import Path, record_stages

# Channels of each conv, block by block (the reference's configurations S, A, B, D, E).
_CONFIGS: dict[str, tuple[tuple[int, ...], ...]] = {
    "S": ((64,), (128,), (256,), (512,), (512,)),
    "A": ((64,), (128,), (256, 256), (512, 512), (512, 512)),
    "B": ((64, 64), (128, 128), (256, 256), (512, 512), (512, 512)),
    "D": ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512)),
    "E": ((64, 64), (128, 128), (256, 256, 256, 256), (512, 512, 512, 512), (512, 512, 512, 512)),
}


def _max_pool(x: jax.Array) -> jax.Array:
    """2x2 max pool, stride 2 (`nn.MaxPool2d(2, 2)`), `[N, H, W, K] -> [N, H/2, W/2, K]`."""
    return nn.max_pool(x, (2, 2), strides=(2, 2))


class VGG(nn.Module):
    """`__call__(x [N, 32, 32, 3], train) -> (logits [N, C], features [N, 4, 4, 512])`."""

    config: Sequence[Sequence[int]]
    num_classes: int = 100
    dtype: Dtype = jnp.float32
    classifier_bias: bool = True

    torch_classifier_name: ClassVar[str] = "classifier"

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> tuple[jax.Array, jax.Array]:
        input_height = x.shape[1]
        x = x.astype(self.dtype)
        feats, preact_feats = [], []
        for block, widths in enumerate(self.config):
            if block == 4 and input_height == 64:
                x = _max_pool(x)
            # PyTorch Sequential indices: conv 3i, BN 3i+1, ReLU 3i+2.
            for index, width in enumerate(widths):
                if index:
                    x = nn.relu(x)
                name = f"block{block}.{3 * index}"
                x = conv(width, 3, use_bias=True, dtype=self.dtype, name=name)(x)
                name = f"block{block}.{3 * index + 1}"
                x = BatchNorm(use_running_average=not train, dtype=self.dtype, name=name)(x)
            preact = x
            x = nn.relu(x)
            feats.append(x)
            preact_feats.append(x if block == 0 else preact)
            if block < 3:
                x = _max_pool(x)
        # The init loop draws the Linear N(0, 0.01) with a zero bias; VGG_test makes its CAM-head
        # `conv_test` after that loop, so it keeps PyTorch's Conv2d default (`classify`'s).
        logits = classify(
            x,
            self.num_classes,
            use_bias=self.classifier_bias,
            dtype=self.dtype,
            kernel_init=nn.initializers.normal(0.01),
            bias_init=nn.initializers.zeros,
        )
        record_stages(self, feats, preact_feats, x, logits, cam_placement="append")
        return logits, x

    def original_stage_channels(self) -> tuple[int, ...]:
        return tuple(widths[-1] for widths in self.config)

    def original_bn_before_relu(self) -> tuple[Path, ...]:
        return tuple((f"block{block}.{3 * len(self.config[block]) - 2}",) for block in (1, 2, 3, 4))


MODELS: dict[str, Callable[..., nn.Module]] = {
    "vgg8": functools.partial(VGG, config=_CONFIGS["S"]),
    "vgg11": functools.partial(VGG, config=_CONFIGS["A"]),
    "vgg13": functools.partial(VGG, config=_CONFIGS["B"]),
    "vgg16": functools.partial(VGG, config=_CONFIGS["D"]),
    "vgg19": functools.partial(VGG, config=_CONFIGS["E"]),
}
