"""Tests of catkd_jax.losses: reference parity, properties, transformations, errors."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from catkd_jax import losses
from conftest import SHARED, shared_path

CASES_FILE = "reference/cat_loss_cases.npz"


def _case_names() -> list[str]:
    path = SHARED / CASES_FILE
    if not path.exists():
        return ["<reference data absent>"]
    with np.load(path) as cases:
        return sorted({key.split("/")[0] for key in cases.files})


def _random_problem(seed: int = 0, n: int = 3, classes: int = 5):
    rng = np.random.default_rng(seed)
    return dict(
        student_features=jnp.asarray(rng.normal(size=(n, 4, 4, 6)), jnp.float32),
        student_kernel=jnp.asarray(rng.normal(size=(6, classes)), jnp.float32),
        teacher_features=jnp.asarray(rng.normal(size=(n, 8, 8, 7)), jnp.float32),
        teacher_kernel=jnp.asarray(rng.normal(size=(7, classes)), jnp.float32),
    )


@pytest.mark.parametrize("case", _case_names())
def test_cat_loss_matches_reference_cases(case):
    with np.load(shared_path(CASES_FILE)) as cases:
        resolution, normalize, binarize = (int(v) for v in cases[f"{case}/settings"])
        loss = losses.cat_loss(
            cases[f"{case}/student_features"],
            cases[f"{case}/student_kernel"],
            cases[f"{case}/teacher_features"],
            cases[f"{case}/teacher_kernel"],
            resolution=resolution,
            normalize=bool(normalize),
            binarize=bool(binarize),
        )
        np.testing.assert_allclose(float(loss), float(cases[f"{case}/loss"]), rtol=1e-5)


def test_class_activation_maps_pool_to_the_logits():
    rng = np.random.default_rng(1)
    features = rng.normal(size=(2, 3, 5, 4)).astype(np.float32)
    kernel = rng.normal(size=(4, 6)).astype(np.float32)
    cams = np.asarray(losses.class_activation_maps(features, kernel))
    for n, h, w, c in np.ndindex(*cams.shape):
        assert cams[n, h, w, c] == pytest.approx(float(features[n, h, w] @ kernel[:, c]), rel=1e-5)
    logits_without_bias = features.mean(axis=(1, 2)) @ kernel
    np.testing.assert_allclose(cams.mean(axis=(1, 2)), logits_without_bias, rtol=1e-5, atol=1e-6)


def test_adaptive_avg_pool_hand_computed_uneven_bins():
    # 3 -> 2: bins are rows {0, 1} and {1, 2} (PyTorch overlaps uneven bins).
    x = jnp.arange(9, dtype=jnp.float32).reshape(1, 3, 3, 1)
    pooled = np.asarray(losses.adaptive_avg_pool(x, 2))[0, :, :, 0]
    np.testing.assert_allclose(pooled, [[2.0, 3.0], [5.0, 6.0]])
    # 2 -> 4 upsamples by repetition.
    y = jnp.asarray([[1.0, 2.0], [3.0, 4.0]]).reshape(1, 2, 2, 1)
    up = np.asarray(losses.adaptive_avg_pool(y, 4))[0, :, :, 0]
    np.testing.assert_allclose(up, np.repeat(np.repeat([[1.0, 2.0], [3.0, 4.0]], 2, 0), 2, 1))


@pytest.mark.parametrize(
    "height, width, size", [(7, 7, 4), (7, 7, 2), (7, 7, 3), (2, 2, 4), (8, 8, 2), (5, 6, 3), (4, 4, 1)]
)
def test_adaptive_avg_pool_matches_torch(height, width, size):
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(2).normal(size=(2, height, width, 3)).astype(np.float32)
    expected = torch.nn.functional.adaptive_avg_pool2d(
        torch.from_numpy(x).permute(0, 3, 1, 2), (size, size)
    ).permute(0, 2, 3, 1)
    np.testing.assert_allclose(losses.adaptive_avg_pool(x, size), expected.numpy(), rtol=1e-6, atol=1e-6)


def test_normalize_makes_loss_invariant_to_positive_cam_scaling():
    problem = _random_problem()
    scaled = dict(problem, teacher_kernel=problem["teacher_kernel"].at[:, 2].multiply(7.5))
    normalized = losses.cat_loss(**problem, normalize=True)
    assert float(losses.cat_loss(**scaled, normalize=True)) == pytest.approx(float(normalized), rel=1e-5)
    # Without normalisation the same scaling changes the loss: the test above is not vacuous.
    assert float(losses.cat_loss(**scaled)) != pytest.approx(float(losses.cat_loss(**problem)), rel=1e-2)


@pytest.mark.parametrize("normalize", [False, True])
def test_identical_student_and_teacher_give_zero(normalize):
    problem = _random_problem()
    same = dict(
        student_features=problem["teacher_features"],
        student_kernel=problem["teacher_kernel"],
        teacher_features=problem["teacher_features"],
        teacher_kernel=problem["teacher_kernel"],
    )
    assert float(losses.cat_loss(**same, resolution=4, normalize=normalize)) == 0.0
    assert float(losses.cat_loss(**problem, normalize=normalize)) > 0.0


def test_binarized_cams_are_zero_one_at_the_mean_absolute_threshold():
    cams = jnp.asarray(np.random.default_rng(3).normal(size=(2, 4, 4, 3)), jnp.float32)
    binary = np.asarray(losses.binarize_cams(cams))
    assert set(np.unique(binary)) <= {0.0, 1.0}
    threshold = np.abs(np.asarray(cams)).mean(axis=(1, 2), keepdims=True)
    np.testing.assert_array_equal(binary, (np.asarray(cams) > threshold).astype(np.float32))
    assert 0 < binary.sum() < binary.size


@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize(
    "student_size, teacher_size, resolution",
    [(4, 8, 2), (5, 7, 3), (7, 6, 4), (2, 7, 4)],  # even bins, uneven overlapping bins, upsampling
)
def test_binarize_changes_the_loss_only_through_the_teacher(student_size, teacher_size, resolution, normalize):
    # The expectation is plain float64 numpy written out here, not catkd_jax.losses' helpers.
    rng = np.random.default_rng(6)
    n, classes = 3, 5
    student_features = rng.normal(size=(n, student_size, student_size, 6)).astype(np.float32)
    student_kernel = rng.normal(size=(6, classes)).astype(np.float32)
    teacher_features = rng.normal(size=(n, teacher_size, teacher_size, 7)).astype(np.float32)
    teacher_kernel = rng.normal(size=(7, classes)).astype(np.float32)

    def cams(features, kernel):  # [N, H, W, K] x [K, C] -> [N, H, W, C], no bias
        n_, h, w, k = features.shape
        flat = features.astype(np.float64).reshape(n_ * h * w, k) @ kernel.astype(np.float64)
        return flat.reshape(n_, h, w, kernel.shape[1])

    def binary(maps):  # 1 where a map exceeds its mean |value| over space
        threshold = np.abs(maps).sum(axis=(1, 2), keepdims=True) / (maps.shape[1] * maps.shape[2])
        return (maps > threshold).astype(np.float64)

    def pool(maps, r):  # torch adaptive_avg_pool2d: bin i spans floor(i*H/r) .. ceil((i+1)*H/r) - 1
        n_, h, w, c = maps.shape
        out = np.zeros((n_, r, r, c))
        for i in range(r):
            top, bottom = math.floor(i * h / r), math.ceil((i + 1) * h / r)
            for j in range(r):
                left, right = math.floor(j * w / r), math.ceil((j + 1) * w / r)
                total = np.zeros((n_, c))
                for y in range(top, bottom):
                    for x in range(left, right):
                        total += maps[:, y, x, :]
                out[:, i, j, :] = total / ((bottom - top) * (right - left))
        return out

    def unit(maps):  # F.normalize over the spatial positions of each [n, :, :, c] map
        norm = np.sqrt(np.square(maps).sum(axis=(1, 2), keepdims=True))
        return maps / np.maximum(norm, 1e-12)

    def expected_loss(student_maps, teacher_maps):
        student_maps, teacher_maps = pool(student_maps, resolution), pool(teacher_maps, resolution)
        if normalize:
            student_maps, teacher_maps = unit(student_maps), unit(teacher_maps)
        return float(np.mean(np.square(student_maps - teacher_maps)))

    student_cams = cams(student_features, student_kernel)
    teacher_cams = cams(teacher_features, teacher_kernel)
    expected = expected_loss(student_cams, binary(teacher_cams))
    loss = losses.cat_loss(
        student_features, student_kernel, teacher_features, teacher_kernel,
        resolution=resolution, normalize=normalize, binarize=True,
    )
    assert loss.dtype == jnp.float32
    np.testing.assert_allclose(float(loss), expected, rtol=1e-5)
    # The expectation tells the alternatives apart: without binarising, or binarising the
    # student too, the loss would be different.
    assert expected != pytest.approx(expected_loss(student_cams, teacher_cams), rel=1e-2)
    assert expected != pytest.approx(expected_loss(binary(student_cams), binary(teacher_cams)), rel=1e-2)


def test_all_true_class_mask_equals_no_mask():
    problem = _random_problem()
    mask = jnp.ones((3, 5), jnp.bool_)
    np.testing.assert_allclose(
        losses.cat_loss(**problem, class_mask=mask, normalize=True),
        losses.cat_loss(**problem, normalize=True),
        rtol=1e-6,
    )


def test_class_mask_averages_over_selected_cams_only():
    problem = _random_problem()
    mask = np.zeros((3, 5), bool)
    mask[:, [1, 3]] = True  # the same two classes for every example
    subset = dict(
        problem,
        student_kernel=problem["student_kernel"][:, [1, 3]],
        teacher_kernel=problem["teacher_kernel"][:, [1, 3]],
    )
    np.testing.assert_allclose(
        losses.cat_loss(**problem, class_mask=jnp.asarray(mask), resolution=2),
        losses.cat_loss(**subset, resolution=2),
        rtol=1e-6,
    )


def test_gradients_reach_the_student_only():
    problem = _random_problem()
    grads = jax.grad(lambda p: losses.cat_loss(**p, normalize=True), argnums=0)(problem)
    assert float(jnp.abs(grads["teacher_features"]).sum()) == 0.0
    assert float(jnp.abs(grads["teacher_kernel"]).sum()) == 0.0
    assert float(jnp.abs(grads["student_features"]).sum()) > 0.0
    assert float(jnp.abs(grads["student_kernel"]).sum()) > 0.0


def test_student_gradients_match_finite_differences():
    problem = _random_problem()

    def loss(features, kernel):
        return losses.cat_loss(
            features, kernel, problem["teacher_features"], problem["teacher_kernel"], normalize=True
        )

    check_grads(loss, (problem["student_features"], problem["student_kernel"]), order=1, modes=["rev"], eps=1e-2)


def test_jit_and_vmap_agree_with_eager():
    problems = [_random_problem(seed) for seed in range(3)]
    eager = [float(losses.cat_loss(**p, resolution=2, normalize=True)) for p in problems]
    jitted = jax.jit(lambda p: losses.cat_loss(**p, resolution=2, normalize=True))
    np.testing.assert_allclose([float(jitted(p)) for p in problems], eager, rtol=1e-6)
    stacked = jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *problems)
    vmapped = jax.vmap(lambda p: losses.cat_loss(**p, resolution=2, normalize=True))(stacked)
    np.testing.assert_allclose(vmapped, eager, rtol=1e-6)


def test_bfloat16_inputs_compute_in_float32():
    problem = _random_problem()
    as_bf16 = jax.tree_util.tree_map(lambda x: x.astype(jnp.bfloat16), problem)
    loss = losses.cat_loss(**as_bf16, normalize=True)
    assert loss.dtype == jnp.float32
    exact = losses.cat_loss(**jax.tree_util.tree_map(lambda x: x.astype(jnp.float32), as_bf16), normalize=True)
    np.testing.assert_allclose(loss, exact, rtol=1e-6)
    assert losses.class_activation_maps(as_bf16["student_features"], as_bf16["student_kernel"]).dtype == jnp.float32


@pytest.mark.parametrize("strategy", ["top", "bottom"])
@pytest.mark.parametrize("num", [1, 3, 10])
def test_select_cam_classes_exact_counts(strategy, num):
    logits = jnp.asarray(np.random.default_rng(4).normal(size=(6, 10)), jnp.float32)
    mask = np.asarray(losses.select_cam_classes(logits, num, strategy))
    assert mask.dtype == np.bool_ and mask.shape == (6, 10)
    np.testing.assert_array_equal(mask.sum(axis=1), num)
    order = np.argsort(-np.asarray(logits), axis=1)
    chosen = order[:, :num] if strategy == "top" else order[:, 10 - num :]
    for row, classes in enumerate(chosen):
        assert set(np.flatnonzero(mask[row])) == set(classes)


def test_kd_loss_hand_computed():
    # Teacher probabilities (3/4, 1/4), student (1/2, 1/2), T = 1.
    teacher = jnp.asarray([[math.log(3.0), 0.0]])
    student = jnp.zeros((1, 2))
    expected = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    assert float(losses.kd_loss(student, teacher, 1.0)) == pytest.approx(expected, rel=1e-6)
    # At T = 2 the logits are halved and the loss multiplied by 4.
    p = np.exp([math.log(3.0) / 2, 0.0]) / np.exp([math.log(3.0) / 2, 0.0]).sum()
    expected_t2 = 4 * float(np.sum(p * np.log(p / 0.5)))
    assert float(losses.kd_loss(student, teacher, 2.0)) == pytest.approx(expected_t2, rel=1e-6)


def test_dkd_loss_hand_computed():
    # Three classes, target 0, T = 1. Teacher probs (1/2, 1/4, 1/4); student uniform.
    teacher = jnp.log(jnp.asarray([[2.0, 1.0, 1.0]]))
    student = jnp.zeros((1, 3))
    labels = jnp.asarray([0])
    tckd = 0.5 * math.log(0.5 / (1 / 3)) + 0.5 * math.log(0.5 / (2 / 3))
    nckd = 0.0  # both non-target distributions are uniform over classes 1, 2
    assert float(losses.dkd_loss(student, teacher, labels, 1.0, 8.0, 1.0)) == pytest.approx(
        tckd + 8.0 * nckd, rel=1e-5
    )
    skewed_student = jnp.log(jnp.asarray([[1.0, 3.0, 1.0]]))
    nckd_skewed = 0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(0.5 / 0.25)
    p_gt = 0.2
    tckd_skewed = 0.5 * math.log(0.5 / p_gt) + 0.5 * math.log(0.5 / (1 - p_gt))
    assert float(losses.dkd_loss(skewed_student, teacher, labels, 2.0, 3.0, 1.0)) == pytest.approx(
        2.0 * tckd_skewed + 3.0 * nckd_skewed, rel=1e-4
    )


def test_kd_and_dkd_match_torch_reference_formulas():
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    rng = np.random.default_rng(5)
    s = rng.normal(size=(8, 10)).astype(np.float32) * 3
    t = rng.normal(size=(8, 10)).astype(np.float32) * 3
    y = rng.integers(0, 10, size=8)
    ts, tt, ty, T = torch.from_numpy(s), torch.from_numpy(t), torch.from_numpy(y), 4.0
    kd = (F.kl_div(F.log_softmax(ts / T, 1), F.softmax(tt / T, 1), reduction="none").sum(1).mean() * T**2).item()
    assert float(losses.kd_loss(s, t, T)) == pytest.approx(kd, rel=1e-5)

    gt = torch.zeros_like(ts).scatter_(1, ty[:, None], 1).bool()
    def binary(logits):
        p = F.softmax(logits / T, 1)
        return torch.stack([(p * gt).sum(1), (p * ~gt).sum(1)], 1)
    tckd = F.kl_div(torch.log(binary(ts)), binary(tt), reduction="sum") * T**2 / 8
    nckd = F.kl_div(
        F.log_softmax(ts / T - 1000.0 * gt, 1), F.softmax(tt / T - 1000.0 * gt, 1), reduction="sum"
    ) * T**2 / 8
    expected = (1.0 * tckd + 8.0 * nckd).item()
    assert float(losses.dkd_loss(s, t, y, 1.0, 8.0, T)) == pytest.approx(expected, rel=1e-5)


def test_cross_entropy_matches_definition():
    logits = jnp.asarray([[2.0, 0.0, -1.0], [0.0, 0.0, 0.0]])
    labels = jnp.asarray([0, 2])
    expected = np.mean([-np.log(np.exp(2) / (np.exp(2) + 1 + np.exp(-1))), np.log(3.0)])
    assert float(losses.cross_entropy(logits, labels)) == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(student_features=jnp.zeros((3, 4, 6))), "student_features must have rank 4"),
        (dict(teacher_features=jnp.zeros((2, 8, 8, 7))), "batch sizes differ"),
        (dict(teacher_kernel=jnp.zeros((7, 4))), "class counts differ"),
        (dict(student_kernel=jnp.zeros((5, 5))), "kernel has 5 rows but features have 6 channels"),
        (dict(resolution=0), "resolution must be an integer >= 1"),
        (dict(class_mask=jnp.ones((3, 4), bool)), "class_mask must have shape"),
    ],
)
def test_cat_loss_rejects_invalid_input(change, message):
    arguments = dict(_random_problem(), **change)
    with pytest.raises(ValueError, match=message):
        losses.cat_loss(**arguments)


@pytest.mark.parametrize(
    "num, strategy, message",
    [(0, "top", "num must be an integer in 1..10"), (11, "bottom", "1..10"), (3, "middle", "unknown strategy")],
)
def test_select_cam_classes_rejects_invalid_input(num, strategy, message):
    with pytest.raises(ValueError, match=message):
        losses.select_cam_classes(jnp.zeros((2, 10)), num, strategy)


def _identity_cams(student_maps, teacher_maps):
    """cat_loss arguments whose CAMs are the given `[N, 2, 2, C]` maps (identity kernels, no pooling)."""
    eye = jnp.eye(student_maps.shape[-1])
    return dict(student_features=student_maps, student_kernel=eye, teacher_features=teacher_maps,
                teacher_kernel=eye, resolution=2)


def test_class_weights_weigh_each_cams_error_normalised_to_mean_one_per_example():
    rng = np.random.default_rng(0)
    student, teacher = rng.standard_normal((2, 3, 2, 2, 4)).astype(np.float32)
    weights = rng.uniform(0.1, 1.0, (3, 4)).astype(np.float32)
    error = ((student - teacher) ** 2).mean(axis=(1, 2))  # [N, C]: each CAM's mean squared error
    expected = float(np.mean(error * weights / weights.mean(axis=1, keepdims=True)))
    arguments = _identity_cams(jnp.asarray(student), jnp.asarray(teacher))
    assert float(losses.cat_loss(**arguments, class_weights=jnp.asarray(weights))) == pytest.approx(expected, rel=1e-6)
    # Uniform weights of any scale are the paper's CAT; the weights are constants of the step.
    uniform = losses.cat_loss(**arguments, class_weights=jnp.full((3, 4), 7.0))
    assert float(uniform) == pytest.approx(float(losses.cat_loss(**arguments)), rel=1e-6)
    gradient = jax.grad(lambda w: losses.cat_loss(**arguments, class_weights=w))(jnp.asarray(weights))
    np.testing.assert_array_equal(gradient, np.zeros_like(weights))

    # With a class mask, each example's weights are normalised over its selected classes only.
    mask = np.array([[True, False, True, False], [False, False, False, True], [True, True, True, True]])
    selected = np.where(mask, weights, 0.0)
    normalised = selected / (selected.sum(axis=1, keepdims=True) / mask.sum(axis=1, keepdims=True))
    expected = float(np.sum(error * normalised) / mask.sum())
    got = losses.cat_loss(**arguments, class_mask=jnp.asarray(mask), class_weights=jnp.asarray(weights))
    assert float(got) == pytest.approx(expected, rel=1e-6)


def test_teacher_probability_weights_are_the_teachers_softmax():
    logits = jnp.array([[2.0, 0.0, -1.0], [0.0, 0.0, 0.0]])
    expected = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(losses.teacher_probability_weights(logits), expected, rtol=1e-6)


def test_grad_cams_equal_each_class_computed_alone():
    """All classes at once (one vmapped vjp) against one `jax.grad` per class, with a head whose
    gradient varies over positions and examples."""
    rng = np.random.default_rng(0)
    features = jnp.asarray(rng.standard_normal((3, 4, 5, 6)), jnp.float32)
    inner, outer = (jnp.asarray(rng.standard_normal(shape), jnp.float32) for shape in ((6, 8), (8, 7)))

    def head(maps):  # [N, H, W, K] -> [N, C], non-linear at each position
        return jnp.mean(jnp.tanh(maps @ inner) @ outer, axis=(1, 2))

    expected = []
    for c in range(7):
        gradient = jax.grad(lambda maps: head(maps)[:, c].sum())(features)  # examples are independent
        weights = np.asarray(gradient).mean(axis=(1, 2))  # [N, K]
        expected.append(np.maximum(np.einsum("nhwk,nk->nhw", np.asarray(features), weights), 0.0))
    got = jax.jit(losses.grad_cams, static_argnums=1)(features, head)
    assert got.shape == (3, 4, 5, 7)
    np.testing.assert_allclose(got, np.stack(expected, axis=-1), rtol=1e-5, atol=1e-6)
    assert np.any(np.asarray(got) == 0.0) and np.any(np.asarray(got) > 0.0)  # the ReLU acted


def test_grad_cams_of_a_pooled_linear_head_are_the_rectified_cams_over_the_positions():
    rng = np.random.default_rng(1)
    features = rng.standard_normal((2, 4, 4, 6)).astype(np.float32)
    kernel, bias = rng.standard_normal((6, 5)).astype(np.float32), rng.standard_normal(5).astype(np.float32)
    got = losses.grad_cams(jnp.asarray(features), lambda maps: jnp.mean(maps, axis=(1, 2)) @ kernel + bias)
    expected = np.maximum(np.einsum("nhwk,kc->nhwc", features, kernel), 0.0) / 16
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-7)
    # The maps are constants (a teacher's): no gradient reaches the features through them.
    gradient = jax.grad(lambda maps: losses.grad_cams(maps, lambda m: jnp.mean(m, axis=(1, 2)) @ kernel).sum())(
        jnp.asarray(features))
    np.testing.assert_array_equal(gradient, np.zeros_like(features))


def test_cam_transfer_loss_of_class_activation_maps_is_cat_loss():
    problem = _random_problem()
    student = losses.class_activation_maps(problem["student_features"], problem["student_kernel"])
    teacher = losses.class_activation_maps(problem["teacher_features"], problem["teacher_kernel"])
    for options in (dict(), dict(normalize=True, binarize=True, resolution=1)):
        assert float(losses.cam_transfer_loss(student, teacher, **options)) == float(
            losses.cat_loss(**problem, **options))
