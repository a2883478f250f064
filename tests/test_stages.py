"""Stages: every network's intermediate features equal the original networks' `feats` dict.

The reference is `tests/data/stage_references.npz`, written by `benchmarks/reference_stages.py`
from the original PyTorch networks (plain and CAM-head `_test`) on random weights
(`catkd_jax.testing.random_torch_state_dict`) and images: shapes and summaries of every `feats`
and `preact_feats` entry, of `pooled_feat` and of the logits, and the networks'
`get_stage_channels()` and `get_bn_before_relu()`. Our networks load the same weights.
"""

from __future__ import annotations

import json
import os
import pathlib

import jax
import numpy as np
import pytest

from catkd_jax import testing
from catkd_jax.convert import from_torch_state_dict
from catkd_jax.errors import ConfigError
from catkd_jax.models import create_model, folding, list_models
from catkd_jax.models.stages import Stages, apply_with_stages, bn_before_relu, stage_channels

REFERENCE = pathlib.Path(__file__).parent / "data" / "stage_references.npz"

# Each architecture costs a few seconds of XLA compilation on 2 CPUs, so the suite checks the
# cheapest of the families whose stages are recorded differently; with
# CATKD_TESTS_EVERY_ARCHITECTURE=1 every architecture is checked (minutes).
EVERY_ARCHITECTURE = os.environ.get("CATKD_TESTS_EVERY_ARCHITECTURE") == "1"
CHECKED = tuple(list_models()) if EVERY_ARCHITECTURE else ("resnet8", "wrn_16_1", "vgg8")
VARIANTS = ("plain", "cam_head")


@pytest.fixture(scope="module")
def reference() -> dict[str, np.ndarray]:
    with np.load(REFERENCE) as arrays:
        return dict(arrays)


def _image_size(arch: str) -> int:
    return 224 if arch.startswith("imagenet_") else 32


def _load(arch: str, variant: str, reference: dict[str, np.ndarray]):
    """Our model of `arch`/`variant`, its variables (the reference's weights), the images, the meta."""
    meta = json.loads(str(reference[f"{arch}/{variant}/meta"]))
    seed = int(reference["seed"])
    state = testing.random_torch_state_dict(meta["rows"], seed)
    classifier_bias = variant == "plain"
    model = create_model(arch, classifier_bias=classifier_bias)
    variables = from_torch_state_dict(state, arch, classifier_bias=classifier_bias)
    return model, variables, testing.random_images(_image_size(arch), seed), meta


def _mismatches(stages: Stages, logits: jax.Array, meta: dict, summaries: dict[str, np.ndarray]) -> list[str]:
    """How `stages` and `logits` differ from the reference's shapes and summaries (rtol 1e-4 of
    each entry's largest summary value)."""
    ours = {"feats": stages.feats, "preact_feats": stages.preact_feats, "pooled_feat": (stages.pooled_feat,),
            "logits": (logits,)}
    problems = []
    for kind, arrays in ours.items():
        shapes = [list(np.shape(array)) for array in arrays]
        if shapes != meta["shapes"][kind]:
            problems.append(f"{kind}: shapes {shapes}, reference {meta['shapes'][kind]}")
            continue
        offset = 0
        for index, array in enumerate(arrays):
            summary = testing.summarize(np.asarray(array))
            expected = summaries[kind][offset:offset + summary.size]
            offset += summary.size
            scale = float(np.abs(expected).max())
            error = float(np.abs(summary - expected).max())
            if error > 1e-4 * scale:
                problems.append(f"{kind}[{index}]: summary off by {error:.3g} (scale {scale:.3g})")
    return problems


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("arch", CHECKED)
def test_stages_equal_the_original_networks_feats(arch, variant, reference):
    model, variables, images, meta = _load(arch, variant, reference)
    kinds = ("feats", "preact_feats", "pooled_feat", "logits")
    summaries = {kind: reference[f"{arch}/{variant}/{kind}"] for kind in kinds}

    (logits, features), stages, updated = jax.jit(
        lambda v, x: apply_with_stages(model, v, x, train=False))(variables, images)
    assert updated == {}
    assert _mismatches(stages, logits, meta, summaries) == []
    # Without the request: the same outputs (up to the rounding of another XLA program).
    plain = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, images)
    for want, got in zip((logits, features), plain):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * float(np.abs(want).max()))

    # The teachers' inference form gives the same stages.
    folded = folding.fold_batch_norm(model, variables, images.shape[1:])
    (logits, _), stages = jax.jit(lambda v, x: folding.apply_folded_with_stages(model, v, x))(folded, images)
    assert _mismatches(stages, logits, meta, summaries) == []


@pytest.mark.parametrize("arch", CHECKED)
def test_stage_channels_and_bn_before_relu_are_the_originals(arch, reference):
    meta = json.loads(str(reference[f"{arch}/plain/meta"]))
    model = create_model(arch)
    if meta["stage_channels"] is None:
        with pytest.raises(ConfigError, match="get_stage_channels"):
            stage_channels(model)
    else:
        assert stage_channels(model) == tuple(meta["stage_channels"])
    if meta["bn_before_relu"] is None:
        with pytest.raises(ConfigError, match="get_bn_before_relu"):
            bn_before_relu(model)
        return
    paths = bn_before_relu(model)
    assert [".".join(path) for path in paths] == meta["bn_before_relu"]
    shapes = {name: shape for name, shape, _ in meta["rows"]}
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), np.zeros((1, 32, 32, 3), np.float32), train=False))
    for path in paths:
        channels = shapes[".".join(path) + ".weight"]
        node_params, node_stats = variables["params"], variables["batch_stats"]
        for name in path:
            node_params, node_stats = node_params[name], node_stats[name]
        assert [node_params["scale"].shape, node_stats["mean"].shape] == [tuple(channels)] * 2


def test_init_and_plain_apply_record_nothing_and_training_keeps_its_statistics():
    model = create_model("resnet8")
    images = np.zeros((2, 32, 32, 3), np.float32)
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), images[:1], train=True))
    assert set(variables) == {"params", "batch_stats"}
    _, updated = jax.eval_shape(lambda v: model.apply(v, images, train=True, mutable=["batch_stats"]), variables)
    assert set(updated) == {"batch_stats"}
    _, stages, updated = jax.eval_shape(
        lambda v: apply_with_stages(model, v, images, train=True, mutable=["batch_stats"]), variables)
    assert set(updated) == {"batch_stats"}
    assert [feat.shape for feat in stages.feats] == [(2, 32, 32, 16), (2, 32, 32, 16), (2, 16, 16, 32), (2, 8, 8, 64)]


def test_reference_covers_every_architecture(reference):
    assert {key.split("/")[0] for key in reference if "/" in key} == set(list_models())
