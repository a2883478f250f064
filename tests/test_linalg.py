"""`linalg.singular_values_and_right_vectors`: `jnp.linalg.svd`'s numbers and derivative, with one
LAPACK call per matrix on a CPU (jaxlib's batched CPU kernels can deadlock XLA's thread pool)."""

from __future__ import annotations

import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from catkd_jax import linalg

# A tall and a wide shape: the derivative has an extra term when the matrices are wider than tall.
SHAPES = {"tall": (3, 12, 5), "wide": (3, 4, 6)}


def _reference(matrices):
    _, singular_values, vh = jnp.linalg.svd(matrices, full_matrices=False)
    return singular_values, vh


def _objective(decompose):
    """A scalar that uses the singular values and, unevenly, each right singular vector."""
    def objective(matrices):
        singular_values, vh = decompose(matrices)
        weights = jnp.arange(1.0, vh.shape[-1] + 1.0)
        return jnp.sum(jnp.square(singular_values)) + jnp.sum(jnp.abs(vh[..., :2, :]) ** 3 * weights)
    return objective


def _matrices(shape):
    return jax.random.normal(jax.random.key(sum(shape)), shape)


@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_values_and_vectors_are_lapacks_as_jnp_linalg_svd_gives_them(shape):
    matrices = _matrices(shape)
    for ours, theirs in zip(jax.jit(linalg.singular_values_and_right_vectors)(matrices), jax.jit(_reference)(matrices)):
        np.testing.assert_array_equal(ours, theirs)


@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_derivative_is_jnp_linalg_svds(shape):
    matrices = _matrices(shape)
    ours = jax.jit(jax.grad(_objective(linalg.singular_values_and_right_vectors)))(matrices)
    theirs = jax.jit(jax.grad(_objective(_reference)))(matrices)
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6 * float(jnp.max(jnp.abs(theirs))))


def _gesdd_batch_sizes(function, *args) -> list[int]:
    """How many matrices each LAPACK SVD call of `function`'s compiled program decomposes."""
    compiled = jax.jit(function).lower(*args).compile().as_text()
    shapes = re.findall(r'custom_call_target="lapack_[sd]gesdd_ffi", operand_layout_constraints=\{f32\[([\d,]+)\]',
                        compiled)
    return [math.prod(int(size) for size in shape.split(",")[:-2]) for shape in shapes]


def test_each_lapack_call_decomposes_one_matrix_on_a_cpu_even_vmapped():
    """Two runs vmapped over a batch of 4: the batched kernel would get all 8 matrices at once."""
    runs = jnp.stack([_matrices((4, 12, 5))] * 2)
    gradient = jax.vmap(jax.grad(_objective(linalg.singular_values_and_right_vectors)))
    batch_sizes = _gesdd_batch_sizes(gradient, runs)
    assert batch_sizes and set(batch_sizes) == {1}, batch_sizes
    # What the check guards against: jnp.linalg.svd's one call on every matrix.
    assert _gesdd_batch_sizes(jax.vmap(jax.grad(_objective(_reference))), runs) == [8]
