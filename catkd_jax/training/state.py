"""A network's variables and its `TrainState`: from a seed, or from given weights."""

from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from catkd_jax import checkpoints, methods, runs
from catkd_jax.errors import ConfigError, UserError
from catkd_jax.training.optim import create_optimizer
from catkd_jax.types import Variables


def activation_dtype(config: ml_collections.ConfigDict) -> jnp.dtype:
    if config.dtype not in ("float32", "bfloat16"):
        raise ConfigError(f"config.dtype must be 'float32' or 'bfloat16', got {config.dtype!r}")
    return jnp.dtype(config.dtype)


def initialize(model: flax.linen.Module, key: jax.Array, image_shape: tuple[int, ...]) -> Variables:
    """`{"params", "batch_stats"}` of `model` for images of `image_shape` `[H, W, 3]`."""
    return _initializer(model, tuple(image_shape))(key)


@functools.lru_cache(maxsize=None)
def _initializer(model: flax.linen.Module, image_shape: tuple[int, ...]) -> Callable[[jax.Array], Variables]:
    """`initialize` of `model` as a function of the key, traced and compiled once per process for
    all keys (and all runs that start in it)."""
    images = np.zeros((1, *image_shape), np.float32)  # NumPy: never a tracer of the caller's transformation
    init = jax.jit(functools.partial(model.init, train=False))
    return lambda key: init(key, images)


@flax.struct.dataclass
class TrainState:
    """One run's training state: the student's, and that of the method's own modules.

    `method_params` train with the student's optimiser (`method_opt_state`: the same SGD over
    them, as the original's one optimiser over both); `method_state` holds the method's other
    collections (running statistics, memory banks). All three are `{}` for a method without
    modules, and then absent from `as_dict`, the saved form.
    """

    step: jax.Array
    params: Variables
    batch_stats: Variables
    opt_state: optax.OptState
    method_params: Variables = flax.struct.field(default_factory=dict)
    method_state: Variables = flax.struct.field(default_factory=dict)
    method_opt_state: optax.OptState = flax.struct.field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        saved = dict(step=self.step, params=self.params, batch_stats=self.batch_stats, opt_state=self.opt_state)
        if self.method_params or self.method_state:
            saved.update(method_params=self.method_params, method_state=self.method_state,
                         method_opt_state=self.method_opt_state)
        return saved


def create_train_state(
    variables: Variables, tx: optax.GradientTransformation, method_variables: Variables | None = None
) -> TrainState:
    """A fresh `TrainState` (step 0) of a network's `{"params", "batch_stats"}` for optimiser `tx`.

    `variables` come from `initialize` (a seed) or from saved weights (`checkpoints.load_variables`);
    `method_variables` are the method's own (`methods.Method.init`), if it has any.
    """
    method_variables = dict(method_variables or {})
    method_params = method_variables.pop("params", {})
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=variables["params"],
        batch_stats=variables["batch_stats"],
        opt_state=tx.init(variables["params"]),
        method_params=method_params,
        method_state=method_variables,
        method_opt_state=tx.init(method_params) if method_params else {},
    )


def initial_method_variables(
    config: ml_collections.ConfigDict, student: flax.linen.Module, teacher: flax.linen.Module | None,
    teacher_variables: Variables | None = None,
    num_train: int = 0,
) -> Variables:
    """The variables of `config.method`'s own modules for a run of seed `config.seed` (`{}`: none);
    `teacher_variables` as the train step receives them, `num_train` training examples (`Method.init`)."""
    method = methods.create(config, student, teacher)
    return method.init(jax.random.fold_in(jax.random.key(config.seed), _METHOD_STREAM), teacher_variables, num_train)


# Streams of a run's seed: the student's initial weights, the method's modules.
_STUDENT_STREAM, _METHOD_STREAM = 0, 1


def initial_states(
    student: flax.linen.Module,
    plan: runs.RunPlan,
    run_configs: Sequence[ml_collections.ConfigDict],
    image_shape: tuple[int, ...],
    steps_per_epoch: int,
    weights: Variables | None = None,
    teacher: flax.linen.Module | None = None,
    teacher_variables: Variables | None = None,
    num_train: int = 0,
) -> TrainState:
    """Every run's fresh state on the host, stacked on a leading run axis.

    Each run's parameters come from its own seed, exactly as a single run's would, or all of
    them from `weights` (`initial_weights`) when given; the method's modules (for `teacher`, the
    teacher's module, and its `teacher_variables` as the train step receives them; `num_train`
    training examples) always from the run's seed.
    """
    states = []
    initialize_student = _initializer(student, tuple(image_shape))
    for run, run_config in zip(plan.runs, run_configs):
        variables = weights
        if variables is None:
            variables = initialize_student(jax.random.fold_in(jax.random.key(run.seed), _STUDENT_STREAM))
        method_variables = initial_method_variables(run_config, student, teacher, teacher_variables, num_train)
        tx = create_optimizer(run_config, steps_per_epoch)
        states.append(create_train_state(variables, tx, method_variables).as_dict())
    return TrainState(**runs.stack(jax.device_get(states)))


def initial_weights(
    config: ml_collections.ConfigDict, student: flax.linen.Module, image_shape: tuple[int, ...]
) -> Variables | None:
    """The student's starting `{"params", "batch_stats"}` from `student.init_checkpoint` (None: none
    named), refused unless they have exactly the student's names and shapes."""
    path = config.student.init_checkpoint
    if not path:
        return None
    expected = jax.eval_shape(lambda key: initialize(student, key, image_shape), jax.random.key(0))
    variables, _ = checkpoints.load_variables(path, arch=config.student.arch,
                                              num_classes=expected["params"]["classifier"]["kernel"].shape[-1],
                                              setting="config.student.init_checkpoint",
                                              classifier_bias=config.student.classifier_bias)
    variables = {"params": variables["params"], "batch_stats": variables["batch_stats"]}
    if jax.tree_util.tree_map(np.shape, variables) != jax.tree_util.tree_map(np.shape, expected):
        raise UserError(
            f"config.student.init_checkpoint={path!r} does not fit the student {config.student.arch} "
            f"(classifier_bias={config.student.classifier_bias}): its variables differ in names or shapes; "
            "point to weights of this architecture, or match student.classifier_bias to them"
        )
    return jax.tree_util.tree_map(jnp.asarray, variables)
