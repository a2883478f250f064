"""Model registry: `create_model(name, ...)` builds any architecture of the paper.

CIFAR (32x32 inputs, 100 classes by default): the mdistiller toolbox's models under its names
(resnet8 ... resnet32x4, wrn_*, vgg*, MobileNetV2, ShuffleV1/V2, and its CIFAR ResNet18 and
ResNet50, which keep the names "ResNet18"/"ResNet50" and the aliases "resnet18"/"resnet50").
ImageNet (224x224 inputs, 1000 classes by default): torchvision's ResNets as
"imagenet_resnet18/34/50" (alias "res34") and mdistiller's ImageNet MobileNet as
"imagenet_mobilenet_v1" (alias "MobileNetV1").

Every model: `__call__(x [N, H, W, 3], train: bool) -> (logits [N, C], features [N, h, w, K])`,
where `features` is the map that the classifier (an `nn.Dense` named 'classifier', kernel
`[K, C]`) global-average-pools, so `features @ kernel` are the class activation maps
(8x8 ... 2x2 for the CIFAR models at 32x32, 7x7 for the ImageNet models at 224x224).

Stages (`catkd_jax.models.stages`): on request every model also gives the original network's
intermediate features, its `feats` dict (`feats`, `preact_feats`, `pooled_feat`, NHWC; for
`classifier_bias=False` models what the original's CAM-head `_test` networks return), through
`stages.apply_with_stages` or, for BatchNorm-folded teachers, `folding.apply_folded_with_stages`.
They are sown into the "stages" collection only when it is mutable, so a plain `apply` computes
nothing more. `stages.stage_channels` and `stages.bn_before_relu` are the original's
`get_stage_channels()` and `get_bn_before_relu()`.
"""

from __future__ import annotations

import functools
from typing import Callable

import flax.linen as nn
import jax.numpy as jnp

from catkd_jax.models import (
    imagenet,
    mobilenet_v2,
    resnet,
    resnet_v2,
    shufflenet_v1,
    shufflenet_v2,
    vgg,
    wrn,
)
from catkd_jax.errors import ConfigError
from catkd_jax.models.layers import Dtype

_P = functools.partial

# Canonical names are the mdistiller toolbox's (and so the published checkpoints').
_REGISTRY: dict[str, Callable[..., nn.Module]] = {
    "resnet8": _P(resnet.CifarResNet, depth=8, widths=(16, 16, 32, 64)),
    "resnet14": _P(resnet.CifarResNet, depth=14, widths=(16, 16, 32, 64)),
    "resnet20": _P(resnet.CifarResNet, depth=20, widths=(16, 16, 32, 64)),
    "resnet32": _P(resnet.CifarResNet, depth=32, widths=(16, 16, 32, 64)),
    "resnet44": _P(resnet.CifarResNet, depth=44, widths=(16, 16, 32, 64)),
    "resnet56": _P(resnet.CifarResNet, depth=56, widths=(16, 16, 32, 64)),
    "resnet110": _P(resnet.CifarResNet, depth=110, widths=(16, 16, 32, 64)),
    "resnet8x4": _P(resnet.CifarResNet, depth=8, widths=(32, 64, 128, 256)),
    "resnet32x4": _P(resnet.CifarResNet, depth=32, widths=(32, 64, 128, 256)),
    **wrn.MODELS,
    **vgg.MODELS,
    **mobilenet_v2.MODELS,
    **shufflenet_v1.MODELS,
    **shufflenet_v2.MODELS,
    **resnet_v2.MODELS,
    # Prefixed: "ResNet18"/"ResNet50" are the CIFAR variants' names in the toolbox.
    **imagenet.MODELS,
}

# Short names used by the paper's configuration files, and the toolbox's other spellings.
_ALIASES: dict[str, str] = {
    "res8": "resnet8",
    "res14": "resnet14",
    "res20": "resnet20",
    "res32": "resnet32",
    "res44": "resnet44",
    "res56": "resnet56",
    "res110": "resnet110",
    "res8x4": "resnet8x4",
    "res32x4": "resnet32x4",
    "mobile_half": "MobileNetV2",
    "mv2": "MobileNetV2",
    "shuv1": "ShuffleV1",
    "shuv2": "ShuffleV2",
    "res50": "ResNet50",
    "res18": "ResNet18",
    "res34": "imagenet_resnet34",  # ResNet34 only exists at ImageNet scale
    "MobileNetV1": "imagenet_mobilenet_v1",  # the name of mdistiller's ImageNet student
}


def list_models() -> list[str]:
    """The canonical architecture names."""
    return list(_REGISTRY)


def canonical_name(name: str) -> str:
    """Resolves an alias or a differently-cased name; raises `ConfigError` (a `ValueError`) listing
    valid names."""
    if name in _REGISTRY:
        return name
    if name in _ALIASES:
        return _ALIASES[name]
    by_lower = {key.lower(): key for key in (*_REGISTRY, *_ALIASES)}
    if name.lower() in by_lower:
        return canonical_name(by_lower[name.lower()])
    raise ConfigError(
        f"unknown architecture {name!r}; valid names: {', '.join(_REGISTRY)} "
        f"(aliases: {', '.join(_ALIASES)})"
    )


def create_model(
    name: str,
    num_classes: int | None = None,
    dtype: Dtype = jnp.float32,
    classifier_bias: bool = True,
) -> nn.Module:
    """Builds architecture `name` (canonical or alias) with `num_classes` outputs.

    `num_classes=None` is the architecture's dataset: 100 (CIFAR-100) for the CIFAR models,
    1000 for the ImageNet ones. `dtype` is the activation dtype (parameters, BatchNorm
    statistics stay float32); `classifier_bias=False` drops the classifier's bias, as in
    CAM-head checkpoints.
    """
    builder = _REGISTRY[canonical_name(name)]
    if num_classes is not None:
        builder = functools.partial(builder, num_classes=num_classes)
    return builder(dtype=dtype, classifier_bias=classifier_bias)
