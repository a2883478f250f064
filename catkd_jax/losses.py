"""Pure losses of CAT-KD and its baselines, with the reference implementation's semantics.

Every function is jit-able, vmap-able and differentiable, and computes in float32 whatever the
input dtype (bfloat16 activations included). Shapes are NHWC: features `[N, H, W, K]`,
classifier kernels `[K, C]`, class activation maps (CAMs) `[N, H, W, C]`.

Reference: Guo et al., "Class Attention Transfer Based Knowledge Distillation", CVPR 2023.
"""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

_NORMALIZE_EPS = 1e-12  # F.normalize's default


def _f32(x: jax.Array) -> jax.Array:
    return jnp.asarray(x).astype(jnp.float32)


def _require_rank(name: str, x: jax.Array, rank: int, layout: str) -> None:
    if jnp.ndim(x) != rank:
        raise ValueError(f"{name} must have rank {rank} {layout}, got shape {jnp.shape(x)}")


def class_activation_maps(features: jax.Array, kernel: jax.Array) -> jax.Array:
    """CAMs: the classifier kernel applied at every position (no bias).

    Args:
      features: `[N, H, W, K]`, the map the classifier global-average-pools.
      kernel: `[K, C]`, the classifier's Dense kernel.
    Returns:
      `[N, H, W, C]` float32; its spatial mean plus the bias is the logits.
    """
    _require_rank("features", features, 4, "[N, H, W, K]")
    _require_rank("kernel", kernel, 2, "[K, C]")
    if features.shape[-1] != kernel.shape[0]:
        raise ValueError(
            f"kernel has {kernel.shape[0]} rows but features have {features.shape[-1]} channels"
        )
    return jnp.einsum("nhwk,kc->nhwc", _f32(features), _f32(kernel))


@functools.lru_cache(maxsize=None)
def _pooling_matrix(in_size: int, out_size: int) -> np.ndarray:
    """`[out, in]` averaging weights of PyTorch's adaptive pooling along one axis."""
    matrix = np.zeros((out_size, in_size), np.float32)
    for i in range(out_size):
        start = (i * in_size) // out_size
        end = -((-(i + 1) * in_size) // out_size)  # ceil((i + 1) * in / out)
        matrix[i, start:end] = 1.0 / (end - start)
    return matrix


def adaptive_avg_pool(x: jax.Array, size: int) -> jax.Array:
    """`torch.nn.functional.adaptive_avg_pool2d(x, size)` for NHWC inputs.

    Output bin i averages rows floor(i*H/size) .. ceil((i+1)*H/size) - 1 (and likewise columns),
    so uneven bins (7 -> 4, 7 -> 2) and upsampling (2 -> 4) match PyTorch exactly.

    Args:
      x: `[N, H, W, C]`.
      size: output height and width, >= 1.
    Returns:
      `[N, size, size, C]` float32.
    """
    _require_rank("x", x, 4, "[N, H, W, C]")
    if not isinstance(size, (int, np.integer)) or size < 1:
        raise ValueError(f"pooling size must be an integer >= 1, got {size!r}")
    rows = _pooling_matrix(x.shape[1], int(size))
    cols = _pooling_matrix(x.shape[2], int(size))
    return jnp.einsum("ih,jw,nhwc->nijc", rows, cols, _f32(x))


def l2_normalize(x: jax.Array, axis: int | tuple[int, ...]) -> jax.Array:
    """`torch.nn.functional.normalize(x, dim=axis)`: `x / max(||x||, 1e-12)` along `axis`.

    Gradients equal PyTorch's everywhere, a zero vector included: there the norm is clamped, so
    the norm gets no gradient and `x` gets the incoming gradient over 1e-12. The clamp is applied
    to the squared norm (same value) so that `sqrt` is never differentiated at 0, where a naive
    `maximum(sqrt(sum(x**2)), eps)` gives `0 * inf = NaN`.
    """
    squared_norm = jnp.sum(jnp.square(x), axis=axis, keepdims=True)
    return x / jnp.sqrt(jnp.maximum(squared_norm, _NORMALIZE_EPS**2))


def l2_normalize_space(cams: jax.Array) -> jax.Array:
    """`F.normalize(cams, dim=(2, 3))`: each `[N, :, :, C]` map to unit l2 norm."""
    return l2_normalize(cams, axis=(1, 2))


def binarize_cams(cams: jax.Array) -> jax.Array:
    """1.0 where a CAM exceeds its own mean absolute value over space, else 0.0.

    Args:
      cams: `[N, H, W, C]`.
    Returns:
      `[N, H, W, C]` float32 of zeros and ones.
    """
    cams = _f32(cams)
    threshold = jnp.mean(jnp.abs(cams), axis=(1, 2), keepdims=True)
    return (cams > threshold).astype(jnp.float32)


def cat_loss(
    student_features: jax.Array,
    student_kernel: jax.Array,
    teacher_features: jax.Array,
    teacher_kernel: jax.Array,
    *,
    resolution: int = 2,
    normalize: bool = False,
    binarize: bool = False,
    class_mask: jax.Array | None = None,
    class_weights: jax.Array | None = None,
) -> jax.Array:
    """Class attention transfer: MSE between pooled student and teacher CAMs.

    Both sides' CAMs are computed from their features and classifier kernels (the teacher's
    under `stop_gradient`) and compared by `cam_transfer_loss`.

    Args:
      student_features: `[N, Hs, Ws, Ks]`.
      student_kernel: `[Ks, C]`.
      teacher_features: `[N, Ht, Wt, Kt]` (spatial size and channels may differ from the student).
      teacher_kernel: `[Kt, C]`.
      resolution, normalize, binarize, class_mask, class_weights: as `cam_transfer_loss`.
    Returns:
      scalar float32.
    """
    _require_rank("student_features", student_features, 4, "[N, H, W, K]")
    _require_rank("teacher_features", teacher_features, 4, "[N, H, W, K]")
    _require_rank("student_kernel", student_kernel, 2, "[K, C]")
    _require_rank("teacher_kernel", teacher_kernel, 2, "[K, C]")
    return cam_transfer_loss(
        class_activation_maps(student_features, student_kernel),
        jax.lax.stop_gradient(class_activation_maps(teacher_features, teacher_kernel)),
        resolution=resolution,
        normalize=normalize,
        binarize=binarize,
        class_mask=class_mask,
        class_weights=class_weights,
    )


def cam_transfer_loss(
    student_cams: jax.Array,
    teacher_cams: jax.Array,
    *,
    resolution: int = 2,
    normalize: bool = False,
    binarize: bool = False,
    class_mask: jax.Array | None = None,
    class_weights: jax.Array | None = None,
) -> jax.Array:
    """CAT's comparison of two sets of class maps: the teacher's optionally binarised, both
    adaptive-average-pooled to `resolution x resolution`, optionally l2-normalised per map over
    its positions, then compared by mean squared error. Gradients flow into both sides: pass
    the teacher's maps under `stop_gradient`.

    Args:
      student_cams: `[N, Hs, Ws, C]`.
      teacher_cams: `[N, Ht, Wt, C]` (spatial size may differ from the student's), e.g.
        `class_activation_maps` or `grad_cams`.
      resolution: side of the pooled CAMs, >= 1.
      normalize: l2-normalise each pooled CAM over its `resolution**2` positions.
      binarize: replace teacher CAMs by `binarize_cams` before pooling.
      class_mask: optional `[N, C]` bool; the loss is the mean over the selected CAMs only
        (0 when none is selected). See `select_cam_classes`.
      class_weights: optional `[N, C]` non-negative weights of the CAMs' squared errors (under
        `stop_gradient`), e.g. `teacher_probability_weights`; each example's weights are
        normalised to mean 1 over its selected classes, so the loss keeps the uniform mean's
        scale (None: every CAM weighs the same).
    Returns:
      scalar float32.
    """
    _require_rank("student_cams", student_cams, 4, "[N, H, W, C]")
    _require_rank("teacher_cams", teacher_cams, 4, "[N, H, W, C]")
    num_examples, num_classes = student_cams.shape[0], student_cams.shape[-1]
    if teacher_cams.shape[0] != num_examples:
        raise ValueError(
            f"student and teacher batch sizes differ: {num_examples} vs {teacher_cams.shape[0]}"
        )
    if teacher_cams.shape[-1] != num_classes:
        raise ValueError(
            f"student and teacher class counts differ: {num_classes} vs {teacher_cams.shape[-1]}"
        )
    if not isinstance(resolution, (int, np.integer)) or resolution < 1:
        raise ValueError(f"resolution must be an integer >= 1, got {resolution!r}")
    for name, per_class in (("class_mask", class_mask), ("class_weights", class_weights)):
        if per_class is not None and jnp.shape(per_class) != (num_examples, num_classes):
            raise ValueError(
                f"{name} must have shape [N, C] = {[num_examples, num_classes]}, got {jnp.shape(per_class)}"
            )

    student, teacher = _f32(student_cams), _f32(teacher_cams)
    if binarize:
        teacher = binarize_cams(teacher)
    student = adaptive_avg_pool(student, resolution)
    teacher = adaptive_avg_pool(teacher, resolution)
    if normalize:
        student = l2_normalize_space(student)
        teacher = l2_normalize_space(teacher)
    squared_error = jnp.square(student - teacher)
    if class_mask is None and class_weights is None:
        return jnp.mean(squared_error)
    selected = jnp.ones((num_classes,), jnp.float32) if class_mask is None else jnp.asarray(class_mask, jnp.float32)
    selected = jnp.broadcast_to(selected, (num_examples, num_classes))
    weights = selected
    if class_weights is not None:
        weights = selected * jax.lax.stop_gradient(jnp.asarray(class_weights, jnp.float32))
        # Mean 1 over each example's selected classes.
        mean = jnp.sum(weights, axis=1, keepdims=True) / jnp.maximum(jnp.sum(selected, axis=1, keepdims=True), 1.0)
        weights = weights / jnp.where(mean > 0, mean, 1.0)
    count = jnp.sum(selected) * resolution * resolution
    return jnp.sum(squared_error * weights[:, None, None, :]) / jnp.maximum(count, 1.0)


def grad_cams(features: jax.Array, head: Callable[[jax.Array], jax.Array]) -> jax.Array:
    """Grad-CAM (Selvaraju et al. 2017) of every class at the map `head` classifies.

    For class c, the gradient of its score `head(features)[:, c]` with respect to `features`,
    averaged over positions, weighs the channels; the map is the ReLU of the weighted sum. All
    classes at once: one `vjp` of `head`, vmapped over the classes' one-hot cotangents. Computed
    under `stop_gradient` (a teacher's maps).

    For a head that average-pools and applies a linear classifier (every network here), the
    gradient is `kernel[:, c] / (H * W)` at every position, so the result equals
    `relu(class_activation_maps(features, kernel)) / (H * W)`.

    Args:
      features: `[N, H, W, K]`.
      head: `[N, H, W, K] -> [N, C]`, the class scores before the softmax.
    Returns:
      `[N, H, W, C]` float32, non-negative.
    """
    _require_rank("features", features, 4, "[N, H, W, K]")
    features = jax.lax.stop_gradient(_f32(features))
    scores, pullback = jax.vjp(head, features)
    num_classes = scores.shape[-1]
    one_hots = jnp.broadcast_to(jnp.eye(num_classes, dtype=scores.dtype)[:, None, :], (num_classes, *scores.shape))
    (gradients,) = jax.vmap(pullback)(one_hots)  # [C, N, H, W, K]
    channel_weights = jnp.mean(gradients, axis=(2, 3))  # [C, N, K]
    return jax.nn.relu(jnp.einsum("nhwk,cnk->nhwc", features, channel_weights))


def teacher_probability_weights(teacher_logits: jax.Array) -> jax.Array:
    """`[N, C]` CAM weights for `cat_loss(class_weights=...)`: the teacher's softmax probabilities.

    The CAMs of the classes the teacher finds likely count more (the paper's extension "CAMs
    weighted by prediction score"; it reports little benefit over uniform weights).
    """
    _require_rank("teacher_logits", teacher_logits, 2, "[N, C]")
    return jax.nn.softmax(jnp.asarray(teacher_logits, jnp.float32), axis=-1)


def select_cam_classes(teacher_logits: jax.Array, num: int, strategy: str = "top") -> jax.Array:
    """Which classes' CAMs to transfer: exactly `num` per example, ranked by teacher logit.

    The original code thresholds the sorted logits, which selects num-1 classes for 'top' and
    num+1 for 'bottom'; this function selects exactly `num` (ties broken by class index).

    Args:
      teacher_logits: `[N, C]`.
      num: classes per example, 1..C.
      strategy: 'top' (highest teacher scores) or 'bottom' (lowest).
    Returns:
      `[N, C]` bool mask for `cat_loss(class_mask=...)`.
    """
    _require_rank("teacher_logits", teacher_logits, 2, "[N, C]")
    num_classes = teacher_logits.shape[1]
    if not isinstance(num, (int, np.integer)) or not 1 <= num <= num_classes:
        raise ValueError(f"num must be an integer in 1..{num_classes}, got {num!r}")
    if strategy not in ("top", "bottom"):
        raise ValueError(f"unknown strategy {strategy!r}; use 'top' or 'bottom'")
    scores = _f32(jax.lax.stop_gradient(teacher_logits))
    _, indices = jax.lax.top_k(scores if strategy == "top" else -scores, int(num))
    return jnp.any(jax.nn.one_hot(indices, num_classes, dtype=jnp.bool_), axis=1)


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean softmax cross-entropy of `[N, C]` logits against `[N]` integer labels."""
    _require_rank("logits", logits, 2, "[N, C]")
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(_f32(logits), labels))


def _kl_from_log_probs(log_p_target: jax.Array, log_p_model: jax.Array) -> jax.Array:
    """Per-example KL(target || model) over the last axis."""
    return optax.losses.kl_divergence_with_log_targets(log_p_model, log_p_target)


def kd_loss(student_logits: jax.Array, teacher_logits: jax.Array, temperature: float) -> jax.Array:
    """Hinton et al.'s KD: KL(teacher || student) at `temperature`, times T^2, batch mean.

    Args:
      student_logits, teacher_logits: `[N, C]`.
    Returns:
      scalar float32.
    """
    _require_rank("student_logits", student_logits, 2, "[N, C]")
    _require_rank("teacher_logits", teacher_logits, 2, "[N, C]")
    log_p_student = jax.nn.log_softmax(_f32(student_logits) / temperature)
    log_p_teacher = jax.nn.log_softmax(_f32(jax.lax.stop_gradient(teacher_logits)) / temperature)
    return jnp.mean(_kl_from_log_probs(log_p_teacher, log_p_student)) * temperature**2


def dkd_loss(
    student_logits: jax.Array,
    teacher_logits: jax.Array,
    labels: jax.Array,
    alpha: float,
    beta: float,
    temperature: float,
) -> jax.Array:
    """Decoupled KD (Zhao et al., CVPR 2022): alpha * TCKD + beta * NCKD, each times T^2.

    TCKD is the KL between the binary (target, all others) probabilities; NCKD the KL between
    the distributions over non-target classes (the target logit masked out with -1000, as in
    the reference).

    Args:
      student_logits, teacher_logits: `[N, C]`.
      labels: `[N]` integer targets.
    Returns:
      scalar float32.
    """
    _require_rank("student_logits", student_logits, 2, "[N, C]")
    _require_rank("teacher_logits", teacher_logits, 2, "[N, C]")
    student = _f32(student_logits) / temperature
    teacher = _f32(jax.lax.stop_gradient(teacher_logits)) / temperature
    target = jax.nn.one_hot(labels, student.shape[1], dtype=jnp.float32)

    def binary(log_probs_source: jax.Array) -> jax.Array:
        probs = jax.nn.softmax(log_probs_source)
        target_prob = jnp.sum(probs * target, axis=1)
        other_prob = jnp.sum(probs * (1.0 - target), axis=1)
        return jnp.log(jnp.stack([target_prob, other_prob], axis=1))

    tckd = jnp.mean(_kl_from_log_probs(binary(teacher), binary(student)))
    nckd = jnp.mean(
        _kl_from_log_probs(
            jax.nn.log_softmax(teacher - 1000.0 * target),
            jax.nn.log_softmax(student - 1000.0 * target),
        )
    )
    return (alpha * tckd + beta * nckd) * temperature**2
