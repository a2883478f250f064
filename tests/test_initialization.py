"""Initialisation: every tensor drawn from the distribution of the original network's tensor.

The reference is `tests/data/init_statistics.json`, the per-tensor statistics of the original
PyTorch networks (plain and CAM-head `_test`) written by `benchmarks/reference_init_stats.py`.
Two samples of one distribution differ by chance only: the bounds below are 6 standard errors
of the difference for the tensor's size n, so they fail on a wrong distribution, not on noise.
"""

from __future__ import annotations

import json
import math
import os
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from catkd_jax.convert import torch_arrays
from catkd_jax.models import create_model, list_models

REFERENCE = pathlib.Path(__file__).parent / "data" / "init_statistics.json"

# Initialising a network costs seconds of XLA compilation on 2 CPUs (each new tensor shape is
# a new program), so the suite checks the smallest network of each family whose classifier or
# CAM head has an initialisation of its own (depth and width only repeat the same draws), but
# MobileNetV2 (7 s or more alone); ShuffleV1/V2 and MobileNetV1 keep PyTorch's defaults
# throughout. With CATKD_TESTS_EVERY_ARCHITECTURE=1 every architecture is checked (minutes).
EVERY_ARCHITECTURE = os.environ.get("CATKD_TESTS_EVERY_ARCHITECTURE") == "1"
CHECKED = tuple(list_models()) if EVERY_ARCHITECTURE else (
    "resnet8",  # CIFAR ResNet
    "wrn_16_1",  # WideResNet
    "vgg8",  # VGG
    "ResNet18",  # CIFAR ResNetV2
    "imagenet_resnet18",  # torchvision's ResNet
)
# Above this size, max |x| / std tells a uniform distribution (sqrt(3)) from a normal one (> 3).
_SHAPE_CHECK_SIZE = 1000


@pytest.fixture(scope="module")
def reference() -> dict:
    return json.loads(REFERENCE.read_text())["networks"]


def _statistics(array: np.ndarray) -> tuple[int, float, float, float]:
    """Count, mean, std, max |x|, accumulated in float64 (without a float64 copy of `array`)."""
    return (array.size, float(array.mean(dtype=np.float64)), float(array.std(dtype=np.float64)),
            float(max(array.max(), -array.min())))


def _mismatch(key: str, ours: tuple[int, float, float, float], theirs: list[float]) -> str | None:
    """Why `ours` cannot be a sample of the distribution of `theirs` (count, mean, std, max |x|)."""
    count, mean, std, largest = ours
    ref_count, ref_mean, ref_std, ref_largest = theirs
    if count != ref_count:
        return f"{key}: {count} elements, the reference has {ref_count}"
    if ref_std == 0:  # a constant: exactly
        if (std, mean) == (0, ref_mean):
            return None
        return f"{key}: mean {mean:.6g} std {std:.3g}, reference constant {ref_mean}"
    standard_error = ref_std / math.sqrt(count)
    if abs(mean - ref_mean) > 6 * math.sqrt(2) * standard_error:
        return f"{key}: mean {mean:.4g}, reference {ref_mean:.4g} (std {ref_std:.4g}, {count} elements)"
    if abs(std - ref_std) > 6 * standard_error:
        return f"{key}: std {std:.4g}, reference {ref_std:.4g} ({count} elements)"
    if count >= _SHAPE_CHECK_SIZE:
        uniform, ref_uniform = largest / std < 2, ref_largest / ref_std < 2
        if uniform != ref_uniform:
            kinds = ("normal-like", "uniform")
            return f"{key}: {kinds[uniform]} (max |x| / std {largest / std:.3g}), reference {kinds[ref_uniform]}"
        # max |x| of n draws of U(-b, b) is below b (1 - 30 / n) with probability e^-30: two samples'
        # bounds differ by less than 30 b / n, so by less than 60 / n of the reference's bound.
        if ref_uniform and abs(largest - ref_largest) > 60 * ref_largest / count:
            return f"{key}: bound {largest:.6g}, reference {ref_largest:.6g} ({count} elements)"
    return None


def test_reference_covers_every_architecture(reference):
    assert set(reference) == set(list_models())
    assert all(set(variants) == {"plain", "cam_head"} for variants in reference.values())


@pytest.mark.parametrize("arch", CHECKED)
def test_initialization_draws_each_tensor_like_the_reference(arch, reference):
    problems = []
    for cam_head in (False, True):
        variant = reference[arch]["cam_head" if cam_head else "plain"]
        model = create_model(arch, classifier_bias=not cam_head)
        # The variables are computed, not the forward pass of an input. The "rbg" generator
        # compiles several times faster than the default one; the distributions are the same.
        variables = model.lazy_init(
            jax.random.key(0, impl="rbg"), jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32), train=False
        )
        ours = torch_arrays(variables, arch, cam_head=cam_head)
        theirs = variant["tensors"]
        batch_norms = {key.removesuffix(".running_mean") for key in ours if key.endswith(".running_mean")}
        # A CAM-head file may keep its unused Linear classifier (MobileNetV2_test): not ours.
        leftover = {f"{model.torch_classifier_name}.{leaf}" for leaf in ("weight", "bias") if cam_head}
        unmatched = {key for key in theirs if key not in ours and key not in leftover}
        assert unmatched == {f"{module}.num_batches_tracked" for module in batch_norms}, variant["source"]
        assert all(theirs[key] == [1, 0, 0, 0] for key in unmatched)
        assert set(ours) <= set(theirs), variant["source"]
        problems += [f"{variant['source']} {problem}" for key, array in ours.items()
                     if (problem := _mismatch(key, _statistics(array), theirs[key]))]
    assert not problems, "\n".join(problems)
