"""The pure, jittable steps: train (one run or many at once) and eval, with on-device metric sums.

Every step is built from a config and flax modules, and takes the teacher's variables as an
argument (never closed over), so one compiled step serves any teacher weights.
"""

from __future__ import annotations

import functools
from typing import Callable, Iterator

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from catkd_jax import config_files, methods, runs
from catkd_jax.models import folding
from catkd_jax.models import stages as model_stages
from catkd_jax.training.optim import create_optimizer
from catkd_jax.training.state import TrainState
from catkd_jax.types import Metrics, Variables


def _outputs(
    model_output: tuple[jax.Array, jax.Array], params: Variables, stages: model_stages.Stages | None = None
) -> methods.Outputs:
    logits, features = model_output
    classifier = params["classifier"]
    return methods.Outputs(logits, features, classifier["kernel"], classifier.get("bias"), stages)


def _accuracy_counts(logits: jax.Array, labels: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Masked counts of top-1 and top-5 hits (top-k capped at the class count)."""
    k = min(5, logits.shape[-1])
    _, top = jax.lax.top_k(logits.astype(jnp.float32), k)
    hits = top == labels[:, None]
    return jnp.sum(hits[:, 0] & mask), jnp.sum(jnp.any(hits, axis=1) & mask)


def make_teacher_forward(
    config: ml_collections.ConfigDict, teacher: flax.linen.Module | None
) -> Callable[[Variables, jax.Array], methods.Outputs] | None:
    """The frozen teacher's forward pass `(variables, images [N, H, W, 3]) -> Outputs`, or None.

    `variables` are those of `teacher_inference_variables`; no gradient flows through it. The
    teacher runs in inference mode, or in training mode for a method that says so
    (`Method.teacher_in_train_mode`); its outputs carry its stages when `config.method` reads them.
    """
    if teacher is None:
        return None
    method = methods.get_method(config.method)
    with_stages = method.reads_stages
    if method.teacher_in_train_mode:  # `teacher_inference_variables` refused folding
        # The running statistics it would update are never read: the teacher is never evaluated.
        apply = lambda variables, images: model_stages.apply_with_stages(teacher, variables, images, train=True,
                                                                         mutable=["batch_stats"])[:2]
    elif with_stages and config.teacher.fold_batch_norm:
        apply = functools.partial(folding.apply_folded_with_stages, teacher)
    elif with_stages:
        apply = lambda variables, images: model_stages.apply_with_stages(teacher, variables, images, train=False)[:2]
    elif config.teacher.fold_batch_norm:
        apply = lambda variables, images: (folding.apply_folded(teacher, variables, images), None)
    else:
        apply = lambda variables, images: (teacher.apply(variables, images, train=False), None)

    def forward(variables: Variables, images: jax.Array) -> methods.Outputs:
        output, stages = apply(variables, images)
        return jax.lax.stop_gradient(_outputs(output, variables["params"], stages))

    return forward


def make_loss_fn(
    config: ml_collections.ConfigDict, student: flax.linen.Module, teacher: flax.linen.Module | None,
    steps_per_epoch: int,
) -> Callable[..., tuple[jax.Array, tuple[methods.LossTerms, jax.Array, Variables, Variables]]]:
    """The training loss of one step, `loss_fn(params, method_params, state, batch, teacher_outputs)
    -> (loss, (terms, logits, batch_stats, method_state))`, to differentiate in its first two
    arguments (the student's and the method's parameters).

    The student runs in training mode on `batch["image"]`; `state` gives its BatchNorm statistics,
    the method's other collections and the step (epoch `step // steps_per_epoch + 1`); the
    returned `batch_stats` and `method_state` are their updated values. `teacher` is the teacher's
    module (some methods' modules are shaped by it; None without a teacher).
    """
    method = methods.create(config, student, teacher)

    def loss_fn(params: Variables, method_params: Variables, state: TrainState, batch: dict[str, jax.Array],
                teacher_outputs: methods.Outputs | None):
        variables = {"params": params, "batch_stats": state.batch_stats}
        if method.reads_stages:
            output, stages, updates = model_stages.apply_with_stages(student, variables, batch["image"], train=True,
                                                                    mutable=["batch_stats"])
        else:
            (output, updates), stages = student.apply(variables, batch["image"], train=True,
                                                      mutable=["batch_stats"]), None
        epoch = (state.step // steps_per_epoch + 1).astype(jnp.float32)
        terms, method_state = method({"params": method_params, **state.method_state}, _outputs(output, params, stages),
                                     teacher_outputs, batch, epoch)
        return sum(terms.values()), (terms, output[0], updates["batch_stats"], method_state)

    return loss_fn


def make_student_step(
    config: ml_collections.ConfigDict,
    student: flax.linen.Module,
    teacher: flax.linen.Module | None,
    tx: optax.GradientTransformation,
    steps_per_epoch: int,
) -> Callable[[TrainState, dict[str, jax.Array], methods.Outputs | None], tuple[TrainState, Metrics]]:
    """`(state, batch, teacher_outputs) -> (state, metrics)`: the update of the student and of the
    method's own parameters by `tx` (`make_loss_fn`'s gradients).

    The losses are means over the batch, whatever its size, as PyTorch's (a smaller last batch
    of an epoch is the mean over its images). Metrics are per-step sums (`loss`, each loss
    term, `correct`, `count`: each mean times the batch's images) that stay on device.
    """
    loss_fn = make_loss_fn(config, student, teacher, steps_per_epoch)

    def student_step(state: TrainState, batch: dict[str, jax.Array], teacher_outputs: methods.Outputs | None):
        labels = batch["label"]
        (loss, (terms, logits, batch_stats, method_state)), (grads, method_grads) = jax.value_and_grad(
            loss_fn, argnums=(0, 1), has_aux=True)(state.params, state.method_params, state, batch, teacher_outputs)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        method_params, method_opt_state = state.method_params, state.method_opt_state
        if method_params:
            method_updates, method_opt_state = tx.update(method_grads, method_opt_state, method_params)
            method_params = optax.apply_updates(method_params, method_updates)
        new_state = TrainState(
            step=state.step + 1,
            params=optax.apply_updates(state.params, updates),
            batch_stats=batch_stats,
            opt_state=opt_state,
            method_params=method_params,
            method_state={**state.method_state, **method_state},
            method_opt_state=method_opt_state,
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

    The teacher (`make_teacher_forward`) runs in inference mode, then the student and the
    method's modules update (`make_student_step`). Training many runs at once
    (`make_multi_run_step`) runs this step's two parts.
    """
    teacher_forward = make_teacher_forward(config, teacher)
    student_step = make_student_step(config, student, teacher, tx, steps_per_epoch)

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
    """`make_train_step` of all of `plan`'s runs at once, over their stacked states.

    `(states [R, ...], batch, teacher_variables, values [R]) -> (states, metrics [R])`: `batch`
    is `[B, ...]` when the runs share their inputs, else `[R, B, ...]`; `values` are the swept
    field's (`plan.values()`). B may change between calls (an epoch's smaller last batch):
    jitted, the step then compiles once more, for that shape. The teacher runs once on the
    shared batch, or once on all runs' batches together; then each run's `make_student_step`,
    built from its own config (so that any float field, the optimiser's included, can be swept:
    the swept value is traced), `jax.vmap`ped (`vectorize`: one batched program, for
    accelerators) or unrolled one after another in the same program (XLA's CPU convolutions are
    several times slower batched over runs; see `runs.vectorize`).
    """
    teacher_forward = make_teacher_forward(config, teacher)
    run_axis = None if plan.shared_inputs else 0

    def one_run(state, batch, teacher_outputs, value):
        run_config = config if plan.field is None else config_files.with_values(config, {plan.field: value})
        tx = create_optimizer(run_config, steps_per_epoch)
        return make_student_step(run_config, student, teacher, tx, steps_per_epoch)(state, batch, teacher_outputs)

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
    Unrolled, `fn` is traced and lowered once for all runs (their arguments have the same shapes),
    not once per run: XLA inlines the calls, so the program is the same.
    """
    if vectorize:
        return jax.vmap(fn, in_axes=in_axes)
    jitted_fn = jax.jit(fn)

    def unrolled(*args):
        results = [jitted_fn(*(arg if axis is None else runs.unstack(arg, k) for arg, axis in zip(args, in_axes)))
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
def accumulate(totals: Metrics, metrics: Metrics) -> Metrics:
    return jax.tree_util.tree_map(jnp.add, totals, metrics)


def sum_over(batches: Iterator[dict[str, jax.Array]], step: Callable[[dict], Metrics]) -> dict[str, np.ndarray]:
    """Runs `step` on every batch, summing its metrics on device; one host transfer at the end."""
    totals = None
    for batch in batches:
        metrics = step(batch)
        totals = metrics if totals is None else accumulate(totals, metrics)
    return {name: np.asarray(value, np.float64) for name, value in jax.device_get(totals).items()}
