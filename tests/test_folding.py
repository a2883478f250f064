"""Tests of the teacher's inference form: BatchNorm folded into the convolutions."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from catkd_jax import training
from catkd_jax.models import create_model, folding
from catkd_jax import default_config as default
from conftest import random_variables

IMAGE_SHAPE = (32, 32, 3)


def _count_norms(variables) -> int:
    return sum(1 for path in jax.tree_util.tree_leaves_with_path(variables["batch_stats"]) if path[0][-1].key == "var")


# One architecture per family; wrn_16_1's first block adds the stem conv's output to its
# residual branch, so that conv must stay unfolded (its BatchNorm is not the only user); in
# wrn_16_2 it stays unfolded too: its output is a recorded stage (`models.stages`).
@pytest.mark.parametrize(
    "arch, expected_folded, expected_norms",
    [("resnet8", 9, 9), ("wrn_16_1", 6, 13), ("wrn_16_2", 6, 13), ("vgg8", 5, 5), ("MobileNetV2", 53, 53),
     ("ShuffleV1", 49, 49), ("ShuffleV2", 56, 56), ("ResNet18", 20, 20)],
)
def test_folded_network_computes_the_same_function(arch, expected_folded, expected_norms):
    model = create_model(arch, num_classes=10)
    variables = random_variables(model, IMAGE_SHAPE, trained_looking=True)
    folded = folding.fold_batch_norm(model, variables, IMAGE_SHAPE)
    assert _count_norms(variables) == expected_norms
    assert _count_norms(variables) - _count_norms(folded) == expected_folded

    images = jax.random.normal(jax.random.key(2), (4, *IMAGE_SHAPE))
    expected = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, images)
    actual = jax.jit(lambda v, x: folding.apply_folded(model, v, x))(folded, images)
    for want, got in zip(expected, actual):
        scale = float(jnp.max(jnp.abs(want)))
        assert scale > 0.1
        np.testing.assert_allclose(got, want, atol=1e-5 * scale, rtol=0)
    np.testing.assert_array_equal(folded["params"]["classifier"]["kernel"], variables["params"]["classifier"]["kernel"])


def test_folding_changes_only_the_paired_convolutions():
    model = create_model("resnet8", num_classes=10)
    variables = random_variables(model, IMAGE_SHAPE, trained_looking=True)
    pairs = folding.conv_batch_norm_pairs(model, variables, IMAGE_SHAPE)
    assert (("conv1",), ("bn1",)) in pairs
    assert (("layer2.0", "downsample.0"), ("layer2.0", "downsample.1")) in pairs
    folded = folding.fold_batch_norm(model, variables, IMAGE_SHAPE)
    block = variables["params"]["layer1.0"]
    stats = variables["batch_stats"]["layer1.0"]["bn1"]
    scale = block["bn1"]["scale"] / jnp.sqrt(stats["var"] + 1e-5)
    np.testing.assert_allclose(folded["params"]["layer1.0"]["conv1"]["kernel"], block["conv1"]["kernel"] * scale, rtol=1e-6)
    np.testing.assert_allclose(
        folded["params"]["layer1.0"]["conv1"]["bias"], block["bn1"]["bias"] - stats["mean"] * scale, rtol=1e-6, atol=1e-7
    )
    assert "bn1" not in folded["params"]["layer1.0"]


def test_train_step_with_a_folded_teacher_matches_the_unfolded_one():
    config = default.get_config()
    config.student.arch, config.teacher.arch = "resnet8", "resnet14"
    student, teacher = create_model("resnet8", 10, classifier_bias=False), create_model("resnet14", 10)
    teacher_variables = random_variables(teacher, IMAGE_SHAPE, trained_looking=True)
    student_variables = random_variables(student, IMAGE_SHAPE, seed=2)
    tx = training.create_optimizer(config, steps_per_epoch=10)
    batch = {"image": jax.random.normal(jax.random.key(3), (8, *IMAGE_SHAPE)), "label": jnp.arange(8) % 10}
    losses = {}
    for fold in (True, False):
        config.teacher.fold_batch_norm = fold
        state = training.TrainState(jnp.zeros((), jnp.int32), student_variables["params"],
                                 student_variables["batch_stats"], tx.init(student_variables["params"]))
        step = jax.jit(training.make_train_step(config, student, teacher, tx, steps_per_epoch=10))
        inference = training.teacher_inference_variables(config, teacher, teacher_variables, IMAGE_SHAPE)
        _, metrics = step(state, batch, inference)
        losses[fold] = {name: float(value) for name, value in metrics.items()}
    assert losses[True]["loss_cat"] > 0
    for name, value in losses[False].items():
        assert losses[True][name] == pytest.approx(value, rel=1e-5), name
