"""The original networks' intermediate features ("stages"), recorded on request.

The mdistiller models of the original code return, besides their logits, a `feats` dict:
`feats["feats"]` (each stage's output), `feats["preact_feats"]` (the same before its last ReLU)
and `feats["pooled_feat"]` (the pooled vector the classifier reads). Our models record exactly
those arrays (NHWC) with `self.sow(COLLECTION, ...)` when the `COLLECTION` collection is mutable;
otherwise `sow` is a no-op and nothing extra is computed, so `model.apply` keeps returning
`(logits, features)` at the cost it had. `apply_with_stages` asks for them;
`folding.apply_folded_with_stages` gives the same from BatchNorm-folded variables.

CAM-head models (`classifier_bias=False`) record what the original's `_test` networks return,
family by family: the class activation maps (`features @ kernel`, the original's `conv_test`
output) replace or follow the last stage, or (ImageNet) are the only `feats`; `pooled_feat` is
the logits (the pooled CAMs). Each model's `record_stages` call says which.

`stage_channels(model)` and `bn_before_relu(model)` are the original's `get_stage_channels()`
and `get_bn_before_relu()` (the latter as paths into our `params`/`batch_stats` pytrees).
"""

from __future__ import annotations

from typing import Any, Literal, Sequence

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from catkd_jax.errors import ConfigError
from catkd_jax.models.layers import global_avg_pool
from catkd_jax.types import Variables

COLLECTION = "stages"

Path = tuple[str, ...]

# Where a CAM-head (`_test`) network of the original puts its CAMs in `feats["feats"]`:
# "replace" the last stage's output, "append" them after it, or make them the "only" entry.
CamPlacement = Literal["replace", "append", "only"]


@flax.struct.dataclass
class Stages:
    """The original network's `feats` dict, NHWC.

    feats: `feats["feats"]`, each `[N, h, w, K]`: the stem's and every stage's output as the
        original returns them (each family's module doc says which), and for CAM-head models the
        CAMs `[N, h, w, C]` (see the module doc).
    preact_feats: `feats["preact_feats"]`, the same stages before their last ReLU (the stem's
        entry is as in `feats` where the original repeats it); empty where the original returns
        none (CIFAR MobileNetV2, the CAM-head WideResNets).
    pooled_feat: `feats["pooled_feat"]` `[N, K]`, the globally pooled features the classifier
        reads; the logits `[N, C]` for CAM-head models.
    """

    feats: tuple[jax.Array, ...]
    preact_feats: tuple[jax.Array, ...]
    pooled_feat: jax.Array


def is_recording(module: nn.Module) -> bool:
    """Whether `module` runs under an apply that asked for the stages (`init` never records them:
    its variables are the network's, whatever collections it makes mutable)."""
    return module.is_mutable_collection(COLLECTION) and not module.is_initializing()


def record_stages(
    module: nn.Module,
    feats: Sequence[jax.Array],
    preact_feats: Sequence[jax.Array],
    features: jax.Array,
    logits: jax.Array,
    cam_placement: CamPlacement,
) -> None:
    """Sows the original's `feats` dict from the top-level model `module`, after its `classify`.

    `feats`, `preact_feats`: the plain network's entries; `features [N, h, w, K]`: the map its
    classifier pools; `logits [N, C]`. Without a classifier bias (a CAM-head model) the CAMs,
    `features @ kernel` `[N, h, w, C]`, go where `cam_placement` says and `pooled_feat` is the
    logits, as in the original's `_test` networks. Does nothing unless the stages were asked for.
    """
    if not is_recording(module):
        return
    classifier = module.variables["params"]["classifier"]
    if "bias" in classifier:
        feats, pooled = list(feats), global_avg_pool(features)
    else:
        cams = jnp.einsum("nhwk,kc->nhwc", features, classifier["kernel"].astype(features.dtype))
        feats = {"replace": [*feats[:-1], cams], "append": [*feats, cams], "only": [cams]}[cam_placement]
        pooled = logits
    for x in feats:
        module.sow(COLLECTION, "feats", x)
    for x in preact_feats:
        module.sow(COLLECTION, "preact_feats", x)
    module.sow(COLLECTION, "pooled_feat", pooled)


def stages_from(collections: Any) -> Stages:
    """The `Stages` in the `COLLECTION` entry of an apply's updated collections."""
    recorded = collections[COLLECTION]
    return Stages(
        feats=tuple(recorded["feats"]),
        preact_feats=tuple(recorded.get("preact_feats", ())),
        pooled_feat=recorded["pooled_feat"][0],
    )


def apply_with_stages(
    model: nn.Module,
    variables: Variables,
    images: jax.Array,
    *,
    train: bool,
    mutable: Sequence[str] = (),
) -> tuple[tuple[jax.Array, jax.Array], Stages, dict]:
    """`model.apply` that also returns the stages: `((logits, features), stages, updated)`.

    `images [N, H, W, 3]`; `updated` holds the other collections made mutable with `mutable`
    (e.g. `batch_stats` in training).
    """
    outputs, collections = model.apply(variables, images, train=train, mutable=[*mutable, COLLECTION])
    updated = {name: value for name, value in collections.items() if name != COLLECTION}
    return outputs, stages_from(collections), updated


def stage_channels(model: nn.Module) -> tuple[int, ...]:
    """The original network's `get_stage_channels()` (its own list, quirks included: e.g. the
    CIFAR and ImageNet ResNet18 say 256, 512, 1024, 2048 like the ResNet50)."""
    if not hasattr(model, "original_stage_channels"):
        raise ConfigError(
            f"{type(model).__name__} has no stage channels: the original network defines no "
            "get_stage_channels(); use a method that does not need them"
        )
    return tuple(model.original_stage_channels())


def at_path(tree: Any, path: Path) -> Any:
    """The subtree of `tree` (e.g. a `params` or `batch_stats` pytree) at `path`, submodule names."""
    for name in path:
        tree = tree[name]
    return tree


def bn_before_relu(model: nn.Module) -> tuple[Path, ...]:
    """The paths (tuples of submodule names, as in `params`/`batch_stats`) of the BatchNorms that
    the original network's `get_bn_before_relu()` returns, in its order."""
    if not hasattr(model, "original_bn_before_relu"):
        raise ConfigError(
            f"{type(model).__name__} has no BatchNorms before ReLUs: the original network's "
            "get_bn_before_relu() raises for it; use a method that does not need them"
        )
    return tuple(model.original_bn_before_relu())
