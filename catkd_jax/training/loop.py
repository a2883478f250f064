"""The training loop: `train_and_evaluate(config, workdir)`.

Trains `config.student` with `config.method`, distilling from a frozen teacher when the method
needs one, evaluates after every epoch, logs, checkpoints, and resumes from the newest
checkpoint (mid-epoch included) when re-run with the same workdir. Several runs (seeds, a
sweep: `catkd_jax.runs`) train together in one program.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import json
import math
import os
import pathlib
import sys
import time
from typing import Any, Callable, Sequence

import jax
import ml_collections
import numpy as np

from catkd_jax import checkpoints, interruption, methods, outputs, record, runs, sharding, validation
from catkd_jax.console import report
from catkd_jax.errors import DivergedError, UserError
from catkd_jax.data import create_source
from catkd_jax.models import canonical_name, create_model
from catkd_jax.training.evaluate import evaluate_runs
from catkd_jax.training.optim import base_learning_rate, learning_rate_schedule
from catkd_jax.training.state import TrainState, activation_dtype, initial_states, initial_weights
from catkd_jax.training.steps import accumulate, make_multi_run_eval_step, make_multi_run_step
from catkd_jax.training.teacher import load_teacher


class _MetricsLog:
    """metrics.jsonl and TensorBoard scalars of one run, written by the first process only.

    Epoch records (`epoch`, train and test metrics) and, with `config.log_every_steps`, step
    records (`record: "steps"`, `epoch`, `step`, mean loss and accuracy since the previous one,
    `lr`, `images_per_sec`; TensorBoard tags `steps/...` over the global step).
    """

    def __init__(self, workdir: pathlib.Path, resumed_epoch: int, resumed_step: int):
        self.enabled = jax.process_index() == 0
        self.path = workdir / "metrics.jsonl"
        if not self.enabled:
            return
        if self.path.exists():  # drop what was logged after the checkpoint being resumed from
            kept = [line for line in self.path.read_text().splitlines() if line and _logged_before(
                json.loads(line), resumed_epoch, resumed_step)]
            self.path.write_text("".join(line + "\n" for line in kept))
        self.writer = _summary_writer_class()(str(workdir / "tensorboard"))

    def write(self, record: dict[str, Any]) -> None:
        """Appends an epoch record, or a step record (one with "step")."""
        if not self.enabled:
            return
        with self.path.open("a") as file:
            file.write(json.dumps(record) + "\n")
        prefix, x = ("steps/", record["step"]) if "step" in record else ("", record["epoch"])
        for name, value in record.items():
            if name not in ("epoch", "step", "record"):
                self.writer.add_scalar(prefix + name, value, x)
        self.writer.flush()

    def close(self) -> None:
        if self.enabled:
            self.writer.close()


def _summary_writer_class() -> type:
    """tensorboardX's SummaryWriter, imported without torch when torch is not loaded yet.

    tensorboardX imports torch if it is installed, only to accept torch tensors; that costs
    every run about 1.5 s of start-up, and this log writes Python floats. torch stays importable
    afterwards (reading a `.pth` needs it).
    """
    hidden = "torch" not in sys.modules
    if hidden:
        sys.modules["torch"] = None  # makes `import torch` raise ImportError
    try:
        from tensorboardX import SummaryWriter  # pylint: disable=import-outside-toplevel
    finally:
        if hidden:
            del sys.modules["torch"]
    return SummaryWriter


def _logged_before(record: dict[str, Any], resumed_epoch: int, resumed_step: int) -> bool:
    if "step" in record:
        return record["step"] <= resumed_step
    return record["epoch"] <= resumed_epoch


@dataclasses.dataclass
class _Progress:
    """Where training stands: the next epoch, its steps already done and their metric sums."""

    epoch: int = 1
    epoch_step: int = 0
    epoch_sums: dict[str, np.ndarray] | None = None  # per-step metric sums of the epoch, [R] each


@dataclasses.dataclass
class _Standing:
    """One run's results so far: its best and last test accuracy, and where its loss diverged."""

    best_acc: float = -1.0
    best_epoch: int = 0
    final_acc: float = float("nan")
    diverged_epoch: int = 0  # 0: it has not diverged
    diverged_loss: float = float("nan")

    @classmethod
    def from_meta(cls, meta: dict[str, Any]) -> _Standing:
        """The standing a checkpoint's meta records."""
        final = float("nan") if meta["test_acc"] is None else meta["test_acc"]
        return cls(best_acc=meta["best_acc"], best_epoch=meta["best_epoch"], final_acc=final)

    def result(self, num_epochs: int) -> dict[str, Any]:
        """The run's line of the summary that `train_and_evaluate` returns."""
        result = dict(best_test_acc=self.best_acc, best_epoch=self.best_epoch, final_test_acc=self.final_acc,
                      epochs=num_epochs)
        return result | ({"diverged_epoch": self.diverged_epoch} if self.diverged_epoch else {})


def _restore(savers, state: TrainState, directories) -> tuple[TrainState, list[dict] | None]:
    """The runs' stacked state from their newest checkpoints (all at the same step), if any."""
    template = jax.tree_util.tree_map(np.asarray, runs.unstack(state.as_dict(), 0))
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
    return TrainState(**runs.stack([item[0] for item in restored])), [item[1] for item in restored]


def _resumed_progress(metas: list[dict[str, Any]], steps_per_epoch: int) -> _Progress:
    """The progress the runs' checkpoint metas record (after an epoch, or mid-epoch)."""
    meta = metas[0]
    epoch_step = meta.get("epoch_step", steps_per_epoch)  # none: saved after its epoch
    if meta["step"] != (meta["epoch"] - 1) * steps_per_epoch + epoch_step:
        raise UserError(
            f"the checkpoint of step {meta['step']} (epoch {meta['epoch']}) was saved with another number of "
            f"steps per epoch than this config's {steps_per_epoch} (data set, batch size, data.drop_remainder "
            "or device count); resume with the config and devices it was made with"
        )
    if "epoch_step" not in meta:
        return _Progress(epoch=meta["epoch"] + 1)
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
    validation.check_config(config)
    record.check_allowed_changes(config, allow_changes)
    config = record.with_absolute_paths(config)
    mesh = sharding.create_mesh()
    sharding.check_batch_size(config.batch_size, mesh)
    sharding.check_batch_size(config.eval_batch_size, mesh, "eval_batch_size")
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
    outputs.check_writable(workdir / record.CONFIG_FILE)  # before a teacher trains for an hour
    # Any run's checkpoints count, not only those of this config's runs: another runs.seeds
    # must not start new runs beside them.
    resuming = any(checkpoints.has_training_checkpoints(directory)
                   for directory in {*directories, workdir, *runs.run_directories(workdir)})
    changes = record.check_resume(workdir, config, allow_changes) if resuming else {}
    teacher, teacher_variables = load_teacher(config, workdir, source.num_classes, source.image_shape,
                                              train_teacher=train_and_evaluate)
    if teacher_variables is not None:
        teacher_variables = sharding.replicate(teacher_variables, mesh)
    # The method's modules and state for these networks and data, traced only: a setting that does
    # not fit them is refused before the workdir is written.
    method = methods.create(config, student, teacher)
    method.check_fit(source.image_shape)
    jax.eval_shape(lambda key: method.init(key, teacher_variables, source.num_train), jax.random.key(0))

    def write_records(first_step: int = 0) -> None:
        """The workdir's config.json (and each run's): how the checkpoints from `first_step` on are made."""
        if jax.process_index() == 0:
            record.write(workdir, config, changes, first_step)
            if plan.multiple:
                for directory, run_config in zip(directories, run_configs):
                    (directory / record.CONFIG_FILE).write_text(run_config.to_json_best_effort(indent=2) + "\n")

    # Validated: from here on the workdir is written.
    if jax.process_index() == 0:
        workdir.mkdir(parents=True, exist_ok=True)
        for directory in directories:
            directory.mkdir(exist_ok=True)
    if not resuming:
        write_records()
    if config.optim.lr_batch_size and config.batch_size != config.optim.lr_batch_size:
        report(f"Learning rate {config.optim.lr:g} is for a batch of {config.optim.lr_batch_size}; "
                f"scaled linearly to {base_learning_rate(config):g} for the batch of {config.batch_size}.")
    if source.remainder_note():
        report(source.remainder_note())
    savers = [checkpoints.TrainCheckpoints(directory, config.checkpoint.keep,
                                           barrier_prefix=run.name if plan.multiple else "")
              for run, directory in zip(plan.runs, directories)]
    abandon_saves = False
    try:
        # A resume's record changes with its first checkpoint: config.json describes the kept
        # checkpoints even when the run stops (diverges, is interrupted) before saving one.
        return _train_runs(config, workdir, plan, directories, run_configs, sources, student, weights, teacher,
                           teacher_variables, savers, mesh, write_records if resuming else None)
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
_STOPS_ALL_PROCESSES_SHARE = (interruption.Interrupted, UserError)


def _train_runs(config, workdir, plan, directories, run_configs, sources, student, weights, teacher,
                teacher_variables, savers, mesh, write_records: Callable[[int], None] | None) -> dict[str, Any]:
    """`train_and_evaluate` once the workdir is set up: restore, train every epoch, summarise;
    `write_records(step)`, if given, after the first checkpoint saved."""
    source = sources[0]
    steps_per_epoch = source.steps_per_epoch
    state = initial_states(student, plan, run_configs, source.image_shape, steps_per_epoch, weights, teacher,
                           teacher_variables, source.num_train)
    method_variables = {"params": runs.unstack(state.method_params, 0), **runs.unstack(state.method_state, 0)}
    extra_parameters = methods.create(config, student, teacher).extra_parameters(method_variables)
    if extra_parameters:  # as the original reports them (its get_extra_parameters)
        report(f"Extra parameters of {config.method}: {extra_parameters}")
    state, metas = _restore(savers, state, directories)
    standings = [_Standing() for _ in plan.runs]
    progress = _Progress()
    if metas is not None:
        progress = _resumed_progress(metas, steps_per_epoch)
        standings = [_Standing.from_meta(meta) for meta in metas]
        best = ", ".join(f"{standing.best_acc:.2f}% at epoch {standing.best_epoch}" for standing in standings)
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
    resumed_step = (progress.epoch - 1) * steps_per_epoch + progress.epoch_step
    logs = [_MetricsLog(directory, progress.epoch - 1, resumed_step) for directory in directories]

    def log_steps(epoch: int, global_step: int, interval_sums: dict[str, np.ndarray], seconds: float) -> None:
        """Each run's step record of the steps since the previous one; a line when not on a terminal."""
        images_per_sec = float(interval_sums["count"][0]) / max(seconds, 1e-9)  # count: images per run
        means = _mean_train_metrics(interval_sums)
        if config.log_every_steps:
            for k, log in enumerate(logs):
                log.write(dict(record="steps", epoch=epoch, step=global_step,
                               lr=float(schedules[k](global_step - 1)), **means[k], images_per_sec=images_per_sec))
        if not sys.stderr.isatty():
            loss = np.mean([m["train_loss"] for m in means])
            accuracy = np.mean([m["train_acc"] for m in means])
            report(f"epoch {epoch}/{config.num_epochs} step {global_step - (epoch - 1) * steps_per_epoch}/"
                   f"{steps_per_epoch}: train loss {loss:.4f} acc {accuracy:.2f}% | {images_per_sec:.0f} images/s")

    log_every = _log_interval(config, steps_per_epoch)
    train_batches = functools.partial(methods.get_method(config.method).train_batches, config)
    info = dict(arch=canonical_name(config.student.arch), num_classes=source.num_classes,
                classifier_bias=config.student.classifier_bias)
    step = lambda state, batch: train_step(state, batch, teacher_variables, values)

    def save(state_on_host: dict[str, Any], epoch: int, global_step: int, test_acc: list[float | None],
             partial: dict[str, Any] | None = None) -> None:
        """Each live run's checkpoint at `global_step`; `partial` holds a mid-epoch save's progress."""
        nonlocal write_records
        for k, (run, saver) in enumerate(zip(plan.runs, savers)):
            standing = standings[k]
            if standing.diverged_epoch:
                continue
            meta = dict(info, epoch=epoch, step=global_step, best_acc=standing.best_acc,
                        best_epoch=standing.best_epoch, seed=run.seed,
                        test_acc=None if math.isnan(standing.final_acc) else standing.final_acc)
            if plan.field is not None:
                meta["sweep"] = {plan.field: run.value}
            if partial is not None:
                meta.update(epoch_step=partial["epoch_step"],
                            epoch_sums={name: float(value[k]) for name, value in partial["sums"].items()})
            saver.save(runs.unstack(state_on_host, k), meta, test_acc[k])
        if write_records is not None:  # once this checkpoint is complete: the record must not run ahead of it
            for saver in savers:
                saver.wait()
            write_records(global_step)
            write_records = None

    try:
        with interruption.StopRequests() as stop:
            for epoch in range(progress.epoch, config.num_epochs + 1):
                started = time.time()
                state, sums, epoch_step = _train_epoch(step, state, sources, train_batches, mesh, epoch,
                                                       config.num_epochs, progress, stop, log_every, log_steps)
                global_step = (epoch - 1) * steps_per_epoch + epoch_step
                if epoch_step < steps_per_epoch:  # stopped mid-epoch
                    save(jax.device_get(state.as_dict()), epoch, global_step, [None] * len(plan.runs),
                         partial=dict(epoch_step=epoch_step, sums=sums))
                    raise stop.interrupted(epoch, global_step)
                progress = _Progress(epoch=epoch + 1)
                train = _mean_train_metrics(sums)
                evaluation = evaluate_runs(
                    eval_step, {"params": state.params, "batch_stats": state.batch_stats}, sources, mesh
                )
                # The epoch's last step is checked here, so a stop then saves the evaluated epoch.
                stopping = stop.should_stop(global_step)
                periodic = epoch % config.checkpoint.every_epochs == 0 or epoch == config.num_epochs
                saved_acc: list[float | None] = [None] * len(plan.runs)
                wanted = False
                for k, (run, directory) in enumerate(zip(plan.runs, directories)):
                    standing = standings[k]
                    if standing.diverged_epoch:
                        continue
                    if not math.isfinite(train[k]["train_loss"]):
                        standing.diverged_epoch, standing.diverged_loss = epoch, train[k]["train_loss"]
                        if plan.multiple:
                            message = _divergence_message(savers[k], directory, epoch, steps_per_epoch,
                                                          standing.diverged_loss)
                            report(f"{run.name} ({plan.describe(run)}): {message} The other runs go on.")
                        continue
                    standing.final_acc = evaluation[k]["test_acc"]
                    is_best = standing.final_acc > standing.best_acc
                    if is_best:
                        standing.best_acc, standing.best_epoch = standing.final_acc, epoch
                    record_line = dict(
                        epoch=epoch,
                        lr=float(schedules[k]((epoch - 1) * steps_per_epoch)),
                        **train[k],
                        **{key: value for key, value in evaluation[k].items() if key != "test_count"},
                        best_test_acc=standing.best_acc,
                        epoch_seconds=time.time() - started,
                    )
                    logs[k].write(record_line)
                    prefix = f"{run.name} ({plan.describe(run)}) " if plan.multiple else ""
                    report(
                        f"{prefix}epoch {epoch}: train loss {record_line['train_loss']:.4f} "
                        f"acc {record_line['train_acc']:.2f}% | test acc {record_line['test_acc']:.2f}% "
                        f"top5 {record_line['test_acc_top5']:.2f}% (best {standing.best_acc:.2f}%) | "
                        f"{record_line['epoch_seconds']:.0f}s"
                    )
                    saved_acc[k] = standing.final_acc
                    wanted = wanted or periodic or is_best or stopping
                if wanted:  # one step, saved once for every live run (best or not, all get it)
                    save(jax.device_get(state.as_dict()), epoch, global_step, saved_acc)
                if stopping and epoch < config.num_epochs:  # after the last epoch, the run is complete
                    raise stop.interrupted(epoch, global_step)
                if all(standing.diverged_epoch for standing in standings):
                    break
    finally:
        for log in logs:
            log.close()

    results = [standing.result(config.num_epochs) for standing in standings]
    student_arch = info["arch"]
    if not plan.multiple:
        if standings[0].diverged_epoch:
            message = _divergence_message(savers[0], workdir, standings[0].diverged_epoch, steps_per_epoch,
                                          standings[0].diverged_loss)
            raise DivergedError(f"stopping: {message}")
        report(f"{student_arch} ({config.method}): best test accuracy {results[0]['best_test_acc']:.2f}% "
                f"(epoch {results[0]['best_epoch']}), final {results[0]['final_test_acc']:.2f}%")
        return results[0]
    summary = runs.summarize(plan, results)
    runs.write_summary(workdir, summary)
    report(f"{student_arch} ({config.method}), {len(plan.runs)} runs in one program:\n{runs.format_table(summary)}")
    if all(standing.diverged_epoch for standing in standings):
        raise DivergedError(f"every run diverged; see {workdir / 'summary.json'} and the lines above. "
                            "Lower optim.lr, check the data, or (distilling) check the teacher's accuracy")
    return summary


def _divergence_message(saver: checkpoints.TrainCheckpoints, directory: pathlib.Path, epoch: int,
                        steps_per_epoch: int, loss: float) -> str:
    """Where the loss became `loss` (it is checked once an epoch), what is kept and what to try."""
    newest = saver.newest_step()
    kept = (f"The last good checkpoint (step {newest}) is kept in {directory / 'checkpoints'}" if newest is not None
            else "No checkpoint was written")
    return (f"the training loss became {loss} in epoch {epoch} (steps {(epoch - 1) * steps_per_epoch + 1}-"
            f"{epoch * steps_per_epoch}). {kept}. "
            "Lower optim.lr, check the data, or (distilling) check the teacher's accuracy.")


# Steps dispatched ahead of the device: enough to keep it busy, few enough to bound the memory
# of queued batches and keep the progress bar truthful.
_STEPS_IN_FLIGHT = 2


def _log_interval(config: ml_collections.ConfigDict, steps_per_epoch: int) -> int:
    """Global steps between step logs: `config.log_every_steps`; else, when stderr is not a
    terminal (no progress bar), a tenth of an epoch; else 0 (none)."""
    if config.log_every_steps or sys.stderr.isatty():
        return config.log_every_steps
    return max(1, steps_per_epoch // 10)


def _train_epoch(step, state, sources, train_batches, mesh, epoch, num_epochs, progress: _Progress,
                 stop: interruption.StopRequests, log_every: int = 0,
                 log_steps: Callable[..., None] | None = None) -> tuple[TrainState, dict[str, np.ndarray], int]:
    """The epoch's training steps from `progress.epoch_step` on, until done or asked to stop.

    `step(state, batch) -> (state, metrics)` is the multi-run step; `sources` holds one
    source (inputs shared by all runs) or one per run, whose batches `train_batches(source,
    epoch, first_step)` reads (`Method.train_batches`). An epoch's last batch may be smaller
    (`DataSource.last_batch_size`): the step then compiles once more for its shape, and the
    metric sums weigh each step by its images (`count`). Returns the state, the epoch's per-step
    metric sums (`[R]` each, `progress.epoch_sums` included) and the epoch's steps done: fewer
    than `steps_per_epoch` when `stop` asked for it. The epoch's last step is not offered to
    `stop`: the caller evaluates first. Every `log_every` global steps, `log_steps(epoch,
    global_step, sums since the previous call or the epoch's start, seconds since then)`. A
    progress bar shows on a terminal only.
    """
    from tqdm import tqdm  # pylint: disable=import-outside-toplevel

    steps_per_epoch = sources[0].steps_per_epoch
    done = progress.epoch_step
    totals, in_flight, last_refresh = progress.epoch_sums, collections.deque(), time.time()
    logged, logged_at = progress.epoch_sums, time.time()
    batches = runs.stacked_batches(sources, lambda source: train_batches(source, epoch, done))
    with tqdm(total=steps_per_epoch, initial=done, desc=f"epoch {epoch}/{num_epochs}", leave=False,
              disable=jax.process_index() != 0 or not sys.stderr.isatty()) as bar:
        for batch in sharding.prefetch(batches, mesh, run_axis=len(sources) > 1):
            state, metrics = step(state, batch)
            done += 1
            totals = metrics if totals is None else accumulate(totals, metrics)
            in_flight.append(metrics)
            if len(in_flight) > _STEPS_IN_FLIGHT:
                jax.block_until_ready(in_flight.popleft())  # waits for an older step; copies nothing
                bar.update()
            global_step = (epoch - 1) * steps_per_epoch + done
            if log_every and global_step % log_every == 0:
                current = jax.device_get(totals)
                since = current if logged is None else {name: current[name] - logged[name] for name in current}
                log_steps(epoch, global_step, since, time.time() - logged_at)
                logged, logged_at = current, time.time()
            if not bar.disable and time.time() - last_refresh > 2.0:  # a transfer to the host, so not every step
                current = jax.device_get(totals)
                bar.set_postfix(loss=f"{np.mean(current['loss'] / current['count']):.4f}",
                                acc=f"{np.mean(100 * current['correct'] / current['count']):.2f}%")
                last_refresh = time.time()
            if done < steps_per_epoch and stop.should_stop(global_step):
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
