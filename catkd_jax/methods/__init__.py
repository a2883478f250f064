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

import flax.linen as nn
import ml_collections

from catkd_jax.errors import ConfigError
from catkd_jax.methods.base import LossTerms, Method, Outputs, count_parameters
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


__all__ = ["METHODS", "LossTerms", "Method", "Outputs", "count_parameters", "create", "get_method",
           "needs_teacher"]
