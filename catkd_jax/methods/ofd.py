"""OFD, "A Comprehensive Overhaul of Feature Distillation" (Heo et al., ICCV 2019), as the original
code's distiller computes it."""

from __future__ import annotations

import jax
import numpy as np

from catkd_jax import feature_losses
from catkd_jax.errors import ConfigError
from catkd_jax.methods.base import Method, stage_shapes, weighted_cross_entropy
from catkd_jax.methods.modules import OFDConnectors
from catkd_jax.models import stages as model_stages
from catkd_jax.types import Variables


def _aligned(*lists):
    """The original's `_align_list`: every list cut to the shortest's length, keeping its last entries."""
    length = min(len(entries) for entries in lists)
    return [tuple(entries[len(entries) - length:]) for entries in lists]


class OFD(Method):
    """`ce_weight * CE + feat_weight * ofd_loss`: the student's `preact_feats[1:]`, each through a
    connector (1x1 conv + BatchNorm, `OFDConnectors`), against the teacher's `preact_feats[1:]`
    by the partial L2 distance below each channel's margin (`feature_losses.ofd_loss`).

    As in the original:
    - The teacher runs in training mode: the original's `OFD.train()` puts every child module,
      the teacher included, in training mode, so the teacher's BatchNorms normalise with the
      batch's statistics (`teacher_in_train_mode`; BatchNorm folding must be off).
    - The margins come from the teacher's BatchNorms before its ReLUs (`get_bn_before_relu`), at
      the start of training (`feature_losses.ofd_margins`); they are constants (the original keeps
      them in a plain list, outside its state dict): the "constants" collection here.
    - The connectors are built for the networks' `get_stage_channels()[1:]`; both networks' lists
      and features are aligned from their last entries, the margins indexed from their first.
    """

    reads_stages = True
    teacher_in_train_mode = True
    torch_module_name = "connectors.connectors"

    def __init__(self, config, student, teacher):
        super().__init__(config, student, teacher)
        self.teacher_bns = model_stages.bn_before_relu(teacher)
        teacher_channels, student_channels = _aligned(model_stages.stage_channels(teacher)[1:],
                                                      model_stages.stage_channels(student)[1:])
        student_feats, teacher_feats = _aligned(stage_shapes(student, (32, 32, 3)).preact_feats[1:],
                                                stage_shapes(teacher, (32, 32, 3)).preact_feats[1:])
        if len(student_feats) != len(student_channels):
            raise ConfigError(f"OFD pairs the networks' get_stage_channels()[1:] ({len(student_channels)} stages) with "
                              f"their preact_feats[1:] ({len(student_feats)} pairs), which these networks do not "
                              "match (the original fails on them too); choose networks with pre-ReLU stages")
        for name, channels, feats in (("student", student_channels, student_feats),
                                      ("teacher", teacher_channels, teacher_feats)):
            if tuple(feat.shape[-1] for feat in feats) != channels:
                raise ConfigError(
                    f"OFD builds its connectors for the {name}'s get_stage_channels() {channels}, but its "
                    f"preact_feats have {tuple(feat.shape[-1] for feat in feats)} channels (the original fails on "
                    "this pair too); choose another pair")
        if len(self.teacher_bns) < len(teacher_channels):
            raise ConfigError(f"OFD takes a margin per stage pair ({len(teacher_channels)}) from the teacher's "
                              f"BatchNorms before ReLUs, but it has {len(self.teacher_bns)}; choose another teacher")
        self.student_feats = student_feats
        self.connectors = OFDConnectors(teacher_channels, config.ofd.connector_kernel_size)

    def init(self, key: jax.Array, teacher_variables: Variables | None = None, num_train: int = 0) -> Variables:
        del num_train
        if teacher_variables is None:
            raise ValueError("OFD's margins come from the teacher's variables: pass them to init")
        margins = []
        for path, channels in zip(self.teacher_bns, self.connectors.teacher_channels):
            batch_norm = jax.device_get(model_stages.at_path(teacher_variables["params"], path))
            if batch_norm["scale"].shape != (channels,):
                raise ConfigError(f"OFD's margin of a {channels}-channel stage comes from the teacher's BatchNorm "
                                  f"{'/'.join(path)}, which has {batch_norm['scale'].shape[0]} channels (the original "
                                  "fails on this pair too); choose another pair")
            margins.append(feature_losses.ofd_margins(np.asarray(batch_norm["scale"]), np.asarray(batch_norm["bias"])))
        variables = self.connectors.init(key, [np.zeros(feat.shape, np.float32) for feat in self.student_feats])
        return {**variables, "constants": {"margins": {str(index): margin for index, margin in enumerate(margins)}}}

    def __call__(self, variables, student, teacher, batch, epoch):
        del epoch
        settings = self.config.ofd
        student_feats, teacher_feats = _aligned(student.stages.preact_feats[1:], teacher.stages.preact_feats[1:])
        connected, updates = self.connectors.apply({name: variables[name] for name in ("params", "batch_stats")},
                                                   list(student_feats), mutable=["batch_stats"])
        terms = weighted_cross_entropy(settings, student, batch["label"])
        margins = variables["constants"]["margins"]
        terms["loss_kd"] = settings.feat_weight * feature_losses.ofd_loss(
            connected, teacher_feats, [margins[str(index)] for index in range(len(connected))])
        return terms, updates
