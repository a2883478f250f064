"""Tests of catkd_jax.feature_losses against the original PyTorch functions' values and gradients.

The vectors come from `benchmarks/reference_methods.py` (the original mdistiller functions, float32
on the CPU). Tolerances: rtol 1e-4 for float32 results whose summation order differs. A gradient
entry is a sum of terms as large as the array's largest entries, so its rounding error scales with
those, not with the entry: small entries (RKD's, 1000x below the largest, differ by 4e-4 relative)
also pass within `GRADIENT_ATOL * max |reference|`, 1e-5 of the scale, still far below what a wrong
formula changes (O(1) relative). KDSVD's gradients pass through the SVD's backward, which
amplifies rounding by 1 / (gaps between singular values): against float64 (the same inputs and
formula, `jax_enable_x64`), PyTorch's float32 gradients err by up to 1.4e-5 and ours by 3.1e-5
of the largest entry, so KDSVD gets `KDSVD_GRADIENT_ATOL`, 1e-4 of the scale. Losses are
compared with rtol only.
"""

from __future__ import annotations

import math
import pathlib
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from catkd_jax import feature_losses

REFERENCES = pathlib.Path(__file__).parent / "data" / "feature_loss_references.npz"
RTOL, GRADIENT_ATOL, KDSVD_GRADIENT_ATOL = 1e-4, 1e-5, 1e-4


def _load() -> dict[str, np.ndarray]:
    with np.load(REFERENCES) as data:
        return {key: data[key] for key in data.files}


_DATA = _load()


def _inputs(case: str, side: str) -> list[np.ndarray]:
    count = sum(1 for key in _DATA if key.startswith(f"{case}/{side}/"))
    return [_DATA[f"{case}/{side}/{i}"] for i in range(count)]


def _setting(case: str, name: str):
    return _DATA[f"{case}/{name}"].item()


def _vid(case: str) -> Callable:
    log_scale, eps = _DATA[f"{case}/log_scale"], _setting(case, "eps")

    def loss(student, teacher):
        pooled_student, pooled_teacher = feature_losses.pool_to_common_size(student[0], teacher[0])
        return feature_losses.vid_loss(pooled_student, pooled_teacher, log_scale, eps)

    return loss


# case -> loss of (student list, teacher list), as the reference script called the original.
LOSSES: dict[str, Callable[[str], Callable]] = {
    "fitnet/hint": lambda case: lambda s, t: feature_losses.fitnet_loss(s[0], t[0]),
    "at/p2": lambda case: lambda s, t: feature_losses.at_loss(s, t, _setting(case, "p")),
    "at/p1": lambda case: lambda s, t: feature_losses.at_loss(s, t, _setting(case, "p")),
    "nst/stages": lambda case: feature_losses.nst_loss,
    "pkt/pooled": lambda case: lambda s, t: feature_losses.pkt_loss(s[0], t[0]),
    "pkt/degenerate_rows": lambda case: lambda s, t: feature_losses.pkt_loss(s[0], t[0]),
    "kdsvd/k1": lambda case: lambda s, t: feature_losses.kdsvd_loss(s, t, _setting(case, "k")),
    "kdsvd/k2": lambda case: lambda s, t: feature_losses.kdsvd_loss(s, t, _setting(case, "k")),
    "rkd/squared_False": lambda case: lambda s, t: feature_losses.rkd_loss(s[0], t[0], squared=_setting(case, "squared")),
    "rkd/squared_True": lambda case: lambda s, t: feature_losses.rkd_loss(s[0], t[0], squared=_setting(case, "squared")),
    "sp/last_stage": lambda case: feature_losses.sp_loss,
    "vid/teacher_pooled": _vid,
    "vid/student_pooled": _vid,
}


def test_every_reference_case_is_checked():
    assert {key.rsplit("/loss", 1)[0] for key in _DATA if key.endswith("/loss")} == set(LOSSES)


@pytest.mark.parametrize("case", sorted(LOSSES))
def test_loss_and_student_gradients_match_the_original(case):
    student, teacher = _inputs(case, "student"), _inputs(case, "teacher")
    loss_fn = LOSSES[case](case)
    loss, (gradients, teacher_gradients) = jax.jit(jax.value_and_grad(loss_fn, argnums=(0, 1)))(student, teacher)
    np.testing.assert_allclose(loss, _DATA[f"{case}/loss"], rtol=RTOL)
    atol = KDSVD_GRADIENT_ATOL if case.startswith("kdsvd/") else GRADIENT_ATOL
    for gradient, expected in zip(gradients, _inputs(case, "grad"), strict=True):
        assert np.all(np.isfinite(gradient))  # e.g. RKD's normalised zero vectors
        np.testing.assert_allclose(gradient, expected, rtol=RTOL, atol=atol * np.max(np.abs(expected)))
    # The teacher is a constant, as under the original's no_grad.
    assert all(not np.any(g) for g in teacher_gradients)


@pytest.mark.parametrize("case", ["kdsvd/k1", "kdsvd/k2"])
def test_kdsvd_teacher_singular_vectors_have_torchs_signs(case):
    """KDSVD's loss depends on the signs of the teacher's singular vectors, which LAPACK chooses
    (PyTorch: MKL's gesdd; JAX on the CPU: its bundled LAPACK's). Where this fails, the loss
    test fails for that reason, not for a wrong formula."""
    k = _setting(case, "k")
    # pylint: disable-next=protected-access
    vectors = jax.jit(lambda teacher: [feature_losses._scaled_right_singular_vectors(t, k)[0] for t in teacher])
    for got, expected in zip(vectors(_inputs(case, "teacher")), _inputs(case, "teacher_vectors"), strict=True):
        np.testing.assert_allclose(got, expected, rtol=RTOL, atol=GRADIENT_ATOL)


@pytest.mark.parametrize("case", ["vid/teacher_pooled", "vid/student_pooled"])
def test_vid_initial_log_scale_is_the_originals(case):
    expected = _DATA[f"{case}/log_scale"]
    got = feature_losses.vid_initial_log_scale(expected.shape[0], _setting(case, "init_pred_var"), _setting(case, "eps"))
    assert got.dtype == jnp.float32
    np.testing.assert_array_equal(got, expected)


def test_vid_log_scale_gets_no_gradient():
    pred = jnp.ones((1, 2, 2, 3))
    gradient = jax.jit(jax.grad(lambda scale: feature_losses.vid_loss(pred, 2 * pred, scale)))(jnp.zeros(3))
    assert not np.any(gradient)



def test_ofd_margins_are_the_originals_per_channel_arithmetic():
    """The original's loop over channels in Python floats (scipy's normal CDF), both branches: the
    Gaussian's expected negative part, and -3 std where the negative tail is below 0.001."""
    from scipy.stats import norm

    scale = np.asarray([1.0, -0.5, 2.0, 0.3, 1e-3, 0.7], np.float32)
    bias = np.asarray([0.0, 0.2, -1.5, 1.5, 0.1, 2.1], np.float32)  # bias/|scale| 0, .4, -.75, 5, 100, 3
    expected = []
    for s, m in zip(scale, bias):
        s, m = abs(float(s)), float(m)
        tail = norm.cdf(-m / s)
        expected.append(-s * math.exp(-((m / s) ** 2) / 2) / math.sqrt(2 * math.pi) / tail + m if tail > 0.001
                        else -3 * s)
    got = feature_losses.ofd_margins(scale, bias)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, np.asarray(expected, np.float32))
    assert got[3] == np.float32(-3 * float(scale[3])) and got[4] == np.float32(-3 * float(scale[4]))  # -3 std


def test_ofd_connector_weights_are_normal_with_the_originals_std():
    """`normal_(0, sqrt(2 / (k * k * out)))`: the sample std within 6 standard errors, normal-shaped."""
    from catkd_jax.methods.modules import OFDConnector

    for kernel_size, features in ((1, 256), (3, 64)):
        variables = OFDConnector(features, kernel_size).init(jax.random.key(0), jnp.zeros((1, 4, 4, 128)))
        kernel = np.asarray(variables["params"]["0"]["kernel"], np.float64)
        assert kernel.shape == (kernel_size, kernel_size, 128, features)
        std = math.sqrt(2.0 / (kernel_size * kernel_size * features))
        assert abs(kernel.std() / std - 1) < 6 / math.sqrt(2 * kernel.size)
        assert abs(kernel.mean()) < 6 * std / math.sqrt(kernel.size)
        assert np.abs(kernel).max() / std > 3.5  # normal, not uniform (max |x| / std = sqrt(3))


def test_crd_normalizer_is_set_by_the_first_step_and_then_kept():
    """Z (the original's `params[2:4]`): -1 until the first step sets it to the mean score times the
    bank's size; from then on the value set, whatever the scores."""
    scores = jnp.asarray([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    first = feature_losses.crd_normalizer(jnp.float32(-1), scores, 10)
    assert first == pytest.approx(35.0)
    assert feature_losses.crd_normalizer(first, 2 * scores, 10) == first
