"""The trainable modules that feature-distillation methods own, initialised as PyTorch does.

Named after the original's modules (`conv_reg.conv`, `regressors.0.2`), so that their PyTorch
state dicts import with `catkd_jax.convert.variables_from_torch`.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from catkd_jax.errors import ConfigError
from catkd_jax.models.layers import BatchNorm, torch_default_bias_init, torch_default_kernel_init


def _torch_conv(features: int, kernel: tuple[int, int], stride: int, padding: int, use_bias: bool,
                fan_in: int, name: str) -> nn.Conv:
    """`torch.nn.Conv2d` with its default initialisation (weight and bias U(+-1/sqrt(fan_in)))."""
    return nn.Conv(features, kernel, strides=(stride, stride), padding=((padding, padding), (padding, padding)),
                   use_bias=use_bias, kernel_init=torch_default_kernel_init,
                   bias_init=torch_default_bias_init(fan_in), name=name)


class TransposedConv4x4(nn.Module):
    """`torch.nn.ConvTranspose2d(C, K, kernel_size=4, stride=2, padding=1)`: `[N, H, W, C] ->
    [N, 2H, 2W, K]`, with PyTorch's default initialisation.

    The kernel is kept as the PyTorch weight `[C, K, 4, 4]` converts like a conv's (`[4, 4, K, C]`),
    so it imports like every other kernel; the transposed convolution is the convolution of the
    stride-dilated input with that kernel flipped in space.
    """

    features: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        channels = x.shape[-1]
        fan_in = self.features * 16  # PyTorch's fan-in of a [C, K, 4, 4] weight is K * 4 * 4
        kernel = self.param("kernel", torch_default_kernel_init, (4, 4, self.features, channels))
        bias = self.param("bias", torch_default_bias_init(fan_in), (self.features,))
        flipped = jnp.transpose(kernel[::-1, ::-1], (0, 1, 3, 2))  # HWIO, I = C
        y = lax.conv_general_dilated(x, flipped, (1, 1), ((2, 2), (2, 2)), lhs_dilation=(2, 2),
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return y + bias


class ConvReg(nn.Module):
    """FitNet's regressor (the original's `ConvReg`): a conv from the student's hint to the
    teacher's shape, BatchNorm (in training mode, updating its running statistics), ReLU.

    The conv is chosen from both hints' shapes `[N, H, W, K]` as the original chooses it: 3x3
    stride 2 when the student's map is twice the teacher's; a 4x4 stride-2 transposed conv when
    it is half; else a `(1 + Hs - Ht) x (1 + Ws - Wt)` conv without padding.
    """

    student_shape: Sequence[int]
    teacher_shape: Sequence[int]

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        _, student_height, student_width, student_channels = self.student_shape
        _, teacher_height, teacher_width, teacher_channels = self.teacher_shape
        if student_height == 2 * teacher_height:
            conv = _torch_conv(teacher_channels, (3, 3), 2, 1, True, student_channels * 9, "conv")
        elif student_height * 2 == teacher_height:
            conv = TransposedConv4x4(teacher_channels, name="conv")
        elif student_height >= teacher_height:
            kernel = (1 + student_height - teacher_height, 1 + student_width - teacher_width)
            conv = _torch_conv(teacher_channels, kernel, 1, 0, True, student_channels * kernel[0] * kernel[1], "conv")
        else:
            raise ConfigError(
                f"FitNet cannot regress a {student_height}x{student_width} student hint to a "
                f"{teacher_height}x{teacher_width} teacher hint (the original's ConvReg neither); "
                "choose another config.fitnet.hint_layer"
            )
        return nn.relu(BatchNorm(use_running_average=False, name="bn")(conv(x)))


class VIDRegressor(nn.Module):
    """One of VID's regressors (the original's `nn.Sequential(conv1x1(s, t), ReLU, conv1x1(t, t),
    ReLU, conv1x1(t, t))`, 1x1 convs without bias named `0`, `2`, `4`): `[N, h, w, Ks] -> [N, h, w, Kt]`."""

    features: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for position in (0, 2, 4):
            if position:
                x = nn.relu(x)
            x = _torch_conv(self.features, (1, 1), 1, 0, False, x.shape[-1], str(position))(x)
        return x


class VIDRegressors(nn.Module):
    """VID's regressors, one per stage pair (the original's `regressors`, named `0`, `1`, ...):
    `[x_i [N, h_i, w_i, Ks_i]] -> [[N, h_i, w_i, Kt_i]]`."""

    teacher_channels: Sequence[int]

    @nn.compact
    def __call__(self, inputs: Sequence[jax.Array]) -> list[jax.Array]:
        return [VIDRegressor(channels, name=str(index))(x)
                for index, (channels, x) in enumerate(zip(self.teacher_channels, inputs))]


class OFDConnector(nn.Module):
    """One of OFD's connectors (the original's `nn.Sequential(conv, BatchNorm2d)`, named `0`, `1`):
    a conv without bias (`kernel_size`, stride 1, padding `(k - 1) // 2`, weights normal with
    std `sqrt(2 / (k * k * features))`), then BatchNorm in training mode (weight 1, bias 0):
    `[N, h, w, Ks] -> [N, h, w, features]`."""

    features: int
    kernel_size: int = 1

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        size, padding = self.kernel_size, (self.kernel_size - 1) // 2
        x = nn.Conv(self.features, (size, size), padding=((padding, padding), (padding, padding)), use_bias=False,
                    kernel_init=nn.initializers.normal((2.0 / (size * size * self.features)) ** 0.5), name="0")(x)
        return BatchNorm(use_running_average=False, name="1")(x)


class OFDConnectors(nn.Module):
    """OFD's connectors, one per stage pair (the original's `connectors.connectors`, named `0`,
    `1`, ...): `[x_i [N, h_i, w_i, Ks_i]] -> [[N, h_i, w_i, Kt_i]]`."""

    teacher_channels: Sequence[int]
    kernel_size: int = 1

    @nn.compact
    def __call__(self, inputs: Sequence[jax.Array]) -> list[jax.Array]:
        return [OFDConnector(channels, self.kernel_size, name=str(index))(x)
                for index, (channels, x) in enumerate(zip(self.teacher_channels, inputs))]


class CRDEmbed(nn.Module):
    """CRD's embedding (the original's `Embed`): a linear layer (`linear`, PyTorch's default
    initialisation), then l2 normalisation: `[N, K] -> [N, features]`."""

    features: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = x.reshape(x.shape[0], -1)
        x = nn.Dense(self.features, kernel_init=torch_default_kernel_init,
                     bias_init=torch_default_bias_init(x.shape[-1]), name="linear")(x)
        # Unclamped, as the original's `Normalize` (`losses.l2_normalize` clamps the norm at 1e-12).
        return x / jnp.sqrt(jnp.sum(jnp.square(x), axis=1, keepdims=True))


class CRDEmbeddings(nn.Module):
    """CRD's two embeddings, `embed_s` and `embed_t` (the original's names):
    `([N, Ks], [N, Kt]) -> ([N, features], [N, features])`."""

    features: int

    @nn.compact
    def __call__(self, student: jax.Array, teacher: jax.Array) -> tuple[jax.Array, jax.Array]:
        return CRDEmbed(self.features, name="embed_s")(student), CRDEmbed(self.features, name="embed_t")(teacher)
