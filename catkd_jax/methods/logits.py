"""Methods that read only the networks' logits: vanilla training, KD and DKD."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from catkd_jax import losses
from catkd_jax.methods.base import LossTerms, Method, Outputs


class Vanilla(Method):
    """Cross-entropy only (teachers and students trained alone)."""

    needs_teacher = False

    def loss_terms(self, student: Outputs, teacher: None, labels: jax.Array, epoch: jax.Array) -> LossTerms:
        del teacher, epoch
        return {"loss_ce": losses.cross_entropy(student.logits, labels)}


class KD(Method):
    """ce_weight * CE + kd_weight * KD (Hinton et al. 2015)."""

    def loss_terms(self, student: Outputs, teacher: Outputs, labels: jax.Array, epoch: jax.Array) -> LossTerms:
        del epoch
        settings = self.config.kd
        return {
            "loss_ce": settings.ce_weight * losses.cross_entropy(student.logits, labels),
            "loss_kd": settings.kd_weight * losses.kd_loss(student.logits, teacher.logits, settings.temperature),
        }


class DKD(Method):
    """ce_weight * CE + min(epoch / warmup_epochs, 1) * DKD (Zhao et al. 2022); epoch is 1-based."""

    def loss_terms(self, student: Outputs, teacher: Outputs, labels: jax.Array, epoch: jax.Array) -> LossTerms:
        settings = self.config.dkd
        warmup = jnp.minimum(epoch / settings.warmup_epochs, 1.0) if settings.warmup_epochs else 1.0
        return {
            "loss_ce": settings.ce_weight * losses.cross_entropy(student.logits, labels),
            "loss_dkd": warmup
            * losses.dkd_loss(
                student.logits, teacher.logits, labels, settings.alpha, settings.beta, settings.temperature
            ),
        }
