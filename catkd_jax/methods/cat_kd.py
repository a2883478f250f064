"""CAT-KD: class attention transfer (Guo et al. 2023)."""

from __future__ import annotations

import jax

from catkd_jax import losses
from catkd_jax.methods.base import LossTerms, Method, Outputs, require_choice, weighted_cross_entropy


class CATKD(Method):
    """ce_weight * CE + beta * CAT (Guo et al. 2023): the student's CAMs, pooled to
    `resolution` x `resolution`, regress the frozen teacher's (`config.cat_kd`)."""

    def loss_terms(self, student: Outputs, teacher: Outputs, labels: jax.Array, epoch: jax.Array) -> LossTerms:
        del epoch
        settings = self.config.cat_kd
        class_mask = None
        if settings.num_cams:
            # The original ranks classes by the teacher's CAM-head logits, which carry no bias.
            scores = teacher.logits if teacher.bias is None else teacher.logits - teacher.bias
            class_mask = losses.select_cam_classes(scores, settings.num_cams, settings.cam_strategy)
        require_choice("cat_kd", settings, "class_weighting", ("uniform", "teacher_prob"))
        require_choice("cat_kd", settings, "teacher_cams", ("classifier", "gradcam"))
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
        return terms | weighted_cross_entropy(settings, student, labels)
