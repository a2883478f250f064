"""Building blocks shared by every architecture, with PyTorch's exact semantics.

Naming convention (what makes published checkpoints import 1:1): every submodule is named
after the PyTorch module path it mirrors, dots included (`'layer1.0'`, `'downsample.0'`), so
the PyTorch key of a leaf is the Flax path joined with dots plus the leaf's PyTorch name
(see `catkd_jax.convert`). The one exception is the classifier: it is always named
`'classifier'` here, so that the training code finds the CAM kernel in one place; each model
says what PyTorch calls it in `torch_classifier_name`.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

Dtype = Any

# torch.nn.init.kaiming_normal_(mode="fan_out", nonlinearity="relu"): N(0, 2 / fan_out), not
# truncated. fan_out = out_channels * kh * kw for a HWIO kernel, as in PyTorch (groups included).
kaiming_normal_fan_out = nn.initializers.variance_scaling(2.0, "fan_out", "normal")

# PyTorch's default for Conv2d and Linear weights (kaiming_uniform_ with a=sqrt(5)):
# U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
torch_default_kernel_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def torch_default_bias_init(fan_in: int) -> nn.initializers.Initializer:
    """PyTorch's default bias: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    bound = 1.0 / math.sqrt(fan_in)

    def init(key: jax.Array, shape: Sequence[int], dtype: Dtype = jnp.float32) -> jax.Array:
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def conv(
    features: int,
    kernel_size: int,
    *,
    name: str,
    stride: int = 1,
    padding: int | None = None,
    groups: int = 1,
    use_bias: bool = False,
    dtype: Dtype = jnp.float32,
    kernel_init: nn.initializers.Initializer = kaiming_normal_fan_out,
    bias_init: nn.initializers.Initializer = nn.initializers.zeros,
) -> nn.Conv:
    """A `torch.nn.Conv2d` as an `nn.Conv`: symmetric explicit padding (default k // 2).

    Explicit padding matters: 'SAME' pads stride-2 convolutions asymmetrically, PyTorch does not.
    Parameters stay float32; `dtype` is the computation dtype. Grouped convolutions run through
    `grouped_conv_general_dilated`.
    """
    pad = kernel_size // 2 if padding is None else padding
    return nn.Conv(
        features,
        (kernel_size, kernel_size),
        strides=(stride, stride),
        padding=((pad, pad), (pad, pad)),
        feature_group_count=groups,
        conv_general_dilated=grouped_conv_general_dilated if groups > 1 else None,
        use_bias=use_bias,
        dtype=dtype,
        param_dtype=jnp.float32,
        kernel_init=kernel_init,
        bias_init=bias_init,
        name=name,
    )


def grouped_conv_general_dilated(
    lhs: jax.Array,
    rhs: jax.Array,
    window_strides: Sequence[int],
    padding: Sequence[tuple[int, int]],
    lhs_dilation: Sequence[int] | None = None,
    rhs_dilation: Sequence[int] | None = None,
    dimension_numbers: Any = None,
    feature_group_count: int = 1,
    precision: Any = None,
    decomposed_on: Sequence[str] = ("cpu",),
) -> jax.Array:
    """`lax.conv_general_dilated` of `conv`'s grouped convolutions (`lhs [N, H, W, C]`, `rhs
    [kh, kw, C / groups, K]`, explicit padding), computed on CPUs without XLA's grouped convolution.

    XLA's CPU backend runs grouped convolutions and their gradients far slower than dense ones
    (docs/benchmarks.md: ShuffleV1's train step 3x, MobileNetV2's 3x). There a depthwise
    convolution (one input channel per group, K = C) is computed as the sum of its kh * kw shifted
    inputs scaled per channel, and a grouped 1x1 convolution as one matmul with the block-diagonal
    kernel; other grouped convolutions keep XLA's convolution. The platforms of `decomposed_on`
    (`jax.lax.platform_dependent`'s names) take the decomposed forms, the others XLA's (cuDNN's
    grouped kernels on GPUs). The function is the same; only the rounding order of the sums differs.
    """
    native = functools.partial(
        lax.conv_general_dilated, window_strides=window_strides, padding=padding, lhs_dilation=lhs_dilation,
        rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers, feature_group_count=feature_group_count,
        precision=precision,
    )
    kernel_height, kernel_width, group_inputs, outputs = rhs.shape
    channels = lhs.shape[-1]
    undilated = all(d == 1 for d in (*(lhs_dilation or ()), *(rhs_dilation or ())))
    if undilated and group_inputs == 1 and outputs == channels:
        decomposed = functools.partial(_depthwise_conv, window_strides=window_strides, padding=padding)
    elif undilated and (kernel_height, kernel_width) == (1, 1) and tuple(window_strides) == (1, 1) and all(
        tuple(pair) == (0, 0) for pair in padding
    ):
        decomposed = functools.partial(_grouped_pointwise_conv, groups=feature_group_count)
    else:
        return native(lhs, rhs)
    return lax.platform_dependent(lhs, rhs, **dict.fromkeys(decomposed_on, decomposed), default=native)


def _depthwise_conv(
    lhs: jax.Array, rhs: jax.Array, window_strides: Sequence[int], padding: Sequence[tuple[int, int]]
) -> jax.Array:
    """`[N, H, W, C] * [kh, kw, 1, C] -> [N, H', W', C]`, summed over the kernel taps in float32
    (or wider): a bfloat16 convolution accumulates in float32 too."""
    (top, bottom), (left, right) = padding
    stride_h, stride_w = window_strides
    padded = jnp.pad(lhs, ((0, 0), (top, bottom), (left, right), (0, 0)))
    batch, height, width, channels = padded.shape
    kernel_height, kernel_width = rhs.shape[:2]
    out_height = (height - kernel_height) // stride_h + 1
    out_width = (width - kernel_width) // stride_w + 1
    accumulator = jnp.promote_types(lhs.dtype, jnp.float32)
    total = jnp.zeros((batch, out_height, out_width, channels), accumulator)
    for i in range(kernel_height):
        for j in range(kernel_width):
            tap = lax.slice(
                padded, (0, i, j, 0),
                (batch, i + (out_height - 1) * stride_h + 1, j + (out_width - 1) * stride_w + 1, channels),
                (1, stride_h, stride_w, 1),
            )
            total = total + tap.astype(accumulator) * rhs[i, j, 0].astype(accumulator)
    return total.astype(lhs.dtype)


def _grouped_pointwise_conv(lhs: jax.Array, rhs: jax.Array, groups: int) -> jax.Array:
    """`[N, H, W, C] * [1, 1, C / groups, K] -> [N, H, W, K]` as one matmul with the `[C, K]`
    block-diagonal kernel: group g's inputs meet only group g's outputs."""
    group_inputs, outputs = rhs.shape[2:]
    blocks = rhs[0, 0].reshape(group_inputs, groups, outputs // groups)
    kernel = jnp.einsum("igo,gh->giho", blocks, jnp.eye(groups, dtype=rhs.dtype))
    kernel = kernel.reshape(groups * group_inputs, outputs)
    accumulator = jnp.promote_types(lhs.dtype, jnp.float32)
    return jnp.matmul(lhs, kernel, preferred_element_type=accumulator).astype(lhs.dtype)


class BatchNorm(nn.Module):
    """`torch.nn.BatchNorm2d` over the last axis of `[..., K]` inputs.

    Like PyTorch and unlike `flax.linen.BatchNorm`, the running variance is updated with the
    unbiased batch variance (the normalisation itself uses the biased one), so running
    statistics match the reference run for run. Statistics are computed in float32.
    `momentum` is Flax's (weight of the old running value): 0.9 is PyTorch's 0.1.

    Under `jit` over a device mesh the batch axis is global, so the statistics are those of
    the global batch without any collective written here.
    """

    use_running_average: bool
    momentum: float = 0.9
    epsilon: float = 1e-5
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        features = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (features,), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (features,), jnp.float32)
        ra_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((features,), jnp.float32))
        ra_var = self.variable("batch_stats", "var", lambda: jnp.ones((features,), jnp.float32))

        x32 = x.astype(jnp.float32)
        if self.use_running_average:
            mean, var = ra_mean.value, ra_var.value
        else:
            reduce_axes = tuple(range(x.ndim - 1))
            mean = jnp.mean(x32, axis=reduce_axes)
            var = jnp.mean(jnp.square(x32 - mean), axis=reduce_axes)
            if not self.is_initializing():
                count = math.prod(x.shape[:-1])
                unbiased_var = var * (count / max(count - 1, 1))
                ra_mean.value = self.momentum * ra_mean.value + (1.0 - self.momentum) * mean
                ra_var.value = self.momentum * ra_var.value + (1.0 - self.momentum) * unbiased_var
        y = (x32 - mean) * (jax.lax.rsqrt(var + self.epsilon) * scale) + bias
        return y.astype(self.dtype)


def classify(
    features: jax.Array,
    num_classes: int,
    *,
    use_bias: bool = True,
    dtype: Dtype = jnp.float32,
    kernel_init: nn.initializers.Initializer = torch_default_kernel_init,
    bias_init: nn.initializers.Initializer | None = None,
    cam_head_kernel_init: nn.initializers.Initializer = torch_default_kernel_init,
) -> jax.Array:
    """The head: global average pooling, then the linear classifier whose kernel makes the CAMs.

    `features [N, H, W, K] -> logits [N, C]`. The Dense (kernel `[K, C]`) is always named
    'classifier'. With a bias it is the reference's `nn.Linear`: initialisation defaults to
    PyTorch's Linear default (`bias_init=None`: U(+-1/sqrt(K))); families whose reference
    overrides it pass their own `kernel_init`/`bias_init`. Without a bias it is the CAM head,
    the reference's bias-free 1x1 convolution `conv_test` `[C, K, 1, 1]`, a different module
    with its own initialisation: `cam_head_kernel_init`, by default PyTorch's Conv2d default,
    U(+-1/sqrt(K)) as for the Linear; a family whose init loop reaches `conv_test` passes what
    that loop draws (`kaiming_normal_fan_out` gives N(0, 2 / C) here as there: the fan-out of
    both kernels is C). Call it from a compact `__call__`: the Dense belongs to the calling model.
    """
    pooled = global_avg_pool(features)
    return nn.Dense(
        num_classes,
        use_bias=use_bias,
        dtype=dtype,
        param_dtype=jnp.float32,
        kernel_init=kernel_init if use_bias else cam_head_kernel_init,
        bias_init=bias_init or torch_default_bias_init(pooled.shape[-1]),
        name="classifier",
    )(pooled)


def channel_shuffle(x: jax.Array, groups: int) -> jax.Array:
    """`[N, H, W, C] -> [N, H, W, C]`: PyTorch's NCHW shuffle (view g x C/g, transpose) in NHWC."""
    *batch, channels = x.shape
    x = x.reshape(*batch, groups, channels // groups)
    return jnp.swapaxes(x, -1, -2).reshape(*batch, channels)


def global_avg_pool(features: jax.Array) -> jax.Array:
    """`[N, H, W, K] -> [N, K]`, averaged in float32."""
    return jnp.mean(features.astype(jnp.float32), axis=(1, 2)).astype(features.dtype)
