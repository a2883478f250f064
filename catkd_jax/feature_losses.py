"""Pure losses of the feature-distillation baselines of the mdistiller toolbox, with its semantics.

FitNet, AT, NST, PKT, KDSVD, RKD, SP, VID and OFD, as the original CAT-KD code (which ships
mdistiller) computes them, quirks included, values and gradients. Where the original applies a
learned module (FitNet's regressor, VID's regressors, OFD's connectors), the function takes that
module's output.

Layout is NHWC: stage features `[N, H, W, C]`, pooled embeddings `[N, C]`. The original is NCHW;
where its reshapes depend on that order (KDSVD), the functions reorder explicitly. Everything
computes in float32; teacher inputs are under `stop_gradient` (the original's `no_grad`), and
the products of features here run at full float32 precision (PyTorch's default; XLA's GPU
default may use TF32).
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from catkd_jax import linalg
from catkd_jax.losses import adaptive_avg_pool, l2_normalize

_HIGHEST = jax.lax.Precision.HIGHEST


def _f32(x: jax.Array) -> jax.Array:
    return jnp.asarray(x).astype(jnp.float32)


def _teacher(x: jax.Array) -> jax.Array:
    return jax.lax.stop_gradient(_f32(x))


def _check_stages(student: Sequence[jax.Array], teacher: Sequence[jax.Array]) -> None:
    if len(student) != len(teacher):
        raise ValueError(f"student has {len(student)} stages but teacher has {len(teacher)}")
    for index, (s, t) in enumerate(zip(student, teacher)):
        if jnp.ndim(s) != 4 or jnp.ndim(t) != 4:
            raise ValueError(f"stage {index} must be [N, H, W, C], got {jnp.shape(s)} and {jnp.shape(t)}")


def _finite_or_zero(x: jax.Array) -> jax.Array:
    """The original's `removenan`: non-finite entries (NaN and +-inf) become 0, gradient too."""
    return jnp.where(jnp.isfinite(x), x, 0.0)


def pool_to_common_size(student: jax.Array, teacher: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The original's spatial matching (AT, NST, VID): the side with the larger height is
    adaptive-average-pooled to the other's height, to a SQUARE `h x h` map (the original uses
    the height for both sides, assuming square maps).

    Args:
      student: `[N, Hs, Ws, Cs]`.
      teacher: `[N, Ht, Wt, Ct]`.
    Returns:
      `(student, teacher)` float32, the larger one pooled; the other unchanged.
    """
    student_height, teacher_height = student.shape[1], teacher.shape[1]
    if student_height > teacher_height:
        return adaptive_avg_pool(student, teacher_height), _f32(teacher)
    if student_height < teacher_height:
        return _f32(student), adaptive_avg_pool(teacher, student_height)
    return _f32(student), _f32(teacher)


def fitnet_loss(regressed_student_hint: jax.Array, teacher_hint: jax.Array) -> jax.Array:
    """FitNets: mean squared error between the regressed student hint and the teacher's.

    Args:
      regressed_student_hint: `[N, H, W, C]`, the student's hint layer after the ConvReg regressor.
      teacher_hint: `[N, H, W, C]`, the teacher's hint layer.
    Returns:
      scalar float32.
    """
    if jnp.shape(regressed_student_hint) != jnp.shape(teacher_hint):
        raise ValueError(
            f"regressed student hint {jnp.shape(regressed_student_hint)} and teacher hint "
            f"{jnp.shape(teacher_hint)} must have the same shape"
        )
    return jnp.mean(jnp.square(_f32(regressed_student_hint) - _teacher(teacher_hint)))


def _attention_map(features: jax.Array, p: float) -> jax.Array:
    """`[N, H, W, C]` -> `[N, H*W]`: channel mean of `x**p`, l2-normalised over positions."""
    attention = jnp.mean(jnp.power(features, p), axis=-1)
    return l2_normalize(attention.reshape(attention.shape[0], -1), axis=1)


def at_loss(student_feats: Sequence[jax.Array], teacher_feats: Sequence[jax.Array], p: float = 2) -> jax.Array:
    """Attention transfer: per stage, the mean squared difference of the attention maps
    (channel mean of `x**p`, flattened over positions and `F.normalize`d), summed over stages.

    Mismatched spatial sizes are matched by `pool_to_common_size` before the maps are taken. The
    original's `.pow(p)` of a negative feature with a fractional p is NaN; so is this.

    Args:
      student_feats, teacher_feats: sequences of `[N, H, W, C]` stage features, pairwise with the
        same batch (channels may differ).
      p: the power (the original's AT.P, 2 by default).
    Returns:
      scalar float32.
    """
    _check_stages(student_feats, teacher_feats)
    total = jnp.zeros((), jnp.float32)
    for student, teacher in zip(student_feats, teacher_feats):
        student, teacher = pool_to_common_size(student, _teacher(teacher))
        total = total + jnp.mean(jnp.square(_attention_map(student, p) - _attention_map(teacher, p)))
    return total


def _mean_polynomial_kernel(a: jax.Array, b: jax.Array) -> jax.Array:
    """Mean over `i, j` and the batch of `<a_i, b_j>**2`; `a`, `b`: `[N, C, P]`."""
    return jnp.mean(jnp.square(jnp.einsum("nip,njp->nij", a, b, precision=_HIGHEST)))


def nst_loss(student_feats: Sequence[jax.Array], teacher_feats: Sequence[jax.Array]) -> jax.Array:
    """Neuron selectivity transfer: per stage, the squared MMD with the polynomial kernel
    `k(x, y) = <x, y>**2` between the channels' spatial maps (each `F.normalize`d over its
    positions), summed over stages.

    Per stage: `mean k(t, t) + mean k(s, s) - 2 mean k(s, t)`, the teacher-only term detached,
    after `pool_to_common_size`.

    Args:
      student_feats, teacher_feats: sequences of `[N, H, W, C]` stage features (channels may
        differ).
    Returns:
      scalar float32.
    """
    _check_stages(student_feats, teacher_feats)
    total = jnp.zeros((), jnp.float32)
    for student, teacher in zip(student_feats, teacher_feats):
        student, teacher = pool_to_common_size(student, _teacher(teacher))
        # [N, H, W, C] -> [N, C, H*W]: one map per channel.
        student = l2_normalize(student.reshape(student.shape[0], -1, student.shape[-1]).swapaxes(1, 2), axis=2)
        teacher = l2_normalize(teacher.reshape(teacher.shape[0], -1, teacher.shape[-1]).swapaxes(1, 2), axis=2)
        total = total + (
            _mean_polynomial_kernel(teacher, teacher)
            + _mean_polynomial_kernel(student, student)
            - 2.0 * _mean_polynomial_kernel(student, teacher)
        )
    return total


def _pkt_unit_rows(x: jax.Array, eps: float) -> jax.Array:
    """`x / (||x|| + eps)` per row, NaN entries set to 0 (as the original does in place).

    The norm is `sqrt(sum(x**2))` without a clamp: an all-zero row has a NaN gradient, as in
    PyTorch.
    """
    x = x / (jnp.sqrt(jnp.sum(jnp.square(x), axis=1, keepdims=True)) + eps)
    return jnp.where(jnp.isnan(x), 0.0, x)


def _similarity_distribution(unit_rows: jax.Array) -> jax.Array:
    """Cosine similarities mapped to [0, 1] and normalised to sum 1 per row."""
    similarity = (jnp.matmul(unit_rows, unit_rows.T, precision=_HIGHEST) + 1.0) / 2.0
    return similarity / jnp.sum(similarity, axis=1, keepdims=True)


def pkt_loss(student_embedding: jax.Array, teacher_embedding: jax.Array, eps: float = 1e-7) -> jax.Array:
    """Probabilistic knowledge transfer: KL divergence between the teacher's and the student's
    conditional probability distributions of cosine similarities in the batch.

    As the original: `eps` is added to the norm (not a clamp) and inside the log ratio
    `log((t + eps) / (s + eps))`; the loss is the mean over all `N*N` entries (not a per-row
    sum), NaN after normalisation is zeroed.

    Args:
      student_embedding, teacher_embedding: `[N, C]` (pooled features; widths may differ).
    Returns:
      scalar float32.
    """
    if jnp.ndim(student_embedding) != 2 or jnp.ndim(teacher_embedding) != 2:
        raise ValueError(
            f"embeddings must be [N, C], got {jnp.shape(student_embedding)} and {jnp.shape(teacher_embedding)}"
        )
    student = _similarity_distribution(_pkt_unit_rows(_f32(student_embedding), eps))
    teacher = _similarity_distribution(_pkt_unit_rows(_teacher(teacher_embedding), eps))
    return jnp.mean(teacher * jnp.log((teacher + eps) / (student + eps)))


def _scaled_right_singular_vectors(features: jax.Array, count: int) -> tuple[jax.Array, jax.Array]:
    """The first `count` right singular vectors and singular values of each example, as the
    original's `svd(feat, count)`.

    Each example is the `[C*H, W]` matrix of the NCHW tensor viewed as `[N, C*H, W]` (so
    the channels are moved before reshaping). Non-finite entries become 0; the singular
    values and each singular vector are then `F.normalize`d.

    Returns:
      `(v, s)`: `[N, W, count]` and `[N, count]` float32.
    """
    num, height, width, channels = features.shape
    matrices = jnp.transpose(_f32(features), (0, 3, 1, 2)).reshape(num, channels * height, width)
    singular_values, vh = linalg.singular_values_and_right_vectors(matrices)
    right_vectors = _finite_or_zero(jnp.swapaxes(vh, -1, -2))
    singular_values = _finite_or_zero(singular_values)
    return l2_normalize(right_vectors[:, :, :count], axis=1), l2_normalize(singular_values[:, :count], axis=1)


def _align_to_teacher(student_vectors: jax.Array, teacher_vectors: jax.Array) -> jax.Array:
    """The original's `align_rsv`: for each teacher vector, the student vector of largest
    absolute cosine with it, its sign flipped to make that cosine positive.

    Args:
      student_vectors: `[N, W, Ks]`; teacher_vectors: `[N, W, Kt]`.
    Returns:
      `[N, W, Kt]`. Ties in the absolute cosine sum the tied vectors, as the original.
    """
    cosine = jnp.einsum("nwa,nwb->nab", student_vectors, teacher_vectors, precision=_HIGHEST)
    largest = jnp.max(jnp.abs(cosine), axis=1, keepdims=True)
    # A selection, not a function of the student: no gradient (sign's is zero in PyTorch too).
    selection = jax.lax.stop_gradient(jnp.where(jnp.abs(cosine) == largest, jnp.sign(cosine), 0.0))
    return jnp.einsum("nwa,nab->nwb", student_vectors, selection, precision=_HIGHEST)


def kdsvd_loss(student_feats: Sequence[jax.Array], teacher_feats: Sequence[jax.Array], k: int = 1) -> jax.Array:
    """KD-SVD (Lee et al. 2018): compares, between consecutive stages, RBF kernels of the
    singular-value-scaled right singular vectors of student and teacher.

    Per stage (original's quirks): features viewed NCHW as `[N, C*H, W]` matrices; the
    teacher's first `k` and the student's first `k + 3` right singular vectors (each
    `F.normalize`d, non-finite entries zeroed); each teacher vector gets the student vector of
    largest |cosine|, sign-aligned; BOTH are scaled by the teacher's normalised singular values.
    For each stage after the first, `sum (rbf_s - rbf_t)**2` over `[N, W_i, W_{i-1}, k]` with
    `rbf = exp(-(v_i[a] - v_{i-1}[b])**2 / 8)`, non-finite terms zeroed; each divided by `N`,
    then summed.

    Singular vectors are defined up to sign; the student's sign does not matter (aligned), the
    teacher's does. This uses `jnp.linalg.svd`'s signs; PyTorch's come from its LAPACK (MKL on
    CPU, cuSOLVER/MAGMA on GPU), which agree on most but not all inputs: the original's loss
    itself depends on the backend it ran on.

    Args:
      student_feats, teacher_feats: sequences of `[N, H, W, C]` stage features, pairwise with
        the same width W (the SVD's vector length).
      k: teacher singular vectors per stage.
    Returns:
      scalar float32.
    """
    _check_stages(student_feats, teacher_feats)
    for index, (student, teacher) in enumerate(zip(student_feats, teacher_feats)):
        if student.shape[2] != teacher.shape[2]:
            raise ValueError(f"stage {index}: student width {student.shape[2]} differs from the teacher's {teacher.shape[2]}")
    total = jnp.zeros((), jnp.float32)
    previous = None
    for student, teacher in zip(student_feats, teacher_feats):
        teacher_vectors, teacher_values = _scaled_right_singular_vectors(_teacher(teacher), k)
        student_vectors, _ = _scaled_right_singular_vectors(student, k + 3)
        student_vectors = _align_to_teacher(student_vectors, teacher_vectors)
        scale = teacher_values[:, None, :]
        student_vectors, teacher_vectors = student_vectors * scale, teacher_vectors * scale
        if previous is not None:
            previous_student, previous_teacher = previous
            student_rbf = jnp.exp(-jnp.square(student_vectors[:, :, None, :] - previous_student[:, None, :, :]) / 8.0)
            teacher_rbf = jnp.exp(-jnp.square(teacher_vectors[:, :, None, :] - previous_teacher[:, None, :, :]) / 8.0)
            total = total + jnp.sum(_finite_or_zero(jnp.square(student_rbf - teacher_rbf)))
        previous = (student_vectors, teacher_vectors)
    return total / student_feats[0].shape[0]


def _pairwise_distances(embedding: jax.Array, squared: bool, eps: float) -> jax.Array:
    """`[N, N]` Euclidean distances (squared if asked) via `|a|^2 + |b|^2 - 2ab`, clamped
    below at `eps` before the root, diagonal set to 0 (gradient too)."""
    squared_norms = jnp.sum(jnp.square(embedding), axis=1)
    products = jnp.matmul(embedding, embedding.T, precision=_HIGHEST)
    distances = squared_norms[:, None] + squared_norms[None, :] - 2.0 * products
    # torch.clamp(min=eps) passes the gradient where the input is >= eps.
    distances = jnp.where(distances >= eps, distances, eps)
    if not squared:
        distances = jnp.sqrt(distances)
    return jnp.where(jnp.eye(embedding.shape[0], dtype=bool), 0.0, distances)


def _normalized_by_mean_positive(distances: jax.Array) -> jax.Array:
    """Distances divided by the mean of the positive ones (`d[d > 0].mean()`)."""
    positive = distances > 0
    return distances / (jnp.sum(jnp.where(positive, distances, 0.0)) / jnp.sum(positive))


def _angles(embedding: jax.Array) -> jax.Array:
    """`[N**3]`: `<unit(e_j - e_i), unit(e_k - e_i)>` for all `i, j, k`, flattened in that order.

    The `i == j` difference is the zero vector; `l2_normalize` keeps its gradient finite (0).
    """
    differences = embedding[None, :, :] - embedding[:, None, :]  # [i, j] = e_j - e_i
    unit = l2_normalize(differences, axis=2)
    return jnp.einsum("ijc,ikc->ijk", unit, unit, precision=_HIGHEST).reshape(-1)


def _smooth_l1(prediction: jax.Array, target: jax.Array) -> jax.Array:
    """`F.smooth_l1_loss` with beta 1 and mean reduction."""
    difference = prediction - target
    magnitude = jnp.abs(difference)
    return jnp.mean(jnp.where(magnitude < 1.0, 0.5 * jnp.square(difference), magnitude - 0.5))


def rkd_loss(
    student_embedding: jax.Array,
    teacher_embedding: jax.Array,
    *,
    squared: bool = False,
    eps: float = 1e-12,
    distance_weight: float = 25.0,
    angle_weight: float = 50.0,
) -> jax.Array:
    """Relational KD: `distance_weight * smooth_l1(student, teacher distances) + angle_weight *
    smooth_l1(student, teacher angles)`.

    Distances: pairwise (clamped at `eps`, diagonal 0), each side divided by the mean of its
    POSITIVE entries (the zero diagonal excluded). Angles: cosines of all triplets' difference
    vectors, zero vectors normalised to 0 by `F.normalize`'s clamp.

    Args:
      student_embedding, teacher_embedding: `[N, ...]` (flattened to `[N, -1]`; the original
        uses pooled features `[N, C]`, where the order does not matter).
      squared: compare squared distances.
      eps: lower clamp of the squared distances.
    Returns:
      scalar float32.
    """
    student = _f32(student_embedding).reshape(student_embedding.shape[0], -1)
    teacher = _teacher(teacher_embedding).reshape(teacher_embedding.shape[0], -1)
    if student.shape[0] != teacher.shape[0]:
        raise ValueError(f"student and teacher batch sizes differ: {student.shape[0]} vs {teacher.shape[0]}")
    distance = _smooth_l1(
        _normalized_by_mean_positive(_pairwise_distances(student, squared, eps)),
        _normalized_by_mean_positive(_pairwise_distances(teacher, squared, eps)),
    )
    angle = _smooth_l1(_angles(student), _angles(teacher))
    return distance_weight * distance + angle_weight * angle


def sp_loss(student_feats: Sequence[jax.Array], teacher_feats: Sequence[jax.Array]) -> jax.Array:
    """Similarity-preserving KD: per stage, the squared Frobenius distance between the row-
    `F.normalize`d batch Gram matrices of the flattened features, over `N**2`; summed over
    stages (the original returns a shape-[1] tensor; this a scalar).

    The Gram matrix does not depend on the order in which a sample's features are flattened,
    so NHWC is flattened as is.

    Args:
      student_feats, teacher_feats: sequences of `[N, ...]` features (the original passes the
        last stage only; sizes may differ between student and teacher).
    Returns:
      scalar float32.
    """
    if len(student_feats) != len(teacher_feats):
        raise ValueError(f"student has {len(student_feats)} stages but teacher has {len(teacher_feats)}")

    def normalized_gram(features: jax.Array) -> jax.Array:
        flat = features.reshape(features.shape[0], -1)
        return l2_normalize(jnp.matmul(flat, flat.T, precision=_HIGHEST), axis=1)

    total = jnp.zeros((), jnp.float32)
    for student, teacher in zip(student_feats, teacher_feats):
        batch = student.shape[0]
        difference = normalized_gram(_teacher(teacher)) - normalized_gram(_f32(student))
        total = total + jnp.sum(jnp.square(difference)) / (batch * batch)
    return total


def vid_initial_log_scale(num_channels: int, init_pred_var: float = 5.0, eps: float = 1e-5) -> jax.Array:
    """VID's per-channel log scale: `log(exp(init_pred_var - eps) - 1)` (computed in float64,
    stored float32), so that `softplus(log_scale) + eps == init_pred_var`.

    In the original it stays at this value for the whole training: the log scales are kept in a
    plain Python list, so they are neither registered with the module nor given to the optimiser
    (they are not moved by `.cuda()` either; `.to(pred_mean)` moves them at use). Keep it a
    constant, not a trainable parameter; `vid_loss` stops its gradient.

    Returns:
      `[num_channels]` float32.
    """
    value = np.log(np.exp(np.float64(init_pred_var) - np.float64(eps)) - 1.0)
    return jnp.full((num_channels,), value, jnp.float32)


def vid_loss(pred_mean: jax.Array, teacher_feat: jax.Array, log_scale: jax.Array, eps: float = 1e-5) -> jax.Array:
    """Variational information distillation: the Gaussian negative log-likelihood (without the
    `log(2 pi)` constant) of the teacher features under mean `pred_mean` and per-channel
    variance `log(1 + exp(log_scale)) + eps`, averaged over all entries.

    The caller pools student and teacher features with `pool_to_common_size` and applies the
    regressor (three 1x1 convolutions) to the pooled student features to get `pred_mean`.

    Args:
      pred_mean: `[N, H, W, C]`, the regressor's output.
      teacher_feat: `[N, H, W, C]`, the (pooled) teacher stage features.
      log_scale: `[C]`, see `vid_initial_log_scale` (constant: its gradient is stopped).
      eps: added to the variance.
    Returns:
      scalar float32.
    """
    if jnp.shape(pred_mean) != jnp.shape(teacher_feat):
        raise ValueError(f"pred_mean {jnp.shape(pred_mean)} and teacher_feat {jnp.shape(teacher_feat)} must match")
    if jnp.shape(log_scale) != (jnp.shape(pred_mean)[-1],):
        raise ValueError(f"log_scale must have shape [C] = [{jnp.shape(pred_mean)[-1]}], got {jnp.shape(log_scale)}")
    log_scale = jax.lax.stop_gradient(_f32(log_scale))
    variance = jnp.log(1.0 + jnp.exp(log_scale)) + eps  # literal, not softplus: same overflow
    squared_error = jnp.square(_f32(pred_mean) - _teacher(teacher_feat))
    return jnp.mean(0.5 * (squared_error / variance + jnp.log(variance)))


def ofd_margins(scale: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """OFD's margin of each channel of a teacher BatchNorm before a ReLU: the expected value of
    its pre-activation where negative, the BatchNorm's output taken as Gaussian with mean `bias`
    and standard deviation `|scale|`: `m - s * pdf(m/s) / cdf(-m/s)`, or `-3 s` where
    `cdf(-m/s) <= 0.001`.

    Computed on the host in float64 as the original does (`scipy.stats.norm`), then float32.

    Args:
      scale: `[K]`, the BatchNorm's weight.
      bias: `[K]`, its bias.
    Returns:
      `[K]` float32.
    """
    from scipy.stats import norm  # pylint: disable=import-outside-toplevel  # scipy comes with jax

    std, mean = np.abs(np.asarray(scale, np.float64)), np.asarray(bias, np.float64)
    if np.any(std == 0):
        raise ValueError("a BatchNorm weight is 0: OFD's margin divides by it (the original fails too)")
    tail = norm.cdf(-mean / std)
    with np.errstate(divide="ignore", invalid="ignore"):  # the -3 s branch where tail is ~0
        expected = -std * np.exp(-((mean / std) ** 2) / 2) / np.sqrt(2 * np.pi) / tail + mean
    return np.where(tail > 0.001, expected, -3 * std).astype(np.float32)


def ofd_loss(student_feats: Sequence[jax.Array], teacher_feats: Sequence[jax.Array],
             margins: Sequence[jax.Array]) -> jax.Array:
    """OFD's partial L2 distance, summed over stages, stage i of n weighted `1 / 2**(n - 1 - i)`.

    Per entry, with teacher value t (the teacher's map adaptive-average-pooled to the student's
    size) and the channel's margin m: `(s - m)^2` where `s > m >= t`, `(s - t)^2` where
    `s > t > m` and `t <= 0`, `(s - t)^2` where `t > 0`, else 0; averaged over the batch and
    summed over positions and channels.

    Args:
      student_feats: `[N, h_i, w_i, K_i]` per stage, the connectors' outputs.
      teacher_feats: `[N, H_i, W_i, K_i]`, the teacher's `preact_feats` (before their ReLU).
      margins: `[K_i]` per stage (`ofd_margins`).
    Returns:
      scalar float32.
    """
    _check_stages(student_feats, teacher_feats)
    total = jnp.float32(0.0)
    count = len(student_feats)
    for index, (source, target, margin) in enumerate(zip(student_feats, teacher_feats, margins)):
        source = _f32(source)
        if source.shape[1] != source.shape[2]:
            raise ValueError(f"stage {index}: OFD pools the teacher's map to the student's square size, "
                             f"got {source.shape[1]}x{source.shape[2]}")
        target = _teacher(adaptive_avg_pool(target, source.shape[1]))
        margin = jax.lax.stop_gradient(_f32(margin))
        loss = (jnp.square(source - margin) * ((source > margin) & (target <= margin))
                + jnp.square(source - target) * ((source > target) & (target > margin) & (target <= 0))
                + jnp.square(source - target) * (target > 0))
        total = total + jnp.sum(jnp.mean(jnp.abs(loss), axis=0)) / 2 ** (count - index - 1)
    return total


def crd_scores(memory: jax.Array, contrast_index: jax.Array, embedding: jax.Array, temperature: float) -> jax.Array:
    """CRD's unnormalised scores: `exp(<memory[j], embedding> / temperature)` for each example's
    contrastive rows j (its positive first, then its negatives); the memory gets no gradient.

    Args:
      memory: `[M, D]`, a memory bank (the other network's embeddings).
      contrast_index: `[B, 1 + K]` int rows of `memory`.
      embedding: `[B, D]`, this network's l2-normalised embeddings.
      temperature: T.
    Returns:
      `[B, 1 + K]` float32.
    """
    rows = jax.lax.stop_gradient(_f32(memory))[contrast_index]
    logits = jnp.einsum("bkd,bd->bk", rows, _f32(embedding), precision=_HIGHEST)
    return jnp.exp(logits / jnp.float32(temperature))


def crd_normalizer(normalizer: jax.Array, scores: jax.Array, num_data: int) -> jax.Array:
    """CRD's partition constant Z: `normalizer` once set (>= 0), else, on the first step, the
    mean score times the bank's size `num_data`, as the original's `ContrastMemory` sets it. No
    gradient flows through it (the original takes it with `.item()`)."""
    first = jnp.mean(jax.lax.stop_gradient(scores)) * jnp.float32(num_data)
    return jnp.where(normalizer < 0, first, normalizer)


def crd_nce_loss(probabilities: jax.Array, num_data: int) -> jax.Array:
    """CRD's NCE loss (the original's `ContrastLoss`) of `[B, 1 + K]` normalised scores, the
    positive first: `-(sum log D1 + sum log D0) / B` with noise probability `K / num_data`,
    `D1 = P / (P + K / num_data + 1e-7)` of the positives and `D0 = (K / num_data) / (P + K /
    num_data + 1e-7)` of the negatives."""
    batch, negatives = probabilities.shape[0], probabilities.shape[1] - 1
    noise = negatives * (1 / float(num_data))  # the original's Python-float constants
    positive, negative = probabilities[:, 0], probabilities[:, 1:]
    log_d1 = jnp.log(positive / (positive + np.float32(noise + 1e-7)))
    log_d0 = jnp.log(np.float32(noise) / (negative + np.float32(noise + 1e-7)))
    return -(jnp.sum(log_d1) + jnp.sum(log_d0)) / batch


def crd_memory_update(memory: jax.Array, index: jax.Array, embedding: jax.Array, momentum: float) -> jax.Array:
    """The bank after a step: rows `index` become `momentum * row + (1 - momentum) * embedding`,
    l2-normalised (the original's `ContrastMemory` update; no gradient).

    Args:
      memory: `[M, D]`.
      index: `[B]` distinct rows, the batch's examples.
      embedding: `[B, D]`.
    Returns:
      `[M, D]` float32.
    """
    memory = _f32(memory)
    rows = memory[index] * np.float32(momentum) + jax.lax.stop_gradient(_f32(embedding)) * np.float32(1 - momentum)
    rows = rows / jnp.sqrt(jnp.sum(jnp.square(rows), axis=1, keepdims=True))  # unclamped, as the original
    return memory.at[index].set(rows)
