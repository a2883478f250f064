"""Each feature method equals the original distiller's `forward_train`: its loss terms, the gradients
of the student's and of the method's own parameters, and (FitNet, VID, OFD, ReviewKD, CRD) one
whole step of the original trainer (its `train_iter`, `CRDTrainer`'s for CRD: parameters, running
statistics, CRD's banks and constants after it), on two pairs of networks (one across families;
OFD, ReviewKD and CRD on the one across families only).

The references come from `benchmarks/reference_distillers.py` (the original code at float32 on
the CPU, weights from `catkd_jax.testing.random_torch_state_dict`); gradients and changes are
compared through their `testing.norm_and_projection` summaries: norms to 1e-4 relative, and
projections to 1e-4 of the norm, so that any entry off by more than that shows, or, where the
float32 reference's own rounding error is larger (its distance from the same step at float64),
to a few times that error. The gradients and the step are compiled (op by op, the step took
5 s against 1 s compiled); the teacher's one forward pass runs op by op.
"""

from __future__ import annotations

import json
import pathlib

import jax
import numpy as np
import pytest

from catkd_jax import config_files, convert, default_config, methods, testing, training
from catkd_jax.models import create_model
from catkd_jax.training import steps

REFERENCES = pathlib.Path(__file__).parent / "data" / "distiller_references.npz"
NUM_CLASSES = 100
RTOL = 1e-4
ROUNDING = 4.0


def _cases() -> list[tuple[str, str]]:
    with np.load(REFERENCES) as references:
        return sorted({tuple(name.split("/")[:2][::-1]) for name in references.files})


@pytest.fixture(scope="module")
def references():
    with np.load(REFERENCES) as data:
        return {name: data[name] for name in data.files}


def _tolerance(scale: np.ndarray, rounding: np.ndarray) -> np.ndarray:
    """`RTOL` of `scale`, or `ROUNDING` times the float32 reference's own rounding error
    (`rounding`: its distance from the float64 run), whichever is larger: a method too
    ill-conditioned for 1e-4 at float32 (PKT's KL between near-equal distributions; a gradient
    that is zero in exact arithmetic, as a conv bias's before a training-mode BatchNorm) is held
    to the original's own precision."""
    return np.maximum(RTOL * np.abs(scale), ROUNDING * rounding)


def _assert_summaries_equal(arrays: dict[str, np.ndarray], case: dict, group: str, what: str) -> None:
    """`arrays` summarised as `case[group]` (names in `case[group + "_names"]`): each tensor's norm
    and projection within `_tolerance` of its norm."""
    names, expected = case[f"{group}_names"], case[group]
    assert sorted(arrays) == sorted(names), what
    got = np.stack([testing.norm_and_projection(arrays[key], index) for index, key in enumerate(names)])
    tolerance = _tolerance(expected[:, 0], case[f"{group}_rounding"])
    for key, difference, allowed in zip(names, np.abs(got - expected), tolerance):
        assert np.all(difference <= allowed), f"{what} {key}: |(norm, projection) - reference| {difference} > {allowed}"


def _setup(method: str, case: dict):
    rows = json.loads(str(case["rows"]))
    teacher_arch, student_arch = (str(name) for name in case["networks"])
    config = config_files.with_values(default_config.get_config(),
                                      testing.reference_method_settings(method, teacher_arch, student_arch))
    config.method, config.student.classifier_bias = method, True
    config.teacher.fold_batch_norm = False  # the teacher as the original runs it (folding rounds differently)
    student, teacher = create_model(student_arch, NUM_CLASSES), create_model(teacher_arch, NUM_CLASSES)
    weights = lambda arch, side, seed: convert.from_torch_state_dict(
        testing.random_torch_state_dict(rows[side], seed), arch, NUM_CLASSES)
    teacher_variables = training.teacher_inference_variables(
        config, teacher, weights(teacher_arch, "teacher", testing.TEACHER_SEED), (32, 32, 3))
    method_object = methods.create(config, student, teacher)
    constants = json.loads(str(case["constants"]))  # state the random fill leaves at the original's values
    method_variables = method_object.variables_from_torch(
        testing.random_torch_state_dict(rows["method"], testing.METHOD_SEED) | constants, teacher_variables)
    tx = training.create_optimizer(config, steps_per_epoch=1)
    state = training.create_train_state(weights(student_arch, "student", testing.STUDENT_SEED), tx, method_variables)
    images, labels = testing.reference_batch()
    index, contrast_index = testing.reference_contrast_indices(len(labels))  # CRD's, from its "sample" loader
    batch = {"image": images, "label": labels, "index": index, "contrast_index": contrast_index}
    teacher_outputs = steps.make_teacher_forward(config, teacher)(teacher_variables, images)
    return config, student, teacher, student_arch, method_object, tx, state, batch, teacher_outputs


@pytest.mark.parametrize("method, pair", _cases(), ids=[f"{m}-{p}" for m, p in _cases()])
def test_loss_terms_and_gradients_equal_the_original_forward_train(method, pair, references):
    case = {name.split("/")[-1]: value for name, value in references.items() if name.startswith(f"{pair}/{method}/")}
    config, student, teacher, student_arch, method_object, _, state, batch, teacher_outputs = _setup(method, case)
    loss_fn = training.make_loss_fn(config, student, teacher, steps_per_epoch=1)
    (_, (terms, *_)), (grads, method_grads) = jax.jit(jax.value_and_grad(loss_fn, argnums=(0, 1), has_aux=True))(
        state.params, state.method_params, state, batch, teacher_outputs)

    assert list(terms) == list(case["term_names"])  # the original's names, in its order
    assert method_object.extra_parameters({"params": state.method_params, **state.method_state}) == (
        case["extra_parameters"])
    got = np.asarray([float(terms[name]) for name in terms])
    assert np.all(np.abs(got - case["terms"]) <= _tolerance(case["terms"], case["terms_rounding"])), (
        f"loss terms {got}, expected {case['terms']}")
    _assert_summaries_equal(convert.torch_arrays({"params": grads}, student_arch), case, "student_grads",
                            "student gradients")
    if "method_grads" in case:
        _assert_summaries_equal(method_object.torch_arrays({"params": method_grads}), case, "method_grads",
                                "method gradients")
    else:
        assert not jax.tree_util.tree_leaves(method_grads)
    if "step_changes" in case:  # one whole step of the original trainer: SGD, momentum, weight decay
        tx = training.create_optimizer(config, steps_per_epoch=1)
        new_state, _ = jax.jit(steps.make_student_step(config, student, teacher, tx, 1))(state, batch, teacher_outputs)
        changes = {f"student.{key}": value for key, value in convert.torch_arrays(
            {"params": jax.tree_util.tree_map(np.subtract, new_state.params, state.params)}, student_arch).items()}
        changes |= method_object.torch_arrays(
            {"params": jax.tree_util.tree_map(np.subtract, new_state.method_params, state.method_params)})
        _assert_summaries_equal(changes, case, "step_changes", "parameter changes")
        statistics = {f"student.{key}": value for key, value in convert.torch_arrays(
            {"batch_stats": new_state.batch_stats}, student_arch).items()}
        statistics |= method_object.torch_arrays(new_state.method_state)
        _assert_summaries_equal(statistics, case, "step_statistics", "running statistics, banks")
