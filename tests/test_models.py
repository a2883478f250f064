"""Tests of the model zoo: every architecture's contract, shapes and parameter counts."""

from __future__ import annotations

import json
import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from catkd_jax.models import canonical_name, create_model, list_models
from catkd_jax.models.layers import BatchNorm, grouped_conv_general_dilated
from conftest import random_variables, shared_path

ARCHS = [
    "resnet8", "resnet14", "resnet20", "resnet32", "resnet44", "resnet56", "resnet110",
    "resnet8x4", "resnet32x4", "wrn_16_1", "wrn_16_2", "wrn_40_1", "wrn_40_2",
    "vgg8", "vgg11", "vgg13", "vgg16", "vgg19", "MobileNetV2", "ShuffleV1", "ShuffleV2",
    "ResNet50", "ResNet18",
]  # fmt: skip
# Not in ARCHS: the tests that read the CIFAR reference specs run over ARCHS only.
IMAGENET_ARCHS = ["imagenet_resnet18", "imagenet_resnet34", "imagenet_resnet50", "imagenet_mobilenet_v1"]
NUM_CLASSES = 100


def _spec(arch: str) -> dict:
    with open(shared_path("reference/mdistiller_cifar_state_dicts.json")) as file:
        return json.load(file)[arch]


def test_registry_lists_exactly_the_paper_architectures():
    assert sorted(list_models()) == sorted(ARCHS + IMAGENET_ARCHS)


@pytest.mark.parametrize("alias, name", [("res32x4", "resnet32x4"), ("mobile_half", "MobileNetV2"),
                                         ("shufflev1", "ShuffleV1"), ("resnet50", "ResNet50"),
                                         ("resnet18", "ResNet18"), ("res34", "imagenet_resnet34"),
                                         ("MobileNetV1", "imagenet_mobilenet_v1"),
                                         ("mobilenetv1", "imagenet_mobilenet_v1")])  # fmt: skip
def test_aliases_resolve(alias, name):
    assert canonical_name(alias) == name


def test_case_insensitive_lookup_is_unambiguous():
    """No two names or aliases differ only in case (the lookup would pick one silently)."""
    from catkd_jax.models import _ALIASES  # pylint: disable=import-outside-toplevel

    names = [*list_models(), *_ALIASES]
    assert len({name.lower() for name in names}) == len(names)


def test_unknown_architecture_lists_valid_names():
    with pytest.raises(ValueError, match=r"unknown architecture 'resnet9'.*resnet8, resnet14"):
        create_model("resnet9")


# The contract per family and shape of network, not per depth (every architecture's shapes and
# parameter counts are checked against the reference below): one shallow and one deep ResNet,
# the wide ResNet, the WRN with and without the identity stem shortcut, a small and a teacher
# VGG, every other family once.
CONTRACT_ARCHS = ["resnet8", "resnet56", "resnet32x4", "wrn_16_1", "wrn_40_2", "vgg8", "vgg13", "MobileNetV2",
                  "ShuffleV1", "ShuffleV2", "ResNet50", "ResNet18"]  # fmt: skip


@pytest.mark.parametrize("arch", CONTRACT_ARCHS + IMAGENET_ARCHS)
def test_architecture_contract(arch):
    """Shapes, the CAM contract (logits = pooled features @ kernel + bias), jit, BN updates."""
    model = create_model(arch, num_classes=NUM_CLASSES)
    images = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))
    variables = random_variables(model, (32, 32, 3))

    def train_and_eval_forward(variables, x):  # one program: each compile costs seconds
        return (model.apply(variables, x, train=True, mutable=["batch_stats"]),
                model.apply(variables, x, train=False))

    lowered = jax.jit(train_and_eval_forward).lower(variables, images)
    ((logits, features), updates), (eval_logits, eval_features) = lowered.compile()(variables, images)
    # On a CPU no grouped convolution reaches XLA (layers.grouped_conv_general_dilated: its
    # grouped convolutions make a train step about 3x slower).
    assert set(re.findall(r"feature_group_count = (\d+)", lowered.as_text())) == {"1"}
    assert logits.shape == (2, NUM_CLASSES)
    assert features.ndim == 4 and features.shape[0] == 2
    kernel = variables["params"]["classifier"]["kernel"]
    assert kernel.shape == (features.shape[-1], NUM_CLASSES)
    expected_logits = features.mean(axis=(1, 2)) @ kernel + variables["params"]["classifier"]["bias"]
    np.testing.assert_allclose(logits, expected_logits, rtol=1e-4, atol=1e-4)

    # Every BatchNorm's running statistics move (a mean may stay ~0 when its input is a linear
    # map of a normalised, zero-mean activation, so mean *or* variance).
    old_stats, new_stats = variables["batch_stats"], updates["batch_stats"]
    moved = jax.tree_util.tree_map(lambda old, new: not np.allclose(old, new), old_stats, new_stats)
    batch_norms = jax.tree_util.tree_leaves(moved, is_leaf=lambda node: isinstance(node, dict) and "mean" in node)
    assert len(batch_norms) > 0
    assert all(bn["mean"] or bn["var"] for bn in batch_norms)

    assert eval_logits.shape == logits.shape and eval_features.shape == features.shape
    assert np.all(np.isfinite(eval_logits))


@pytest.mark.parametrize("arch", ARCHS)
def test_shapes_and_parameter_count_match_reference(arch):
    spec = _spec(arch)
    model = create_model(arch, num_classes=NUM_CLASSES)
    (logits, features), variables = jax.eval_shape(
        lambda: model.init_with_output(jax.random.key(0), jnp.zeros((2, 32, 32, 3)), train=False)
    )
    assert list(logits.shape) == spec["logits_shape"]
    n, c, h, w = spec["pre_pool_feature_shape_nchw"]
    assert features.shape == (n, h, w, c)
    reference_count = sum(
        math.prod(shape) for name, shape, _ in spec["state_dict"] if name.endswith((".weight", ".bias"))
    )
    flax_count = sum(math.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(variables["params"]))
    assert flax_count == reference_count


def test_classifier_bias_can_be_dropped():
    model = create_model("resnet8", num_classes=10, classifier_bias=False)
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False))
    assert set(variables["params"]["classifier"]) == {"kernel"}


def test_bfloat16_activations_keep_float32_parameters_and_statistics():
    model = create_model("resnet8", num_classes=10, dtype=jnp.bfloat16)
    images = jnp.ones((2, 32, 32, 3))
    variables = model.init(jax.random.key(0), images, train=False)
    assert {leaf.dtype for leaf in jax.tree_util.tree_leaves(variables)} == {jnp.dtype(jnp.float32)}
    (logits, features), updates = model.apply(variables, images, train=True, mutable=["batch_stats"])
    assert features.dtype == jnp.bfloat16
    assert {leaf.dtype for leaf in jax.tree_util.tree_leaves(updates)} == {jnp.dtype(jnp.float32)}


def test_batch_norm_running_variance_is_unbiased_like_pytorch():
    x = jax.random.normal(jax.random.key(0), (2, 3, 3, 4)) * 3.0 + 1.0
    module = BatchNorm(use_running_average=False)
    variables = module.init(jax.random.key(1), x)
    y, updates = module.apply(variables, x, mutable=["batch_stats"])
    flat = np.asarray(x).reshape(-1, 4)
    np.testing.assert_allclose(updates["batch_stats"]["mean"], 0.1 * flat.mean(0), rtol=1e-5)
    np.testing.assert_allclose(updates["batch_stats"]["var"], 0.9 + 0.1 * flat.var(0, ddof=1), rtol=1e-5)
    # The normalisation itself uses the biased variance.
    np.testing.assert_allclose(
        np.asarray(y).reshape(-1, 4), (flat - flat.mean(0)) / np.sqrt(flat.var(0) + 1e-5), rtol=1e-4, atol=1e-5
    )


# `[N, H, W, C]` input, `[kh, kw, C / groups, K]` kernel, stride, padding, groups: every kind of
# grouped convolution of the models (depthwise at stride 1 and 2, odd and even sizes; grouped 1x1).
GROUPED_CONVOLUTIONS = [((2, 9, 9, 6), (3, 3, 1, 6), 1, 1, 6), ((2, 9, 9, 6), (3, 3, 1, 6), 2, 1, 6),
                        ((2, 8, 8, 6), (3, 3, 1, 6), 2, 1, 6), ((2, 5, 5, 12), (1, 1, 4, 9), 1, 0, 3)]  # fmt: skip


@pytest.mark.parametrize("image_shape, kernel_shape, stride, padding, groups", GROUPED_CONVOLUTIONS)
def test_grouped_convolutions_compute_xlas_grouped_convolution(image_shape, kernel_shape, stride, padding, groups):
    """The CPU's decomposed grouped convolutions are the same function as XLA's: equal to
    float64 rounding, value and both gradients."""
    with jax.enable_x64(True):
        rng = np.random.default_rng(0)
        images, kernel = (jnp.asarray(rng.standard_normal(shape)) for shape in (image_shape, kernel_shape))
        arguments = ((stride, stride), ((padding, padding), (padding, padding)))
        options = {"dimension_numbers": ("NHWC", "HWIO", "NHWC"), "feature_group_count": groups}
        ours, ours_vjp = jax.vjp(lambda x, k: grouped_conv_general_dilated(x, k, *arguments, **options), images, kernel)
        xlas, xlas_vjp = jax.vjp(lambda x, k: jax.lax.conv_general_dilated(x, k, *arguments, **options), images, kernel)
        cotangent = jnp.asarray(rng.standard_normal(xlas.shape))
        # Several runs' students in one program (config.runs.vectorize='vmap'): vmapped kernels.
        kernels = jnp.stack([kernel, -2.0 * kernel])
        vmapped = jax.vmap(lambda k: grouped_conv_general_dilated(images, k, *arguments, **options))(kernels)
        one_by_one = jnp.stack([jax.lax.conv_general_dilated(images, k, *arguments, **options) for k in kernels])
        for mine, theirs in zip((ours, *ours_vjp(cotangent), vmapped), (xlas, *xlas_vjp(cotangent), one_by_one)):
            assert mine.dtype == jnp.float64
            np.testing.assert_allclose(mine, theirs, rtol=1e-12, atol=1e-12 * float(jnp.max(jnp.abs(theirs))))


def test_grouped_convolutions_decompose_only_on_the_platforms_named():
    images, kernel = jax.ShapeDtypeStruct((2, 8, 8, 6), jnp.float32), jax.ShapeDtypeStruct((3, 3, 1, 6), jnp.float32)

    def groups_in_cpu_program(**platforms):
        program = jax.jit(lambda x, k: grouped_conv_general_dilated(
            x, k, (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=6,
            **platforms)).lower(images, kernel).as_text()
        return set(re.findall(r"feature_group_count = (\d+)", program))

    assert groups_in_cpu_program() == set()  # the default decomposes on CPUs
    assert groups_in_cpu_program(decomposed_on=("cuda", "rocm")) == {"6"}
    assert groups_in_cpu_program(decomposed_on=("cpu", "cuda")) == set()
