"""A batched SVD that cannot deadlock XLA's CPU runtime, with its derivative.

jaxlib 0.10's CPU LAPACK kernels split a batch of matrices into chunks, schedule the chunks on
XLA's intra-op thread pool and block a pool thread until they finish. When as many such calls
run at once as the pool has threads (two on a 2-core machine: a student's and a teacher's SVD,
two vmapped or unrolled runs, two CPU devices), every thread waits for chunks that no thread is
left to run, and the step never returns (seen as an intermittent hang of KDSVD's sweep test;
`gdb`: both `tf_XLAEigen` threads in `lapack_sgesdd_ffi` -> `ParallelBatchMap` ->
`BlockingCounter::Wait`). A call on one matrix runs inline, so on a CPU this decomposes the
matrices one at a time, in a loop that stays a loop under `jax.vmap`; other backends keep the
batched call. The decompositions are LAPACK's, unchanged; the derivative is the standard one.
jax's later sources (its main branch of 2026-08; 0.11.0 still schedules) run the chunks inline in
open-source builds: with such a jaxlib, `jnp.linalg.svd` alone would do.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

_HIGHEST = jax.lax.Precision.HIGHEST


def _thin_svd(matrices: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    return jnp.linalg.svd(matrices, full_matrices=False)


_one_matrix_per_call = jax.custom_batching.sequential_vmap(_thin_svd)


def _thin_svd_one_at_a_time(matrices: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    decompose = _one_matrix_per_call
    for _ in range(matrices.ndim - 2):
        decompose = jax.vmap(decompose)
    return decompose(matrices)


def _decompose(matrices: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """`(u, s, vh)` of the thin SVD: one LAPACK call per matrix on a CPU, one batched call elsewhere."""
    return jax.lax.platform_dependent(matrices, cpu=_thin_svd_one_at_a_time, default=_thin_svd)


def _transpose(x: jax.Array) -> jax.Array:
    return jnp.swapaxes(x, -1, -2)


@jax.custom_jvp
def singular_values_and_right_vectors(matrices: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The thin SVD's singular values and right singular vectors of each matrix.

    Args:
      matrices: `[..., M, W]` float.
    Returns:
      `(s, vh)`: `[..., K]` singular values, descending, and `[..., K, W]` right singular vectors
      as rows (`jnp.linalg.svd`'s `vh`), `K = min(M, W)`; signs as LAPACK's `gesdd` chooses them.
    """
    _, singular_values, vh = _decompose(matrices)
    return singular_values, vh


@singular_values_and_right_vectors.defjvp
def _singular_values_and_right_vectors_jvp(primals, tangents):
    """With `A = U S V^T` and `dP = U^T dA V`: `ds = diag(dP)` and
    `dV = V (F o (S dP + dP^T S)) + (I - V V^T) dA^T U S^-1`, where `F[i, j] = 1 / (s_j^2 - s_i^2)`
    off the diagonal and 0 on it (the last term vanishes when `M >= W`). Repeated or zero
    singular values give non-finite entries, as in `jnp.linalg.svd`'s derivative."""
    (matrices,), (d_matrices,) = primals, tangents
    u, singular_values, vh = _decompose(matrices)
    v = _transpose(vh)
    projected = jnp.matmul(jnp.matmul(_transpose(u), d_matrices, precision=_HIGHEST), v, precision=_HIGHEST)
    d_singular_values = jnp.diagonal(projected, axis1=-2, axis2=-1)
    columns = singular_values[..., None, :]
    rows = _transpose(columns)
    eye = jnp.eye(singular_values.shape[-1], dtype=singular_values.dtype)
    inverse_gaps = 1.0 / ((columns + rows) * (columns - rows) + eye) - eye
    scaled = rows * projected
    d_v = jnp.matmul(v, inverse_gaps * (scaled + _transpose(scaled)), precision=_HIGHEST)
    rows_count, width = matrices.shape[-2:]
    if width > rows_count:
        back_projected = jnp.matmul(_transpose(d_matrices), u, precision=_HIGHEST)
        residual = back_projected - jnp.matmul(v, jnp.matmul(vh, back_projected, precision=_HIGHEST), precision=_HIGHEST)
        d_v = d_v + residual / columns
    return (singular_values, vh), (d_singular_values, _transpose(d_v))
