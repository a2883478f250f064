"""Training and evaluation, in the order data flows: models, optimiser, steps, loop.

`train_and_evaluate(config, workdir)` trains `config.student` with `config.method`,
distilling from a frozen teacher when the method needs one, evaluates after every epoch,
checkpoints, and resumes from the latest checkpoint when re-run with the same workdir.
`evaluate(config, checkpoint)` evaluates any saved network on the test set.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import json
import math
import os
import pathlib
import time
from typing import Any, Callable, Iterator, Sequence

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from catkd_jax import checkpoints, config_files, interruption, methods, record, runs, sharding
from catkd_jax.data import DataSource, create_source
from catkd_jax.console import UserError, report
from catkd_jax.models import canonical_name, create_model, folding

Variables = dict[str, Any]
Metrics = dict[str, jax.Array]


# --- Models --------------------------------------------------------------------------------


def activation_dtype(config: ml_collections.ConfigDict) -> jnp.dtype:
    if config.dtype not in ("float32", "bfloat16"):
        raise ValueError(f"config.dtype must be 'float32' or 'bfloat16', got {config.dtype!r}")
    return jnp.dtype(config.dtype)


def initialize(model: flax.linen.Module, key: jax.Array, image_shape: tuple[int, ...]) -> Variables:
    """`{"params", "batch_stats"}` of `model` for images of `image_shape` `[H, W, 3]`."""
    images = jnp.zeros((1, *image_shape), jnp.float32)
    return jax.jit(functools.partial(model.init, train=False))(key, images)


def teacher_inference_variables(
    config: ml_collections.ConfigDict, teacher: flax.linen.Module, variables: Variables, image_shape: tuple[int, ...]
) -> Variables:
    """The frozen teacher's variables in the form the train step runs it.

    With `config.teacher.fold_batch_norm`, BatchNorm folded into the convolutions
    (`models.folding`): the same function to float rounding, one pass less per layer.
    """
    if not config.teacher.fold_batch_norm:
        return variables
    return folding.fold_batch_norm(teacher, variables, image_shape)


def _outputs(model_output: tuple[jax.Array, jax.Array], params: Variables) -> methods.Outputs:
    logits, features = model_output
    classifier = params["classifier"]
    return methods.Outputs(logits, features, classifier["kernel"], classifier.get("bias"))


# --- Optimisation --------------------------------------------------------------------------


def base_learning_rate(config: ml_collections.ConfigDict) -> float:
    """`optim.lr`, scaled linearly to `batch_size` when `optim.lr_batch_size` names its batch."""
    if config.optim.lr_batch_size:
        return config.optim.lr * config.batch_size / config.optim.lr_batch_size
    return config.optim.lr


def epoch_step_schedule(
    lr: float, decay_epochs: Sequence[int], decay_rate: float, steps_per_epoch: int
) -> optax.Schedule:
    """`lr`, constant within an epoch, times `decay_rate` after each epoch in `decay_epochs`.

    Step `s` is in epoch `s // steps_per_epoch + 1`.
    """
    boundaries = {}
    for epoch in sorted(decay_epochs):
        step = int(epoch) * steps_per_epoch
        boundaries[step] = boundaries.get(step, 1.0) * decay_rate
    return optax.piecewise_constant_schedule(lr, boundaries)


def learning_rate_schedule(config: ml_collections.ConfigDict, steps_per_epoch: int) -> optax.Schedule:
    """The training schedule of `config.optim` (`epoch_step_schedule` from `base_learning_rate`)."""
    optim = config.optim
    return epoch_step_schedule(base_learning_rate(config), optim.decay_epochs, optim.decay_rate, steps_per_epoch)


def torch_sgd(
    learning_rate: optax.ScalarOrSchedule, momentum: float, weight_decay: float
) -> optax.GradientTransformation:
    """`torch.optim.SGD(momentum, weight_decay)`: L2 on every parameter, then momentum, then lr."""
    return optax.chain(optax.add_decayed_weights(weight_decay), optax.sgd(learning_rate, momentum=momentum))


def create_optimizer(config: ml_collections.ConfigDict, steps_per_epoch: int) -> optax.GradientTransformation:
    """The training optimiser of `config.optim`: `torch_sgd` on `learning_rate_schedule`."""
    optim = config.optim
    return torch_sgd(learning_rate_schedule(config, steps_per_epoch), optim.momentum, optim.weight_decay)


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Variables
    batch_stats: Variables
    opt_state: optax.OptState

    def as_dict(self) -> dict[str, Any]:
        return dict(step=self.step, params=self.params, batch_stats=self.batch_stats, opt_state=self.opt_state)


def create_train_state(variables: Variables, tx: optax.GradientTransformation) -> TrainState:
    """A fresh `TrainState` (step 0) of a network's `{"params", "batch_stats"}` for optimiser `tx`.

    `variables` come from `initialize` (a seed) or from saved weights (`checkpoints.load_variables`).
    """
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=variables["params"],
        batch_stats=variables["batch_stats"],
        opt_state=tx.init(variables["params"]),
    )


# --- Steps ---------------------------------------------------------------------------------


def _accuracy_counts(logits: jax.Array, labels: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Masked counts of top-1 and top-5 hits (top-k capped at the class count)."""
    k = min(5, logits.shape[-1])
    _, top = jax.lax.top_k(logits.astype(jnp.float32), k)
    hits = top == labels[:, None]
    return jnp.sum(hits[:, 0] & mask), jnp.sum(jnp.any(hits, axis=1) & mask)


def make_teacher_forward(
    config: ml_collections.ConfigDict, teacher: flax.linen.Module | None
) -> Callable[[Variables, jax.Array], methods.Outputs] | None:
    """The frozen teacher's inference `(variables, images [N, H, W, 3]) -> Outputs`, or None.

    `variables` are those of `teacher_inference_variables`; no gradient flows through it.
    """
    if teacher is None:
        return None
    if config.teacher.fold_batch_norm:
        apply = functools.partial(folding.apply_folded, teacher)
    else:
        apply = lambda variables, images: teacher.apply(variables, images, train=False)

    def forward(variables: Variables, images: jax.Array) -> methods.Outputs:
        return jax.lax.stop_gradient(_outputs(apply(variables, images), variables["params"]))

    return forward


def make_student_step(
    config: ml_collections.ConfigDict,
    student: flax.linen.Module,
    tx: optax.GradientTransformation,
    steps_per_epoch: int,
) -> Callable[[TrainState, dict[str, jax.Array], methods.Outputs | None], tuple[TrainState, Metrics]]:
    """`(state, batch, teacher_outputs) -> (state, metrics)`: the student's update alone.

    Metrics are per-step sums (`loss`, each loss term, `correct`, `count`) that stay on device.
    """
    method = methods.get_method(config.method)

    def student_step(state: TrainState, batch: dict[str, jax.Array], teacher_outputs: methods.Outputs | None):
        images, labels = batch["image"], batch["label"]
        epoch = (state.step // steps_per_epoch + 1).astype(jnp.float32)

        def loss_fn(params):
            output, updates = student.apply(
                {"params": params, "batch_stats": state.batch_stats},
                images,
                train=True,
                mutable=["batch_stats"],
            )
            terms = method(config, _outputs(output, params), teacher_outputs, labels, epoch)
            return sum(terms.values()), (terms, output[0], updates["batch_stats"])

        (loss, (terms, logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        new_state = TrainState(
            step=state.step + 1,
            params=optax.apply_updates(state.params, updates),
            batch_stats=batch_stats,
            opt_state=opt_state,
        )
        count = labels.shape[0]
        correct, _ = _accuracy_counts(logits, labels, jnp.ones_like(labels, jnp.bool_))
        metrics = {name: value * count for name, value in terms.items()}
        metrics.update(loss=loss * count, correct=correct.astype(jnp.float32), count=jnp.float32(count))
        return new_state, metrics

    return student_step


def make_train_step(
    config: ml_collections.ConfigDict,
    student: flax.linen.Module,
    teacher: flax.linen.Module | None,
    tx: optax.GradientTransformation,
    steps_per_epoch: int,
) -> Callable[[TrainState, dict[str, jax.Array], Variables | None], tuple[TrainState, Metrics]]:
    """The pure train step `(state, batch, teacher_variables) -> (state, metrics)` of one run.

    The teacher (`make_teacher_forward`) runs in inference mode, then the student updates
    (`make_student_step`).
    """
    teacher_forward = make_teacher_forward(config, teacher)
    student_step = make_student_step(config, student, tx, steps_per_epoch)

    def train_step(state: TrainState, batch: dict[str, jax.Array], teacher_variables: Variables | None):
        teacher_outputs = None if teacher_forward is None else teacher_forward(teacher_variables, batch["image"])
        return student_step(state, batch, teacher_outputs)

    return train_step


def make_multi_run_step(
    config: ml_collections.ConfigDict,
    student: flax.linen.Module,
    teacher: flax.linen.Module | None,
    steps_per_epoch: int,
    plan: runs.RunPlan,
    vectorize: bool,
) -> Callable[[TrainState, dict[str, jax.Array], Variables | None, jax.Array], tuple[TrainState, Metrics]]:
    """The train step of all of `plan`'s runs at once, over their stacked states.

    `(states [R, ...], batch, teacher_variables, values [R]) -> (states, metrics [R])`: `batch`
    is `[B, ...]` when the runs share their inputs, else `[R, B, ...]`; `values` are the swept
    field's (`plan.values()`). The teacher runs once on the shared batch, or once on all runs'
    batches together. The students are `jax.vmap`ped (`vectorize`: one batched program, for
    accelerators) or their steps unrolled one after another in the same program (XLA's CPU
    convolutions are several times slower batched over runs; see `runs.vectorize`). Each run
    builds its optimiser from its own config, so optimiser fields can be swept.
    """
    teacher_forward = make_teacher_forward(config, teacher)
    run_axis = None if plan.shared_inputs else 0

    def one_run(state, batch, teacher_outputs, value):
        run_config = config if plan.field is None else runs.with_value(config, plan.field, value)
        tx = create_optimizer(run_config, steps_per_epoch)
        return make_student_step(run_config, student, tx, steps_per_epoch)(state, batch, teacher_outputs)

    def multi_run_step(states, batch, teacher_variables, values):
        teacher_outputs = None
        if teacher_forward is not None:
            forward = teacher_forward if plan.shared_inputs else jax.vmap(teacher_forward, in_axes=(None, 0))
            teacher_outputs = forward(teacher_variables, batch["image"])
        over_runs = _over_runs(one_run, len(plan.runs), (0, run_axis, run_axis, 0), vectorize)
        return over_runs(states, batch, teacher_outputs, values)

    return multi_run_step


def make_multi_run_eval_step(
    model: flax.linen.Module, plan: runs.RunPlan, vectorize: bool
) -> Callable[[Variables, dict[str, jax.Array]], Metrics]:
    """`make_eval_step` of all of `plan`'s runs: `(variables [R, ...], batch) -> metrics [R]`."""
    run_axis = None if plan.shared_inputs else 0
    return _over_runs(make_eval_step(model), len(plan.runs), (0, run_axis), vectorize)


def _over_runs(fn: Callable, num_runs: int, in_axes: tuple[int | None, ...], vectorize: bool) -> Callable:
    """`fn` over the leading run axis of its arguments whose `in_axes` is 0 (None: shared).

    Vectorised with `jax.vmap`, or unrolled: one call per run in the same program, stacked.
    """
    if vectorize:
        return jax.vmap(fn, in_axes=in_axes)

    def unrolled(*args):
        results = [fn(*(arg if axis is None else _unstack(arg, k) for arg, axis in zip(args, in_axes)))
                   for k in range(num_runs)]
        return jax.tree_util.tree_map(lambda *leaves: jnp.stack(leaves), *results)

    return unrolled


def make_eval_step(model: flax.linen.Module) -> Callable[[Variables, dict[str, jax.Array]], Metrics]:
    """`(variables, batch) -> sums of top-1 and top-5 hits, loss and count` over unmasked examples."""

    def eval_step(variables: Variables, batch: dict[str, jax.Array]) -> Metrics:
        logits, _ = model.apply(variables, batch["image"], train=False)
        mask = batch["mask"]
        top1, top5 = _accuracy_counts(logits, batch["label"], mask)
        losses = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), batch["label"])
        return {
            "top1": top1.astype(jnp.float32),
            "top5": top5.astype(jnp.float32),
            "loss": jnp.sum(jnp.where(mask, losses, 0.0)),
            "count": jnp.sum(mask).astype(jnp.float32),
        }

    return eval_step


@jax.jit
def _accumulate(totals: Metrics, metrics: Metrics) -> Metrics:
    return jax.tree_util.tree_map(jnp.add, totals, metrics)


def _sum_over(batches: Iterator[dict[str, jax.Array]], step: Callable[[dict], Metrics]) -> dict[str, np.ndarray]:
    """Runs `step` on every batch, summing its metrics on device; one host transfer at the end."""
    totals = None
    for batch in batches:
        metrics = step(batch)
        totals = metrics if totals is None else _accumulate(totals, metrics)
    return {name: np.asarray(value, np.float64) for name, value in jax.device_get(totals).items()}


def _evaluation_result(sums: dict[str, Any]) -> dict[str, Any]:
    """Top-1/top-5 accuracy (%), mean loss and count from the eval step's sums (one network)."""
    count = float(sums["count"])
    return {
        "test_acc": 100.0 * float(sums["top1"]) / count,
        "test_acc_top5": 100.0 * float(sums["top5"]) / count,
        "test_loss": float(sums["loss"]) / count,
        "test_count": int(count),
    }


def run_evaluation(
    eval_step: Callable, variables: Variables, source: DataSource, mesh: jax.sharding.Mesh
) -> dict[str, Any]:
    """Top-1/top-5 accuracy (%) and mean loss over the whole test set, each example once."""
    sums = _sum_over(sharding.prefetch(source.eval_batches(), mesh), lambda batch: eval_step(variables, batch))
    return _evaluation_result(sums)


def _run_batches(
    sources: Sequence[DataSource], batches_of: Callable[[DataSource], Iterator[dict]]
) -> Iterator[dict[str, np.ndarray]]:
    """One source's batches, or the batches of one source per run stacked on a leading run axis."""
    if len(sources) == 1:
        yield from batches_of(sources[0])
        return
    for parts in zip(*(batches_of(source) for source in sources)):
        yield {key: np.stack([part[key] for part in parts]) for key in parts[0]}


def _evaluate_runs(eval_step, variables, sources, mesh) -> list[dict[str, Any]]:
    """`_evaluation_result` of every run; `eval_step` and `variables` are stacked over runs."""
    batches = _run_batches(sources, lambda source: source.eval_batches())
    sums = _sum_over(sharding.prefetch(batches, mesh, run_axis=len(sources) > 1),
                     lambda batch: eval_step(variables, batch))
    num_runs = len(next(iter(sums.values())))
    return [_evaluation_result({name: value[k] for name, value in sums.items()}) for k in range(num_runs)]


# --- Teacher -------------------------------------------------------------------------------


def _has_checkpoint(path: str) -> bool:
    return bool(path) and pathlib.Path(path).exists()


def prepare_teacher(config: ml_collections.ConfigDict, workdir: str, num_classes: int) -> Variables | None:
    """The teacher's variables (None for methods without one), training it first if asked."""
    if not methods.needs_teacher(config.method):
        return None
    path = config.teacher.checkpoint
    if not _has_checkpoint(path):
        if not config.teacher.train_if_missing:
            where = f"config.teacher.checkpoint={path!r} does not exist" if path else "config.teacher.checkpoint is empty"
            raise ValueError(
                f"method {config.method!r} needs a teacher but {where}. Point it at a workdir, "
                "checkpoint, converted model or .pth, or set config.teacher.train_if_missing=True"
            )
        path = os.path.join(workdir, "teacher")
        teacher_config = config_files.load_config(config.teacher.config)
        teacher_config.student.arch = config.teacher.arch
        teacher_config.data = config.data  # the teacher must learn the same classes
        if config.teacher.num_epochs:
            teacher_config.num_epochs = config.teacher.num_epochs
        report(f"Training the teacher {config.teacher.arch} in {path} first.")
        train_and_evaluate(teacher_config, path)
    variables, _ = checkpoints.load_variables(path, arch=config.teacher.arch, num_classes=num_classes)
    return variables


# --- Logging -------------------------------------------------------------------------------



class _EpochLog:
    """metrics.jsonl and TensorBoard scalars, written by the first process only."""

    def __init__(self, workdir: pathlib.Path, resumed_epoch: int):
        self.enabled = jax.process_index() == 0
        self.path = workdir / "metrics.jsonl"
        if not self.enabled:
            return
        if self.path.exists():  # drop epochs after the checkpoint being resumed from
            kept = [line for line in self.path.read_text().splitlines()
                    if line and json.loads(line)["epoch"] <= resumed_epoch]
            self.path.write_text("".join(line + "\n" for line in kept))
        from tensorboardX import SummaryWriter  # pylint: disable=import-outside-toplevel

        self.writer = SummaryWriter(str(workdir / "tensorboard"))

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as file:
            file.write(json.dumps(record) + "\n")
        for name, value in record.items():
            if name != "epoch":
                self.writer.add_scalar(name, value, record["epoch"])
        self.writer.flush()

    def close(self) -> None:
        if self.enabled:
            self.writer.close()


# --- The loop ------------------------------------------------------------------------------


def _stack(trees: Sequence[Any]) -> Any:
    return jax.tree_util.tree_map(lambda *leaves: np.stack(leaves), *trees)


def _unstack(tree: Any, index: int) -> Any:
    return jax.tree_util.tree_map(lambda leaf: leaf[index], tree)


def initial_states(
    student: flax.linen.Module,
    plan: runs.RunPlan,
    run_configs: Sequence[ml_collections.ConfigDict],
    image_shape: tuple[int, ...],
    steps_per_epoch: int,
    weights: Variables | None = None,
) -> TrainState:
    """Every run's fresh state on the host, stacked on a leading run axis.

    Each run's parameters come from its own seed, exactly as a single run's would, or all of
    them from `weights` (`initial_weights`) when given.
    """
    states = []
    for run, run_config in zip(plan.runs, run_configs):
        variables = weights
        if variables is None:
            variables = initialize(student, jax.random.fold_in(jax.random.key(run.seed), 0), image_shape)
        states.append(create_train_state(variables, create_optimizer(run_config, steps_per_epoch)).as_dict())
    return TrainState(**_stack(jax.device_get(states)))


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
                                              num_classes=expected["params"]["classifier"]["kernel"].shape[-1])
    variables = {"params": variables["params"], "batch_stats": variables["batch_stats"]}
    if jax.tree_util.tree_map(np.shape, variables) != jax.tree_util.tree_map(np.shape, expected):
        raise UserError(
            f"config.student.init_checkpoint={path!r} does not fit the student {config.student.arch} "
            f"(classifier_bias={config.student.classifier_bias}): its variables differ in names or shapes; "
            "point to weights of this architecture, or match student.classifier_bias to them"
        )
    return jax.tree_util.tree_map(jnp.asarray, variables)


@dataclasses.dataclass
class _Progress:
    """Where training stands: the next epoch, its steps already done and their metric sums."""

    epoch: int = 1
    epoch_step: int = 0
    epoch_sums: dict[str, np.ndarray] | None = None  # per-step metric sums of the epoch, [R] each


def _restore(savers, state: TrainState, directories) -> tuple[TrainState, list[dict] | None]:
    """The runs' stacked state from their newest checkpoints (all at the same step), if any."""
    template = jax.tree_util.tree_map(np.asarray, _unstack(state.as_dict(), 0))
    restored = [saver.restore_newest(template) for saver in savers]
    if all(item is None for item in restored):
        return state, None
    steps = [None if item is None else item[1]["step"] for item in restored]
    if len(set(steps)) > 1:
        listing = ", ".join(f"{path.name}: {step or 'none'}" for path, step in zip(directories, steps))
        raise UserError(
            f"the runs' newest checkpoints are at different steps ({listing}); resume needs them "
            "equal. Delete the checkpoint steps after the earliest one, or start a new workdir"
        )
    return TrainState(**_stack([item[0] for item in restored])), [item[1] for item in restored]


def _resumed_progress(metas: list[dict[str, Any]], steps_per_epoch: int) -> _Progress:
    """The progress the runs' checkpoint metas record (after an epoch, or mid-epoch)."""
    meta = metas[0]
    if "epoch_step" not in meta:
        return _Progress(epoch=meta["epoch"] + 1)
    if meta["step"] != (meta["epoch"] - 1) * steps_per_epoch + meta["epoch_step"]:
        raise UserError(
            f"the checkpoint of step {meta['step']} was saved with another number of steps per epoch "
            "(data set or batch size); resume with the config it was made with"
        )
    sums = {name: np.asarray([m["epoch_sums"][name] for m in metas], np.float32) for name in meta["epoch_sums"]}
    return _Progress(epoch=meta["epoch"], epoch_step=meta["epoch_step"], epoch_sums=sums)


def train_and_evaluate(
    config: ml_collections.ConfigDict, workdir: str | os.PathLike, allow_changes: Sequence[str] = ()
) -> dict[str, Any]:
    """Trains, evaluates every epoch, checkpoints and resumes; returns the final summary.

    Re-run with the same workdir, it resumes from the newest checkpoint, mid-epoch included;
    the config must then equal the workdir's record except for the fields `record` lets change
    and those named in `allow_changes`. SIGINT, SIGTERM or a JAX preemption notice end the
    current step, save a checkpoint at it and raise `interruption.Interrupted`. A config that
    fails validation leaves the workdir untouched.

    With `config.runs` asking for several runs (`catkd_jax.runs`), trains them all in one
    program, each in `workdir/run_<k>`, writes `workdir/summary.json`, prints a table and
    returns the summary; a run whose loss diverges is reported and left at its last good
    checkpoint while the others go on.
    """
    workdir = pathlib.Path(workdir)
    mesh = sharding.create_mesh()
    sharding.check_batch_size(config.batch_size, mesh)
    sharding.check_batch_size(config.eval_batch_size, mesh, "eval_batch_size")
    if config.num_epochs < 1:
        raise ValueError(f"config.num_epochs must be >= 1, got {config.num_epochs}")
    methods.get_method(config.method)
    plan = runs.plan_runs(config)
    directories = plan.directories(workdir)
    run_configs = [runs.run_config(config, plan, run) for run in plan.runs]

    # Runs with one seed share their data; otherwise each run has the source its seed makes.
    sources = [create_source(run_config)
               for run_config in (run_configs[:1] if plan.shared_inputs else run_configs)]
    source = sources[0]
    dtype = activation_dtype(config)
    student_arch = canonical_name(config.student.arch)
    student = create_model(student_arch, source.num_classes, dtype, config.student.classifier_bias)
    weights = initial_weights(config, student, source.image_shape)
    resuming = any(checkpoints.has_training_checkpoints(directory) for directory in directories)
    changes = record.check_resume(workdir, config, allow_changes) if resuming else {}
    teacher_variables = prepare_teacher(config, str(workdir), source.num_classes)
    teacher = None
    if teacher_variables is not None:
        has_bias = "bias" in teacher_variables["params"]["classifier"]
        teacher = create_model(config.teacher.arch, source.num_classes, dtype, has_bias)
        teacher_variables = teacher_inference_variables(config, teacher, teacher_variables, source.image_shape)
        teacher_variables = sharding.replicate(teacher_variables, mesh)

    # Validated: from here on the workdir is written.
    if jax.process_index() == 0:
        workdir.mkdir(parents=True, exist_ok=True)
        record.write(workdir, config, changes)
        for directory, run_config in zip(directories, run_configs):
            directory.mkdir(exist_ok=True)
            if plan.multiple:
                (directory / record.CONFIG_FILE).write_text(run_config.to_json_best_effort(indent=2) + "\n")
    if config.optim.lr_batch_size and config.batch_size != config.optim.lr_batch_size:
        report(f"Learning rate {config.optim.lr:g} is for a batch of {config.optim.lr_batch_size}; "
                f"scaled linearly to {base_learning_rate(config):g} for the batch of {config.batch_size}.")
    savers = [checkpoints.TrainCheckpoints(directory, config.checkpoint.keep,
                                           barrier_prefix=run.name if plan.multiple else "")
              for run, directory in zip(plan.runs, directories)]
    abandon_saves = False
    try:
        return _train_runs(config, workdir, plan, directories, run_configs, sources, student, weights, teacher,
                           teacher_variables, savers, mesh)
    except BaseException as error:
        # With several processes, a save in flight waits for all of them, and after an error that
        # not all of them share, one may be gone: the caller ends this process instead.
        abandon_saves = jax.process_count() > 1 and not isinstance(error, _STOPS_ALL_PROCESSES_SHARE)
        raise
    finally:
        if not abandon_saves:
            for saver in savers:
                saver.wait()
                saver.close()


# Ends of a run that every process of a job reaches together (same config, agreed stop step,
# same global loss).
_STOPS_ALL_PROCESSES_SHARE = (interruption.Interrupted, UserError, FloatingPointError)


def _train_runs(config, workdir, plan, directories, run_configs, sources, student, weights, teacher,
                teacher_variables, savers, mesh) -> dict[str, Any]:
    """`train_and_evaluate` once the workdir is set up: restore, train every epoch, summarise."""
    source = sources[0]
    steps_per_epoch = source.steps_per_epoch
    state = initial_states(student, plan, run_configs, source.image_shape, steps_per_epoch, weights)
    state, metas = _restore(savers, state, directories)
    totals = [dict(best_acc=-1.0, best_epoch=0, final_acc=float("nan"), diverged_epoch=0) for _ in plan.runs]
    progress = _Progress()
    if metas is not None:
        progress = _resumed_progress(metas, steps_per_epoch)
        for total, meta in zip(totals, metas):
            total.update(best_acc=meta["best_acc"], best_epoch=meta["best_epoch"],
                         final_acc=float("nan") if meta["test_acc"] is None else meta["test_acc"])
        best = ", ".join(f"{t['best_acc']:.2f}% at epoch {t['best_epoch']}" for t in totals)
        where = (f"in epoch {progress.epoch} after step {metas[0]['step']}" if progress.epoch_step
                 else f"after epoch {metas[0]['epoch']}")
        report(f"Resuming {workdir} {where} (best {best}).")
    state = sharding.replicate(state, mesh)
    values = sharding.replicate(np.asarray(plan.values(), np.float32), mesh)

    vectorize = runs.vectorize(config)
    train_step = jax.jit(make_multi_run_step(config, student, teacher, steps_per_epoch, plan, vectorize),
                         donate_argnums=0)
    eval_step = jax.jit(make_multi_run_eval_step(student, plan, vectorize))
    schedules = [learning_rate_schedule(run_config, steps_per_epoch) for run_config in run_configs]
    logs = [_EpochLog(directory, progress.epoch - 1) for directory in directories]
    info = dict(arch=canonical_name(config.student.arch), num_classes=source.num_classes,
                classifier_bias=config.student.classifier_bias)
    step = lambda state, batch: train_step(state, batch, teacher_variables, values)

    def save(state_on_host: dict[str, Any], epoch: int, global_step: int, test_acc: list[float | None],
             partial: dict[str, Any] | None = None) -> None:
        """Each live run's checkpoint at `global_step`; `partial` holds a mid-epoch save's progress."""
        for k, (run, saver) in enumerate(zip(plan.runs, savers)):
            total = totals[k]
            if total["diverged_epoch"]:
                continue
            meta = dict(info, epoch=epoch, step=global_step, best_acc=total["best_acc"],
                        best_epoch=total["best_epoch"], seed=run.seed,
                        test_acc=None if math.isnan(total["final_acc"]) else total["final_acc"])
            if plan.field is not None:
                meta["sweep"] = {plan.field: run.value}
            if partial is not None:
                meta.update(epoch_step=partial["epoch_step"],
                            epoch_sums={name: float(value[k]) for name, value in partial["sums"].items()})
            saver.save(_unstack(state_on_host, k), meta, test_acc[k])

    try:
        with interruption.StopRequests() as stop:
            for epoch in range(progress.epoch, config.num_epochs + 1):
                started = time.time()
                state, sums, epoch_step = _train_epoch(step, state, sources, mesh, epoch, config.num_epochs,
                                                       progress, stop)
                global_step = (epoch - 1) * steps_per_epoch + epoch_step
                if epoch_step < steps_per_epoch:  # stopped mid-epoch
                    save(jax.device_get(state.as_dict()), epoch, global_step, [None] * len(plan.runs),
                         partial=dict(epoch_step=epoch_step, sums=sums))
                    raise stop.interrupted(epoch, global_step)
                progress = _Progress(epoch=epoch + 1)
                train = _mean_train_metrics(sums)
                evaluation = _evaluate_runs(
                    eval_step, {"params": state.params, "batch_stats": state.batch_stats}, sources, mesh
                )
                # The epoch's last step is checked here, so a stop then saves the evaluated epoch.
                stopping = stop.should_stop(global_step)
                periodic = epoch % config.checkpoint.every_epochs == 0 or epoch == config.num_epochs
                saved_acc: list[float | None] = [None] * len(plan.runs)
                wanted = False
                for k, (run, directory) in enumerate(zip(plan.runs, directories)):
                    total = totals[k]
                    if total["diverged_epoch"]:
                        continue
                    if not math.isfinite(train[k]["train_loss"]):
                        total.update(diverged_epoch=epoch, diverged_loss=train[k]["train_loss"])
                        if plan.multiple:
                            report(f"{run.name} ({plan.describe(run)}): "
                                   f"{_divergence_message(savers[k], directory, epoch, total['diverged_loss'])} "
                                   "The other runs go on.")
                        continue
                    total["final_acc"] = evaluation[k]["test_acc"]
                    is_best = total["final_acc"] > total["best_acc"]
                    if is_best:
                        total.update(best_acc=total["final_acc"], best_epoch=epoch)
                    record_line = dict(
                        epoch=epoch,
                        lr=float(schedules[k]((epoch - 1) * steps_per_epoch)),
                        **train[k],
                        **{key: value for key, value in evaluation[k].items() if key != "test_count"},
                        best_test_acc=total["best_acc"],
                        epoch_seconds=time.time() - started,
                    )
                    logs[k].write(record_line)
                    prefix = f"{run.name} ({plan.describe(run)}) " if plan.multiple else ""
                    report(
                        f"{prefix}epoch {epoch}: train loss {record_line['train_loss']:.4f} "
                        f"acc {record_line['train_acc']:.2f}% | test acc {record_line['test_acc']:.2f}% "
                        f"top5 {record_line['test_acc_top5']:.2f}% (best {total['best_acc']:.2f}%) | "
                        f"{record_line['epoch_seconds']:.0f}s"
                    )
                    saved_acc[k] = total["final_acc"]
                    wanted = wanted or periodic or is_best or stopping
                if wanted:  # one step, saved once for every live run (best or not, all get it)
                    save(jax.device_get(state.as_dict()), epoch, global_step, saved_acc)
                if stopping and epoch < config.num_epochs:  # after the last epoch, the run is complete
                    raise stop.interrupted(epoch, global_step)
                if all(total["diverged_epoch"] for total in totals):
                    break
    finally:
        for log in logs:
            log.close()

    results = [dict(best_test_acc=t["best_acc"], best_epoch=t["best_epoch"], final_test_acc=t["final_acc"],
                    epochs=config.num_epochs, **({"diverged_epoch": t["diverged_epoch"]} if t["diverged_epoch"] else {}))
               for t in totals]
    student_arch = info["arch"]
    if not plan.multiple:
        if totals[0]["diverged_epoch"]:
            message = _divergence_message(savers[0], workdir, totals[0]["diverged_epoch"], totals[0]["diverged_loss"])
            raise FloatingPointError(f"stopping: {message}")
        report(f"{student_arch} ({config.method}): best test accuracy {results[0]['best_test_acc']:.2f}% "
                f"(epoch {results[0]['best_epoch']}), final {results[0]['final_test_acc']:.2f}%")
        return results[0]
    summary = runs.summarize(plan, results)
    runs.write_summary(workdir, summary)
    report(f"{student_arch} ({config.method}), {len(plan.runs)} runs in one program:\n{runs.format_table(summary)}")
    if all(total["diverged_epoch"] for total in totals):
        raise FloatingPointError(f"every run diverged; see {workdir / 'summary.json'}")
    return summary


def _divergence_message(saver: checkpoints.TrainCheckpoints, directory: pathlib.Path, epoch: int, loss: float) -> str:
    kept = (f"The last good checkpoint is kept in {directory / 'checkpoints'}"
            if saver.newest_step() is not None else "No checkpoint was written")
    return (f"the training loss became {loss} in epoch {epoch}. {kept}. "
            "Lower optim.lr, check the data, or (distilling) check the teacher's accuracy.")
# Steps dispatched ahead of the device: enough to keep it busy, few enough to bound the memory
# of queued batches and keep the progress bar truthful.
_STEPS_IN_FLIGHT = 2


def _train_epoch(step, state, sources, mesh, epoch, num_epochs, progress: _Progress,
                 stop: interruption.StopRequests) -> tuple[TrainState, dict[str, np.ndarray], int]:
    """The epoch's training steps from `progress.epoch_step` on, until done or asked to stop.

    `step(state, batch) -> (state, metrics)` is the multi-run step; `sources` holds one
    source (inputs shared by all runs) or one per run. Returns the state, the epoch's per-step
    metric sums (`[R]` each, `progress.epoch_sums` included) and the epoch's steps done: fewer
    than `steps_per_epoch` when `stop` asked for it. The epoch's last step is not offered to
    `stop`: the caller evaluates first.
    """
    from tqdm import tqdm  # pylint: disable=import-outside-toplevel

    steps_per_epoch = sources[0].steps_per_epoch
    done = progress.epoch_step
    totals, in_flight, last_refresh = progress.epoch_sums, collections.deque(), time.time()
    batches = _run_batches(sources, lambda source: source.train_batches(epoch, done))
    with tqdm(total=steps_per_epoch, initial=done, desc=f"epoch {epoch}/{num_epochs}", leave=False,
              disable=jax.process_index() != 0) as bar:
        for batch in sharding.prefetch(batches, mesh, run_axis=len(sources) > 1):
            state, metrics = step(state, batch)
            done += 1
            totals = metrics if totals is None else _accumulate(totals, metrics)
            in_flight.append(metrics)
            if len(in_flight) > _STEPS_IN_FLIGHT:
                jax.block_until_ready(in_flight.popleft())  # waits for an older step; copies nothing
                bar.update()
            if time.time() - last_refresh > 2.0:  # a transfer to the host, so not every step
                current = jax.device_get(totals)
                bar.set_postfix(loss=f"{np.mean(current['loss'] / current['count']):.4f}",
                                acc=f"{np.mean(100 * current['correct'] / current['count']):.2f}%")
                last_refresh = time.time()
            if done < steps_per_epoch and stop.should_stop((epoch - 1) * steps_per_epoch + done):
                break
        sums = jax.device_get(totals)
        bar.update(len(in_flight))
    return state, sums, done


def _mean_train_metrics(sums: dict[str, np.ndarray]) -> list[dict[str, float]]:
    """Each run's mean training metrics from the epoch's per-step sums."""
    results = []
    for k in range(len(sums["count"])):
        run_sums = {name: float(value[k]) for name, value in sums.items()}
        count = run_sums.pop("count")
        result = {"train_loss": run_sums.pop("loss") / count, "train_acc": 100.0 * run_sums.pop("correct") / count}
        result.update({f"train_{name}": value / count for name, value in run_sums.items()})
        results.append(result)
    return results


def load_network(
    checkpoint: str | os.PathLike, arch: str, num_classes: int | None, dtype: jnp.dtype = jnp.float32
) -> tuple[flax.linen.Module, Variables, dict[str, Any]]:
    """Model, variables and info (`arch`, `num_classes`...) of the network saved at `checkpoint`.

    `checkpoint` is any form `checkpoints.load_variables` reads; `arch` is only used for a
    `.pth`, the other formats say which architecture they hold. `num_classes`, needed for a
    `.pth`, is otherwise checked against the checkpoint's when given.
    """
    pth_arch = arch if str(checkpoint).endswith(".pth") else None
    variables, info = checkpoints.load_variables(checkpoint, arch=pth_arch, num_classes=num_classes)
    has_bias = "bias" in variables["params"]["classifier"]
    return create_model(info["arch"], info["num_classes"], dtype, has_bias), variables, info


def evaluate(config: ml_collections.ConfigDict, checkpoint: str | os.PathLike) -> dict[str, Any]:
    """Evaluates the network saved at `checkpoint` on the test set and prints one line.

    A multi-run workdir (`run_<k>` directories, `catkd_jax.runs`) evaluates every run, prints a
    line each and the mean ± std, and returns `{"runs": [...], "test_acc": {"mean", "std", "runs"}}`.
    """
    mesh = sharding.create_mesh()
    sharding.check_batch_size(config.eval_batch_size, mesh, "eval_batch_size")
    # Generated data sets depend on the seed, so each network is tested on its own seed's data;
    # one source per seed serves every network trained with it.
    source_for = functools.cache(lambda seed: create_source(runs.with_value(config, "seed", seed)))
    path = pathlib.Path(checkpoint)
    run_dirs = runs.run_directories(path) if path.is_dir() and not (path / "checkpoints").exists() else []
    if not run_dirs:
        return _evaluate_network(config, checkpoint, source_for, mesh)
    results = [_evaluate_network(config, directory, source_for, mesh, label=f"{directory.name}: ")
               for directory in run_dirs]
    accuracy = runs.mean_and_std([result["test_acc"] for result in results])
    report(f"mean ± std over {len(results)} runs: top1 {accuracy['mean']:.2f} ± {accuracy['std']:.2f}")
    return {"runs": results, "test_acc": accuracy}


def _evaluate_network(config, checkpoint, source_for, mesh, label: str = "") -> dict[str, Any]:
    num_classes = source_for(config.seed).num_classes
    model, variables, info = load_network(checkpoint, config.student.arch, num_classes, activation_dtype(config))
    source = source_for(info.get("seed", config.seed))
    result = run_evaluation(jax.jit(make_eval_step(model)), sharding.replicate(variables, mesh), source, mesh)
    report(f"{label}top1 {result['test_acc']:.2f} top5 {result['test_acc_top5']:.2f} loss {result['test_loss']:.4f} "
          f"({result['test_count']} images)")
    return result
