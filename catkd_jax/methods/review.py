"""ReviewKD (Chen et al., CVPR 2021, "Distilling Knowledge via Knowledge Review"), as the
original's `ReviewKD` distiller computes it.

The student's features, deepest first (`pooled_feat` as a 1x1 map, then the last stage's ...),
pass through a chain of attention-based fusion modules (ABFs): each transforms its feature to
`mid` channels, fuses it with the previous ABF's residual (nearest-resized) by a learned
two-way attention, and maps the result to a teacher feature's shape. The loss is the
hierarchical context loss (`hcl_loss`) between those outputs and the teacher's
`preact_feats[1:] + [pooled_feat]`, shallowest first, paired as Python's `zip` pairs them.

The settings (`config.reviewkd`) are the original's lists, in the original's orders:
`in_channels` and `out_channels` from the shallowest ABF to the deepest, `shapes` and
`out_shapes` from the deepest (the `pooled_feat` one) to the shallowest; `fitting_settings`
says which values fit a pair of networks.
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from catkd_jax import losses
from catkd_jax.errors import ConfigError
from catkd_jax.methods.base import Method, stage_shapes, weighted_cross_entropy
from catkd_jax.methods.modules import _torch_conv
from catkd_jax.models import stages as model_stages
from catkd_jax.models.layers import BatchNorm
from catkd_jax.types import Variables

# torch.nn.init.kaiming_uniform_(w, a=1): U(+-gain * sqrt(3 / fan_in)), gain sqrt(2 / (1 + a^2)) = 1.
kaiming_uniform_a1 = nn.initializers.variance_scaling(1.0, "fan_in", "uniform")

# The original's `mid_channel = min(512, in_channels[-1])` (its MAX_MID_CHANNEL is never read).
MAX_MID_CHANNELS = 512


def _nearest_indices(in_size: int, out_size: int) -> np.ndarray:
    """The source index of each output index of PyTorch's 'nearest' interpolation to a given
    size: floor(i * float32(in / out)), clamped (PyTorch computes the scale in float32)."""
    scale = np.float32(in_size) / np.float32(out_size)
    indices = np.floor(np.arange(out_size, dtype=np.float32) * scale).astype(np.int64)
    return np.minimum(indices, in_size - 1)


def resize_nearest(x: jax.Array, size: int) -> jax.Array:
    """`F.interpolate(x, (size, size), mode="nearest")` for NHWC: `[N, h, w, C] -> [N, size, size, C]`."""
    return x[:, _nearest_indices(x.shape[1], size)][:, :, _nearest_indices(x.shape[2], size)]


def hcl_loss(student: Sequence[jax.Array], teacher: Sequence[jax.Array]) -> jax.Array:
    """The original's hierarchical context loss: per pair of maps `[N, h, w, C]` (zipped), the mean
    squared error, plus that of both maps adaptive-average-pooled to 4x4, 2x2 and 1x1 (each level
    smaller than h) weighted 1/2, 1/4, 1/8 in the order taken, over the weights' sum; summed over pairs."""
    total = jnp.zeros((), jnp.float32)
    for f_s, f_t in zip(student, teacher):
        height = f_s.shape[1]
        loss = jnp.mean(jnp.square(f_s - f_t))
        weight, weights = 1.0, 1.0
        for level in (4, 2, 1):
            if level >= height:
                continue
            weight /= 2.0
            pooled_difference = losses.adaptive_avg_pool(f_s, level) - losses.adaptive_avg_pool(f_t, level)
            loss = loss + jnp.mean(jnp.square(pooled_difference)) * weight
            weights += weight
        total = total + loss / weights
    return total


class ABF(nn.Module):
    """One attention-based fusion module (the original's `ABF`; submodules named as its
    `conv1.0`, `conv1.1`, `conv2.0`, `conv2.1`, `att_conv.0`).

    `x [N, s, s, Cin]` -> 1x1 conv to `mid_channels` + BatchNorm (training mode); with `fuse`, the
    `residual` is resized (nearest) to `shape` and mixed in by a sigmoid attention of two maps
    (a 1x1 conv with bias of both); the result is resized to `out_shape` when its width differs.
    Returns `(3x3 conv to out_channels + BatchNorm [N, o, o, Cout], the fused map [N, o, o, mid])`.
    """

    mid_channels: int
    out_channels: int
    fuse: bool

    @nn.compact
    def __call__(self, x: jax.Array, residual: jax.Array | None, shape: int, out_shape: int):
        conv1 = nn.Conv(self.mid_channels, (1, 1), use_bias=False, kernel_init=kaiming_uniform_a1, name="conv1.0")
        x = BatchNorm(use_running_average=False, name="conv1.1")(conv1(x))
        if self.fuse:
            residual = resize_nearest(residual, shape)
            attention_conv = _torch_conv(2, (1, 1), 1, 0, True, 2 * self.mid_channels, "att_conv.0")
            attention = nn.sigmoid(attention_conv(jnp.concatenate([x, residual], axis=-1)))
            x = x * attention[..., 0:1] + residual * attention[..., 1:2]
        if x.shape[2] != out_shape:
            x = resize_nearest(x, out_shape)
        conv2 = nn.Conv(self.out_channels, (3, 3), padding=((1, 1), (1, 1)), use_bias=False,
                        kernel_init=kaiming_uniform_a1, name="conv2.0")
        return BatchNorm(use_running_average=False, name="conv2.1")(conv2(x)), x


class ReviewABFs(nn.Module):
    """The original's `abfs` (its list reversed: `0` is the deepest ABF, without fusion):
    student features deepest first `[[N, s_k, s_k, C_k]]` -> the ABFs' outputs shallowest first."""

    mid_channels: int
    out_channels: Sequence[int]  # the original's OUT_CHANNELS, shallowest ABF first
    shapes: Sequence[int]  # SHAPES, deepest first
    out_shapes: Sequence[int]  # OUT_SHAPES, deepest first

    @nn.compact
    def __call__(self, features: Sequence[jax.Array]) -> list[jax.Array]:
        count = len(self.out_channels)
        results, residual = [], None
        for index, (x, shape, out_shape) in enumerate(zip(features, self.shapes, self.out_shapes)):
            abf = ABF(self.mid_channels, self.out_channels[count - 1 - index], fuse=index > 0, name=str(index))
            output, residual = abf(x, residual, shape, out_shape)
            results.insert(0, output)
        return results


def _student_features(stages: model_stages.Stages, preact: bool) -> list[jax.Array]:
    """The student's features as the original's ABFs read them: deepest first, `pooled_feat` as `[N, 1, 1, K]`."""
    feats = stages.preact_feats if preact else stages.feats
    return [stages.pooled_feat[:, None, None, :], *reversed(feats)]


def _teacher_features(stages: model_stages.Stages) -> list[jax.Array]:
    """`preact_feats[1:] + [pooled_feat as [N, 1, 1, K]]`, shallowest first."""
    return [*stages.preact_feats[1:], stages.pooled_feat[:, None, None, :]]


def fitting_settings(student: model_stages.Stages, teacher: model_stages.Stages,
                     settings: Any) -> dict[str, tuple[int, ...]]:
    """The `shapes`, `out_shapes`, `in_channels` and `out_channels` that make `settings`'s ABFs
    (as many as its `in_channels`) fit these networks' stages (arrays or their shapes, NHWC).

    Entries the networks do not constrain keep `settings`'s values: `shapes[0]` (the deepest ABF
    does no fusion) and the outputs of ABFs beyond the teacher's features (zip leaves them out of
    the loss). Raises ConfigError when the student has fewer features than ABFs.
    """
    count = len(settings.in_channels)
    inputs = [feature.shape for feature in jax.eval_shape(
        functools.partial(_student_features, preact=settings.stu_preact), student)]
    if len(inputs) < count:
        raise ConfigError(f"ReviewKD's {count} ABFs (config.reviewkd.in_channels) need as many student features, "
                          f"but the student has {len(inputs)} (its {'preact_' if settings.stu_preact else ''}feats "
                          "and pooled_feat); list fewer in_channels")
    targets = [feature.shape for feature in jax.eval_shape(_teacher_features, teacher)]
    out_channels, out_shapes = list(settings.out_channels), list(settings.out_shapes)
    for index, target in enumerate(targets[:count]):
        out_channels[index], out_shapes[count - 1 - index] = target[3], target[1]
    return {
        "shapes": (settings.shapes[0], *(shape[1] for shape in inputs[1:count])),
        "out_shapes": tuple(out_shapes),
        "in_channels": tuple(inputs[count - 1 - index][3] for index in range(count)),
        "out_channels": tuple(out_channels),
    }


class ReviewKD(Method):
    """`ce_weight * CE + reviewkd_weight * min(epoch / warmup_epochs, 1) * HCL(ABFs(student), teacher)`
    (logged as `loss_ce`, `loss_kd`), the teacher's features as its eval-mode forward gives them.

    There are as many ABFs as `in_channels` entries, each with `min(512, in_channels[-1])` mid
    channels; their BatchNorms run in training mode, the running statistics the method's state.
    The settings must fit the networks, checked before training (`check_fit`) and when the step is
    traced (`fitting_settings`; the original fails on most mismatches, and broadcasts a 1x1 output
    against a larger teacher map).
    """

    reads_stages = True
    torch_module_name = "abfs"

    def __init__(self, config, student, teacher):
        super().__init__(config, student, teacher)
        settings = config.reviewkd
        lengths = {name: len(settings[name]) for name in ("in_channels", "out_channels", "shapes", "out_shapes")}
        if len(set(lengths.values())) != 1 or not lengths["in_channels"]:
            raise ConfigError("config.reviewkd.in_channels, out_channels, shapes and out_shapes list one entry per "
                              f"ABF, so they must be equally long and not empty; got lengths {lengths}")
        self.abfs = ReviewABFs(min(MAX_MID_CHANNELS, settings.in_channels[-1]), tuple(settings.out_channels),
                               tuple(settings.shapes), tuple(settings.out_shapes))
        self.networks = (student, teacher)

    @classmethod
    def fitted_settings(cls, config, student, teacher):
        """The lists (`fitting_settings`), from `config.reviewkd`'s."""
        fitted = fitting_settings(student, teacher, config.reviewkd)
        return {f"reviewkd.{name}": value for name, value in fitted.items()}

    def check_fit(self, image_shape: tuple[int, ...]) -> None:
        jax.eval_shape(self._check_fit, *(stage_shapes(model, tuple(image_shape)) for model in self.networks))

    def init(self, key: jax.Array, teacher_variables: Variables | None = None, num_train: int = 0) -> Variables:
        """The ABFs' variables; as the parameters' shapes do not depend on the maps' sizes, initialised on 1x1 maps."""
        del teacher_variables, num_train
        in_channels = self.config.reviewkd.in_channels
        ones = (1,) * len(in_channels)
        features = [jnp.zeros((2, 1, 1, channels), jnp.float32) for channels in reversed(in_channels)]
        return self.abfs.clone(shapes=ones, out_shapes=ones).init(key, features)

    def _check_fit(self, student: model_stages.Stages, teacher: model_stages.Stages) -> None:
        settings = self.config.reviewkd
        misfits = [f"{name}={tuple(settings[name])} should be {needed}"
                   for name, needed in fitting_settings(student, teacher, settings).items()
                   if tuple(settings[name]) != needed]
        if misfits:
            raise ConfigError(f"config.reviewkd does not fit these networks' features: {'; '.join(misfits)}")
        for side, features in (("student", _student_features(student, settings.stu_preact)),
                               ("teacher", _teacher_features(teacher))):
            if any(feature.shape[1] != feature.shape[2] for feature in features):
                raise ConfigError(f"ReviewKD needs square feature maps; the {side}'s are "
                                  f"{[feature.shape[1:3] for feature in features]}")

    def __call__(self, variables, student, teacher, batch, epoch):
        settings = self.config.reviewkd
        self._check_fit(student.stages, teacher.stages)
        results, updates = self.abfs.apply(variables, _student_features(student.stages, settings.stu_preact),
                                           mutable=["batch_stats"])
        warmup = jnp.minimum(epoch / settings.warmup_epochs, 1.0)
        terms = weighted_cross_entropy(settings, student, batch["label"])
        terms["loss_kd"] = settings.reviewkd_weight * warmup * hcl_loss(results, _teacher_features(teacher.stages))
        return terms, updates
