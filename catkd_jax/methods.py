"""Distillation methods: a name -> a pure function from model outputs to named loss terms.

A method receives the student's and (when it needs one) the frozen teacher's outputs and returns
`{"loss_<term>": scalar}`; the training loss is the sum of the terms. Weights are read from the
config, which is static at trace time.
"""

from __future__ import annotations

from typing import Callable, Optional

import flax
import jax
import jax.numpy as jnp
import ml_collections

from catkd_jax import losses
from catkd_jax.errors import ConfigError


@flax.struct.dataclass
class Outputs:
    """What a method may use of one network's forward pass."""

    logits: jax.Array  # [N, C]
    features: jax.Array  # [N, h, w, K], the map the classifier pools
    kernel: jax.Array  # [K, C], the classifier kernel
    bias: Optional[jax.Array]  # [C], or None for a bias-free (CAM-head) classifier

    def head(self, features: jax.Array) -> jax.Array:
        """`[N, h, w, K] -> [N, C]`: the classifier on the average-pooled map (`logits` of `features`)."""
        logits = jnp.mean(features, axis=(1, 2)) @ self.kernel
        return logits if self.bias is None else logits + self.bias


LossTerms = dict[str, jax.Array]
Method = Callable[
    [ml_collections.ConfigDict, Outputs, Optional[Outputs], jax.Array, jax.Array], LossTerms
]


def vanilla(config, student: Outputs, teacher: None, labels: jax.Array, epoch: jax.Array) -> LossTerms:
    """Cross-entropy only (teachers and students trained alone)."""
    del config, teacher, epoch
    return {"loss_ce": losses.cross_entropy(student.logits, labels)}


def _is_zero(weight: float | jax.Array) -> bool:
    """True for a literal 0 weight; a swept (traced) weight always keeps its term."""
    return isinstance(weight, (int, float)) and weight == 0


def _require_choice(settings: ml_collections.ConfigDict, name: str, choices: tuple[str, ...]) -> None:
    if settings[name] not in choices:
        raise ConfigError(
            f"config.cat_kd.{name} must be {' or '.join(repr(choice) for choice in choices)}, got {settings[name]!r}"
        )


def cat_kd(config, student: Outputs, teacher: Outputs, labels: jax.Array, epoch: jax.Array) -> LossTerms:
    """ce_weight * CE + beta * CAT (Guo et al. 2023)."""
    del epoch
    settings = config.cat_kd
    class_mask = None
    if settings.num_cams:
        # The original ranks classes by the teacher's CAM-head logits, which carry no bias.
        scores = teacher.logits if teacher.bias is None else teacher.logits - teacher.bias
        class_mask = losses.select_cam_classes(scores, settings.num_cams, settings.cam_strategy)
    _require_choice(settings, "class_weighting", ("uniform", "teacher_prob"))
    _require_choice(settings, "teacher_cams", ("classifier", "gradcam"))
    class_weights = None
    if settings.class_weighting == "teacher_prob":
        class_weights = losses.teacher_probability_weights(teacher.logits)
    if settings.teacher_cams == "classifier":
        teacher_cams = losses.class_activation_maps(teacher.features, teacher.kernel)
    else:
        teacher_cams = losses.grad_cams(teacher.features, teacher.head)
    terms = {
        "loss_cat": settings.beta
        * losses.cam_transfer_loss(
            losses.class_activation_maps(student.features, student.kernel),
            jax.lax.stop_gradient(teacher_cams),
            resolution=settings.resolution,
            normalize=settings.normalize,
            binarize=settings.binarize,
            class_mask=class_mask,
            class_weights=class_weights,
        )
    }
    if not _is_zero(settings.ce_weight):
        terms["loss_ce"] = settings.ce_weight * losses.cross_entropy(student.logits, labels)
    return terms


def kd(config, student: Outputs, teacher: Outputs, labels: jax.Array, epoch: jax.Array) -> LossTerms:
    """ce_weight * CE + kd_weight * KD (Hinton et al. 2015)."""
    del epoch
    settings = config.kd
    return {
        "loss_ce": settings.ce_weight * losses.cross_entropy(student.logits, labels),
        "loss_kd": settings.kd_weight
        * losses.kd_loss(student.logits, teacher.logits, settings.temperature),
    }


def dkd(config, student: Outputs, teacher: Outputs, labels: jax.Array, epoch: jax.Array) -> LossTerms:
    """ce_weight * CE + min(epoch / warmup_epochs, 1) * DKD (Zhao et al. 2022); epoch is 1-based."""
    settings = config.dkd
    warmup = jnp.minimum(epoch / settings.warmup_epochs, 1.0) if settings.warmup_epochs else 1.0
    return {
        "loss_ce": settings.ce_weight * losses.cross_entropy(student.logits, labels),
        "loss_dkd": warmup
        * losses.dkd_loss(
            student.logits, teacher.logits, labels, settings.alpha, settings.beta, settings.temperature
        ),
    }


METHODS: dict[str, Method] = {"vanilla": vanilla, "cat_kd": cat_kd, "kd": kd, "dkd": dkd}


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise ConfigError(f"unknown method {name!r}; config.method must be one of {', '.join(METHODS)}")
    return METHODS[name]


def needs_teacher(name: str) -> bool:
    get_method(name)
    return name != "vanilla"
