"""CRD, "Contrastive Representation Distillation" (Tian et al., ICLR 2020), as the original code's
distiller and its `CRDTrainer` compute it."""

from __future__ import annotations

from typing import Any, Iterator, Mapping

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from catkd_jax import convert, feature_losses
from catkd_jax.errors import ConfigError
from catkd_jax.data.base import CONTRAST_MODES
from catkd_jax.methods.base import Method, require_choice, stage_shapes, weighted_cross_entropy
from catkd_jax.methods.modules import CRDEmbeddings
from catkd_jax.types import Variables


class CRD(Method):
    """`ce_weight * CE + feat_weight * (NCE(student) + NCE(teacher))` on the networks'
    `pooled_feat`, each embedded (linear + l2 norm, `embed_s`, `embed_t`) and scored against a
    memory bank of the other network's embeddings, one row per training example.

    State (the "memory" collection, the original's `ContrastMemory` buffers): `student` and
    `teacher`, `[num_train, feat_dim]` banks (the original's `memory_v1`, `memory_v2`),
    initialised U(-s, s) with `s = 1 / sqrt(feat_dim / 3)`; each step replaces the batch's rows by
    `momentum * row + (1 - momentum) * embedding`, normalised; and the two partition constants Z
    (`z_student`, `z_teacher`), -1 until the first step sets them from its mean score.

    Each batch carries its examples' bank rows ("index") and contrastive rows ("contrast_index",
    `[B, 1 + num_negatives]`, the positive first): `train_batches` asks the data source for them
    (`DataSource.contrastive_train_batches`, the original's CIFAR-100 "sample" loader).

    As the original on one GPU: every example of the batch updates the banks (the original's
    `DataParallel` over several GPUs would keep only the first replica's updates).
    """

    reads_stages = True

    def __init__(self, config, student, teacher):
        super().__init__(config, student, teacher)
        settings = config.crd
        fitted = self.fitted_settings(config, stage_shapes(student, (32, 32, 3)), stage_shapes(teacher, (32, 32, 3)))
        for name, setting in (("student", "student_dim"), ("teacher", "teacher_dim")):
            width = fitted[f"crd.{setting}"]
            if settings[setting] != width:
                raise ConfigError(f"config.crd.{setting}={settings[setting]} but the {name}'s pooled_feat has {width} "
                                  f"features; set config.crd.{setting}={width}")
        require_choice("crd", settings, "mode", CONTRAST_MODES)
        self.embeddings = CRDEmbeddings(settings.feat_dim)

    @classmethod
    def fitted_settings(cls, config, student, teacher):
        """The embeddings' inputs: the networks' `pooled_feat` widths."""
        del config
        return {"crd.student_dim": student.pooled_feat.shape[-1], "crd.teacher_dim": teacher.pooled_feat.shape[-1]}

    @classmethod
    def train_batches(cls, config: ml_collections.ConfigDict, source: Any, epoch: int,
                      first_step: int = 0) -> Iterator[dict[str, np.ndarray]]:
        return source.contrastive_train_batches(epoch, first_step, config.crd.num_negatives, config.crd.mode)

    def init(self, key: jax.Array, teacher_variables: Variables | None = None, num_train: int = 0) -> Variables:
        del teacher_variables
        if num_train < 1:
            raise ValueError("CRD's memory banks have a row per training example: pass num_train to init")
        settings = self.config.crd
        embeddings_key, student_key, teacher_key = jax.random.split(key, 3)
        variables = self.embeddings.init(embeddings_key, jnp.zeros((1, settings.student_dim)),
                                         jnp.zeros((1, settings.teacher_dim)))
        bound = 1.0 / np.sqrt(settings.feat_dim / 3)
        bank = lambda bank_key: jax.random.uniform(bank_key, (num_train, settings.feat_dim), jnp.float32, -bound, bound)
        memory = {"student": bank(student_key), "teacher": bank(teacher_key),
                  "z_student": jnp.float32(-1), "z_teacher": jnp.float32(-1)}
        return {**variables, "memory": memory}

    def variables_from_torch(self, state_dict: Mapping[str, Any],
                             teacher_variables: Variables | None = None) -> Variables:
        """The embeddings, banks and constants of the original's `embed_s`, `embed_t` and
        `contrast` (`params`: K, T, Z_v1, Z_v2, momentum)."""
        state = {key.removeprefix("module."): np.asarray(value, np.float32) for key, value in state_dict.items()}
        template = jax.eval_shape(self.embeddings.init, jax.random.key(0), jnp.zeros((1, self.config.crd.student_dim)),
                                  jnp.zeros((1, self.config.crd.teacher_dim)))
        params = {name: convert.module_from_torch(state, {"params": template["params"][name]}, name)["params"]
                  for name in ("embed_s", "embed_t")}
        constants = state["contrast.params"]
        memory = {"student": state["contrast.memory_v1"], "teacher": state["contrast.memory_v2"],
                  "z_student": constants[2], "z_teacher": constants[3]}
        return {"params": params, "memory": memory}

    def torch_arrays(self, variables: Variables) -> dict[str, np.ndarray]:
        arrays = {}
        for name, params in variables.get("params", {}).items():
            arrays |= convert.module_torch_arrays({"params": params}, name)
        if "memory" in variables:
            memory, settings = variables["memory"], self.config.crd
            arrays["contrast.memory_v1"] = np.asarray(memory["student"], np.float32)
            arrays["contrast.memory_v2"] = np.asarray(memory["teacher"], np.float32)
            arrays["contrast.params"] = np.asarray([settings.num_negatives, settings.temperature, memory["z_student"],
                                                    memory["z_teacher"], settings.momentum], np.float32)
        return arrays

    def extra_parameters(self, variables: Variables) -> int:
        """The original counts its banks and its 5 constants (K, T, the Zs, momentum) too."""
        memory = variables["memory"]
        return super().extra_parameters(variables) + memory["student"].size + memory["teacher"].size + 5

    def __call__(self, variables, student, teacher, batch, epoch):
        del epoch
        settings = self.config.crd
        memory = variables["memory"]
        num_data = memory["student"].shape[0]
        student_embedding, teacher_embedding = self.embeddings.apply(
            {"params": variables["params"]}, student.stages.pooled_feat, teacher.stages.pooled_feat)
        # The original's out_v1 scores the student's embedding against the teacher's bank, and out_v2 the reverse.
        student_scores = feature_losses.crd_scores(memory["teacher"], batch["contrast_index"], student_embedding,
                                                   settings.temperature)
        teacher_scores = feature_losses.crd_scores(memory["student"], batch["contrast_index"], teacher_embedding,
                                                   settings.temperature)
        z_student = feature_losses.crd_normalizer(memory["z_student"], student_scores, num_data)
        z_teacher = feature_losses.crd_normalizer(memory["z_teacher"], teacher_scores, num_data)
        loss = (feature_losses.crd_nce_loss(student_scores / z_student, num_data)
                + feature_losses.crd_nce_loss(teacher_scores / z_teacher, num_data))
        terms = weighted_cross_entropy(settings, student, batch["label"])
        terms["loss_kd"] = settings.feat_weight * loss
        index = batch["index"]
        new_memory = {
            "student": feature_losses.crd_memory_update(memory["student"], index, student_embedding, settings.momentum),
            "teacher": feature_losses.crd_memory_update(memory["teacher"], index, teacher_embedding, settings.momentum),
            "z_student": z_student, "z_teacher": z_teacher,
        }
        return terms, {"memory": new_memory}
