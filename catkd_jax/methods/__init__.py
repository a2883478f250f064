"""Distillation methods: `config.method` names a `Method`, which turns both networks' outputs
into named loss terms, with the modules and state it owns (`methods.base`).

    method = methods.create(config, student, teacher)   # flax modules; teacher None for vanilla
    variables = method.init(key)                         # {} for methods without modules
    terms, new_state = method(variables, student_outputs, teacher_outputs, batch, epoch)

The training loss is the sum of the terms. Families: `logits` (vanilla, KD, DKD), `cat_kd`,
`features` (the mdistiller toolbox's FitNet, AT, NST, PKT, KDSVD, RKD, SP and VID), `ofd`, `crd`,
`review` (its ReviewKD).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import ml_collections

from catkd_jax.errors import ConfigError
from catkd_jax.methods.base import LossTerms, Method, Outputs, count_parameters, stage_shapes
from catkd_jax.methods.cat_kd import CATKD
from catkd_jax.methods.crd import CRD
from catkd_jax.methods.features import AT, KDSVD, NST, PKT, RKD, SP, VID, FitNet
from catkd_jax.methods.logits import DKD, KD, Vanilla
from catkd_jax.methods.ofd import OFD
from catkd_jax.methods.review import ReviewKD

METHODS: dict[str, type[Method]] = {
    "vanilla": Vanilla,
    "cat_kd": CATKD,
    "kd": KD,
    "dkd": DKD,
    "fitnet": FitNet,
    "at": AT,
    "nst": NST,
    "pkt": PKT,
    "kdsvd": KDSVD,
    "rkd": RKD,
    "sp": SP,
    "vid": VID,
    "ofd": OFD,
    "crd": CRD,
    "reviewkd": ReviewKD,
}


def get_method(name: str) -> type[Method]:
    if name not in METHODS:
        raise ConfigError(f"unknown method {name!r}; config.method must be one of {', '.join(METHODS)}")
    return METHODS[name]


def create(config: ml_collections.ConfigDict, student: nn.Module, teacher: nn.Module | None) -> Method:
    """`config.method` for these networks (the teacher's module; None for vanilla training)."""
    return get_method(config.method)(config, student, teacher)


def needs_teacher(name: str) -> bool:
    return get_method(name).needs_teacher


def fitted_settings(method: str, student: nn.Module, teacher: nn.Module,
                    image_shape: tuple[int, ...] = (32, 32, 3)) -> dict[str, Any]:
    """`Method.fitted_settings` of `method` for these networks at `image_shape`, from the default
    config's values (ReviewKD's lists, CRD's embedding inputs; `{}` for most methods)."""
    from catkd_jax import default_config  # pylint: disable=import-outside-toplevel  # (it imports this module)

    return get_method(method).fitted_settings(default_config.get_config(), stage_shapes(student, tuple(image_shape)),
                                              stage_shapes(teacher, tuple(image_shape)))


__all__ = ["METHODS", "LossTerms", "Method", "Outputs", "count_parameters", "create", "fitted_settings",
           "get_method", "needs_teacher"]
