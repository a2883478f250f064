"""What every distillation method is: the outputs it reads, and the object that turns them into
loss terms with the modules and state it owns."""

from __future__ import annotations

import functools
from typing import Any, ClassVar, Iterator, Mapping, Optional

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from catkd_jax import convert, losses
from catkd_jax.errors import ConfigError
from catkd_jax.models import stages as model_stages
from catkd_jax.types import Variables


@flax.struct.dataclass
class Outputs:
    """What a method may use of one network's forward pass."""

    logits: jax.Array  # [N, C]
    features: jax.Array  # [N, h, w, K], the map the classifier pools
    kernel: jax.Array  # [K, C], the classifier kernel
    bias: Optional[jax.Array]  # [C], or None for a bias-free (CAM-head) classifier
    # The original's feats dict (`models.stages`), for methods with `reads_stages`; else None.
    stages: Optional[model_stages.Stages] = None

    def head(self, features: jax.Array) -> jax.Array:
        """`[N, h, w, K] -> [N, C]`: the classifier on the average-pooled map (`logits` of `features`)."""
        logits = jnp.mean(features, axis=(1, 2)) @ self.kernel
        return logits if self.bias is None else logits + self.bias


LossTerms = dict[str, jax.Array]


class Method:
    """A distillation method: the loss terms of one step, from both networks' outputs.

    A method may own modules (a regressor, embeddings) and state (running statistics, memory
    banks, constants derived from the teacher's weights): `init` makes their variables,
    `{"params": ..., <other collections>: ...}` (`{}` for none). Their "params" train with the
    student's optimiser (the original's `get_learnable_parameters`) and are saved in the run's
    checkpoint; evaluation, export and probes see the student only. `__call__` returns the
    step's terms (their sum is the loss) and the new values of the non-"params" collections.

    Class attributes: `needs_teacher` (vanilla training has none), `reads_stages` (the
    networks' intermediate features, `Outputs.stages`, are computed for it) and
    `teacher_in_train_mode` (the teacher's BatchNorms use the batch's statistics, as in a
    distiller whose `train()` puts the teacher in training mode).
    The config is static at trace time, except a swept field, which is a traced scalar.
    """

    needs_teacher: ClassVar[bool] = True
    reads_stages: ClassVar[bool] = False
    teacher_in_train_mode: ClassVar[bool] = False
    # The original distiller's attribute that holds the method's modules ('' for none).
    torch_module_name: ClassVar[str] = ""

    def __init__(self, config: ml_collections.ConfigDict, student: nn.Module, teacher: nn.Module | None):
        """`student`, `teacher`: the networks' modules, which a method's own modules are shaped by."""
        del student, teacher
        self.config = config

    def init(self, key: jax.Array, teacher_variables: Variables | None = None, num_train: int = 0) -> Variables:
        """The method's own variables, initialised as the original initialises its modules.

        `teacher_variables`: the frozen teacher's, as the train step receives them (None without
        a teacher), for a method whose constants derive from the teacher's weights;
        `num_train`: the training examples, for a method with state per example (memory banks).
        """
        del key, teacher_variables, num_train
        return {}

    @classmethod
    def fitted_settings(cls, config: ml_collections.ConfigDict, student: model_stages.Stages,
                        teacher: model_stages.Stages) -> dict[str, Any]:
        """The config fields (dotted: `{"reviewkd.shapes": ...}`) that the method reads from the
        config as the original does and that must fit the networks, fitted to these networks'
        stages (or their shapes), starting from `config`'s values; `{}` when none must fit."""
        del config, student, teacher
        return {}

    def check_fit(self, image_shape: tuple[int, ...]) -> None:
        """Raises `ConfigError` when the method's settings do not fit the networks on images of
        `image_shape` `[H, W, 3]` (settings the original reads from its config, as ReviewKD's
        lists); the training loop asks before it writes the workdir. Nothing to check by default."""
        del image_shape

    @classmethod
    def train_batches(cls, config: ml_collections.ConfigDict, source: Any, epoch: int,
                      first_step: int = 0) -> Iterator[dict[str, np.ndarray]]:
        """The training batches of `epoch` from step `first_step` that the method reads from
        `source` (a `catkd_jax.data.DataSource`): its `train_batches`, unless the method needs more."""
        del config
        return source.train_batches(epoch, first_step)

    def variables_from_torch(self, state_dict: Mapping[str, Any],
                             teacher_variables: Variables | None = None) -> Variables:
        """The method's variables from the original distiller's state dict, so that a step can
        start from the original's state (its `student.*` and `teacher.*` keys are ignored).

        The "params" and "batch_stats" of the module `torch_module_name` come from the state dict;
        other collections (constants the original keeps outside its state dict) from `init`.
        """
        initial = self.init(jax.random.key(0), teacher_variables)
        converted = {name: value for name, value in initial.items() if name in convert.MODULE_COLLECTIONS}
        if not converted:
            return initial
        return initial | convert.module_from_torch(state_dict, converted, self.torch_module_name)

    def torch_arrays(self, variables: Variables) -> dict[str, np.ndarray]:
        """`variables_from_torch`'s inverse: the method's variables (or gradients, or changes, in
        their layout) under the original distiller's state-dict names, in PyTorch's layout."""
        if not self.torch_module_name:
            return {}
        return convert.module_torch_arrays(variables, self.torch_module_name)

    def extra_parameters(self, variables: Variables) -> int:
        """What the original's `get_extra_parameters()` counts of the method's variables: its
        parameters' elements (`count_parameters`), unless the method counts more."""
        return count_parameters(variables)

    def __call__(
        self, variables: Variables, student: Outputs, teacher: Outputs | None, batch: dict[str, jax.Array],
        epoch: jax.Array,
    ) -> tuple[LossTerms, Variables]:
        """`(terms, updated non-"params" collections)` of one training step; `epoch` is 1-based."""
        del variables
        return self.loss_terms(student, teacher, batch["label"], epoch), {}

    def loss_terms(self, student: Outputs, teacher: Outputs | None, labels: jax.Array, epoch: jax.Array) -> LossTerms:
        """The terms of a method without modules or state."""
        raise NotImplementedError


def is_zero(weight: float | jax.Array) -> bool:
    """True for a literal 0 weight; a swept (traced) weight always keeps its term."""
    return isinstance(weight, (int, float)) and weight == 0


def require_choice(section: str, settings: ml_collections.ConfigDict, name: str, choices: tuple[str, ...]) -> None:
    if settings[name] not in choices:
        raise ConfigError(
            f"config.{section}.{name} must be {' or '.join(repr(choice) for choice in choices)}, got {settings[name]!r}"
        )


def weighted_cross_entropy(settings: ml_collections.ConfigDict, student: Outputs, labels: jax.Array) -> LossTerms:
    """`{"loss_ce": settings.ce_weight * CE}` (nothing for a literal weight 0)."""
    if is_zero(settings.ce_weight):
        return {}
    return {"loss_ce": settings.ce_weight * losses.cross_entropy(student.logits, labels)}


@functools.lru_cache(maxsize=None)
def stage_shapes(model: nn.Module, image_shape: tuple[int, ...]) -> model_stages.Stages:
    """The shapes (`jax.ShapeDtypeStruct`s) of `model`'s stages for one image of `image_shape`
    `[H, W, 3]`: what the original's `get_feat_shapes` measures to build a method's modules."""

    def stages_of_one_image() -> model_stages.Stages:
        images = jnp.zeros((1, *image_shape), jnp.float32)
        variables = model.init(jax.random.key(0), images, train=False)
        return model_stages.apply_with_stages(model, variables, images, train=False)[1]

    return jax.eval_shape(stages_of_one_image)


def count_parameters(variables: Variables) -> int:
    """Elements of the "params" collection: the original's `get_extra_parameters` of a method."""
    return sum(leaf.size for leaf in jax.tree_util.tree_leaves(variables.get("params", {})))

