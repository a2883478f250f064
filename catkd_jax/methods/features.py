"""The feature-distillation baselines of the mdistiller toolbox: FitNet, AT, NST, PKT, KDSVD,
RKD, SP and VID, as its distillers' `forward_train` computes them.

Each is `ce_weight * CE + feat_weight * <its loss>` (`config.<method>`, the original's defaults),
logged as `loss_ce` and `loss_kd` like the original's. Each reads the networks' stages
(`catkd_jax.models.stages`: `feats[0]` is the stem's output, `feats[i]` stage i's after its
ReLU, `pooled_feat` what the classifier reads); the losses themselves are in
`catkd_jax.feature_losses`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from catkd_jax import feature_losses
from catkd_jax.errors import ConfigError
from catkd_jax.methods.base import LossTerms, Method, Outputs, stage_shapes, weighted_cross_entropy
from catkd_jax.methods.modules import ConvReg, VIDRegressors
from catkd_jax.types import Variables


def _paired_stages(student: Outputs, teacher: Outputs) -> tuple[tuple[jax.Array, ...], tuple[jax.Array, ...]]:
    """Both networks' `feats[1:]` (every stage after the stem), paired from the first as the
    original's `zip` pairs them: the network with more stages has its last ones ignored."""
    count = min(len(student.stages.feats), len(teacher.stages.feats)) - 1
    return student.stages.feats[1:1 + count], teacher.stages.feats[1:1 + count]


class _FeatureMethod(Method):
    """A method of `ce_weight * CE + feat_weight * loss(student, teacher)` without modules."""

    reads_stages = True
    section: str  # its config section

    def feature_loss(self, student: Outputs, teacher: Outputs) -> jax.Array:
        raise NotImplementedError

    def loss_terms(self, student: Outputs, teacher: Outputs, labels: jax.Array, epoch: jax.Array) -> LossTerms:
        del epoch
        settings = self.config[self.section]
        terms = weighted_cross_entropy(settings, student, labels)
        return terms | {"loss_kd": settings.feat_weight * self.feature_loss(student, teacher)}


class AT(_FeatureMethod):
    """Attention transfer (Zagoruyko & Komodakis 2017) on every stage after the stem: the original
    reads `feats[1:]` of both networks, pairs them from the first (`_paired_stages`), and pools
    the larger map of a pair to the smaller's size."""

    section = "at"

    def feature_loss(self, student: Outputs, teacher: Outputs) -> jax.Array:
        return feature_losses.at_loss(*_paired_stages(student, teacher), self.config.at.p)


class NST(_FeatureMethod):
    """Neuron selectivity transfer (Huang & Wang 2017): a squared-polynomial-kernel MMD between
    the channels of each pair of `feats[1:]`, paired like AT's."""

    section = "nst"

    def feature_loss(self, student: Outputs, teacher: Outputs) -> jax.Array:
        return feature_losses.nst_loss(*_paired_stages(student, teacher))


class PKT(_FeatureMethod):
    """Probabilistic knowledge transfer (Passalis & Tefas 2018) on `pooled_feat`: the KL
    divergence between the batch's cosine-similarity distributions."""

    section = "pkt"

    def feature_loss(self, student: Outputs, teacher: Outputs) -> jax.Array:
        return feature_losses.pkt_loss(student.stages.pooled_feat, teacher.stages.pooled_feat)


class KDSVD(_FeatureMethod):
    """KD with singular value decomposition (Lee et al. 2018) on `feats[1:]`, paired like AT's.

    Numerics as the original's (see `feature_losses.kdsvd_loss`): each map is decomposed as the
    PyTorch code reshapes it, NCHW `[N, C*H, W]`; the teacher keeps `k` singular vectors, the
    student `k + 3`, aligned to the teacher's by sign; non-finite values are zeroed. The loss
    depends on the teacher's singular-vector signs, which LAPACK chooses.
    """

    section = "kdsvd"

    def feature_loss(self, student: Outputs, teacher: Outputs) -> jax.Array:
        student_feats, teacher_feats = _paired_stages(student, teacher)
        for index, (f_s, f_t) in enumerate(zip(student_feats, teacher_feats), start=1):
            if f_s.shape[2] != f_t.shape[2]:
                raise ConfigError(
                    f"KDSVD compares stages of equal widths, but the student's feats[{index}] is {f_s.shape[2]} wide "
                    f"and the teacher's {f_t.shape[2]} (the original fails on such pairs too); choose networks whose "
                    "stages have the same sizes, e.g. a ResNet or WideResNet teacher for a CIFAR ResNet student")
        return feature_losses.kdsvd_loss(student_feats, teacher_feats, self.config.kdsvd.k)


class RKD(_FeatureMethod):
    """Relational KD (Park et al. 2019) on `pooled_feat`: distance and angle relations within the
    batch, weighted by `distance_weight` and `angle_weight`."""

    section = "rkd"

    def feature_loss(self, student: Outputs, teacher: Outputs) -> jax.Array:
        settings = self.config.rkd
        return feature_losses.rkd_loss(student.stages.pooled_feat, teacher.stages.pooled_feat,
                                       squared=settings.pdist_squared, eps=settings.pdist_epsilon,
                                       distance_weight=settings.distance_weight, angle_weight=settings.angle_weight)


class SP(_FeatureMethod):
    """Similarity-preserving KD (Tung & Mori 2019) on the last stage only (`feats[-1]`): the
    batch's row-normalised Gram matrices."""

    section = "sp"

    def feature_loss(self, student: Outputs, teacher: Outputs) -> jax.Array:
        return feature_losses.sp_loss([student.stages.feats[-1]], [teacher.stages.feats[-1]])


class FitNet(Method):
    """FitNets (Romero et al. 2015): the student's hint, `feats[hint_layer]`, regressed by a
    `ConvReg` (conv, BatchNorm in training mode, ReLU) onto the teacher's, by mean squared error.

    As in the original, the regressor's conv is chosen from both hints' shapes at
    `fitnet.input_size` (32x32), whatever the training images' size; its BatchNorm's running
    statistics are the method's state, updated every step.
    """

    reads_stages = True
    torch_module_name = "conv_reg"

    def __init__(self, config, student, teacher):
        super().__init__(config, student, teacher)
        layer = config.fitnet.hint_layer
        input_shape = (*config.fitnet.input_size, 3)
        student_feats, teacher_feats = (stage_shapes(model, input_shape).feats for model in (student, teacher))
        if not -len(student_feats) <= layer < min(len(student_feats), len(teacher_feats)):
            raise ConfigError(f"config.fitnet.hint_layer={layer} is not a stage of both networks (they have "
                              f"{len(student_feats)} and {len(teacher_feats)} feats)")
        self.regressor = ConvReg(tuple(student_feats[layer].shape), tuple(teacher_feats[layer].shape))

    def init(self, key: jax.Array, teacher_variables: Variables | None = None, num_train: int = 0) -> Variables:
        del teacher_variables, num_train
        return self.regressor.init(key, jnp.zeros(self.regressor.student_shape, jnp.float32))

    def __call__(self, variables, student, teacher, batch, epoch):
        del epoch
        settings = self.config.fitnet
        regressed, updates = self.regressor.apply(variables, student.stages.feats[settings.hint_layer],
                                                  mutable=["batch_stats"])
        terms = weighted_cross_entropy(settings, student, batch["label"])
        terms["loss_kd"] = settings.feat_weight * feature_losses.fitnet_loss(
            regressed, teacher.stages.feats[settings.hint_layer])
        return terms, updates


class VID(Method):
    """Variational information distillation (Ahn et al. 2019) on `feats[1:]`: per stage pair, a
    regressor of 1x1 convs predicts the teacher's map from the student's (the larger map of the
    pair pooled to the smaller's size), scored by a Gaussian log-likelihood of variance
    `log(1 + exp(log_scale)) + eps`.

    The original's quirks, kept: the regressors are built for the stages' channels at
    `vid.input_size`; every student stage after the stem is paired with the teacher's of the same
    index; and its per-channel `log_scale`s live in a plain Python list, so they are never
    registered, never given to the optimiser, never saved: they stay at their initial value
    `log(exp(init_pred_var - eps) - 1)`, a constant here.
    """

    reads_stages = True
    torch_module_name = "regressors"

    def __init__(self, config, student, teacher):
        super().__init__(config, student, teacher)
        input_shape = (*config.vid.input_size, 3)
        student_feats, teacher_feats = (stage_shapes(model, input_shape).feats[1:] for model in (student, teacher))
        if len(teacher_feats) < len(student_feats):
            raise ConfigError(f"VID pairs each of the student's {len(student_feats)} stages with the teacher's, "
                              f"but the teacher has {len(teacher_feats)}; choose a deeper teacher")
        self.teacher_channels = tuple(feat.shape[-1] for feat in teacher_feats[:len(student_feats)])
        self.student_feats = student_feats
        self.regressors = VIDRegressors(self.teacher_channels)

    def init(self, key: jax.Array, teacher_variables: Variables | None = None, num_train: int = 0) -> Variables:
        del teacher_variables, num_train
        return self.regressors.init(key, [jnp.zeros(feat.shape, jnp.float32) for feat in self.student_feats])

    def __call__(self, variables, student, teacher, batch, epoch):
        del epoch
        settings = self.config.vid
        pairs = [feature_losses.pool_to_common_size(f_s, f_t)
                 for f_s, f_t in zip(student.stages.feats[1:], teacher.stages.feats[1:])]
        predictions = self.regressors.apply(variables, [f_s for f_s, _ in pairs])
        loss = sum(
            feature_losses.vid_loss(prediction, f_t,
                                    feature_losses.vid_initial_log_scale(channels, settings.init_pred_var, settings.eps),
                                    settings.eps)
            for prediction, (_, f_t), channels in zip(predictions, pairs, self.teacher_channels)
        )
        terms = weighted_cross_entropy(settings, student, batch["label"])
        terms["loss_kd"] = settings.feat_weight * loss
        return terms, {}
