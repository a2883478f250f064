"""On-disk formats of this project: the one place that decides checkpoint layout.

Model directory (a frozen network, e.g. a converted teacher)::

    DIR/model.json     {"format": "catkd-jax-model", "version": 1, "arch": ..., "num_classes": ...}
    DIR/variables/     orbax checkpoint of {"params": ..., "batch_stats": ...}

It is written under a temporary name and renamed into place, so a crash never leaves a
half-written directory under the final name.

Training checkpoints (one orbax CheckpointManager, atomic by construction)::

    WORKDIR/checkpoints/<step>/{state,meta}   the newest `keep` steps and the best evaluated one
    WORKDIR/checkpoints.unreadable/           damaged steps set aside on resume (see below)

`state` is `{"step", "params", "batch_stats", "opt_state"}`; `meta` is JSON with the epoch,
best accuracy, and the model's `arch`, `num_classes` and `classifier_bias`; a checkpoint saved
mid-epoch (an interruption) adds `epoch_step` (the epoch's steps done) and `epoch_sums` (its
training metrics so far), so the epoch resumes exactly.

`load_variables(path)` reads a network from any of: a workdir (its latest checkpoint), a
checkpoint manager directory (its latest step), a step directory, a model directory, or a
PyTorch `.pth` (given the architecture).
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import os
import pathlib
import shutil
import sys
import time
from typing import Any, Iterator

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils
from orbax.checkpoint import checkpoint_managers

from catkd_jax import console, convert
from catkd_jax.console import warn
from catkd_jax.errors import InputError, MissingInputError, UserError
from catkd_jax.models import canonical_name

MODEL_FORMAT = "catkd-jax-model"
MODEL_FORMAT_VERSION = 1


def save_model(
    directory: str | os.PathLike, variables: dict[str, Any], *, arch: str, num_classes: int
) -> None:
    """Writes `{"params", "batch_stats"}` of architecture `arch` as a model directory."""
    target = pathlib.Path(directory).absolute()
    if target.exists():
        raise FileExistsError(f"{target} already exists; choose a new output directory")
    staging = target.with_name(f".{target.name}.partial-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        tree = jax.tree_util.tree_map(np.asarray, dict(variables))
        with ocp.StandardCheckpointer() as checkpointer:
            checkpointer.save(staging / "variables", tree)
            checkpointer.wait_until_finished()
        info = dict(format=MODEL_FORMAT, version=MODEL_FORMAT_VERSION, arch=arch, num_classes=num_classes)
        (staging / "model.json").write_text(json.dumps(info, indent=2) + "\n")
        os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def load_model(directory: str | os.PathLike) -> tuple[dict[str, Any], dict[str, Any]]:
    """Reads a model directory: `(variables, info)` where info holds `arch`, `num_classes`."""
    source = pathlib.Path(directory).absolute()
    info_file = source / "model.json"
    if not info_file.is_file():
        raise MissingInputError(
            f"{source} is not a catkd-jax model directory (no model.json); "
            "convert a .pth with `python -m catkd_jax.convert`"
        )
    info = json.loads(info_file.read_text())
    if info.get("format") != MODEL_FORMAT or info.get("version") != MODEL_FORMAT_VERSION:
        raise InputError(f"{info_file} is not a {MODEL_FORMAT} v{MODEL_FORMAT_VERSION} description")
    with ocp.StandardCheckpointer() as checkpointer:
        variables = checkpointer.restore(source / "variables")
    return variables, info


def has_training_checkpoints(workdir: str | os.PathLike) -> bool:
    """Whether `workdir` holds training checkpoint steps (so that a run there resumes)."""
    steps = pathlib.Path(workdir) / "checkpoints"
    return steps.is_dir() and any(child.name.isdigit() for child in steps.iterdir())


class TrainCheckpoints:
    """The training checkpoints of one workdir: `WORKDIR/checkpoints/<step>/{state,meta}`.

    One orbax `CheckpointManager` writes each step once, atomically, with every process taking
    part, so two saves can never race for the same step or the same cross-process barrier
    (`barrier_prefix` keeps the barriers of several managers of one program apart, e.g. one per
    run). It keeps the newest `keep` steps and the evaluated step with the best test accuracy
    (the earliest of equals); a step saved with `test_acc=None` (mid-epoch) is never "best".
    Temporary directories of an interrupted save are removed when the manager opens.
    """

    def __init__(self, workdir: str | os.PathLike, keep: int, barrier_prefix: str = ""):
        self.directory = pathlib.Path(workdir).absolute() / "checkpoints"
        if (self.directory / "latest").is_dir():
            raise UserError(
                f"{self.directory} has the old layout (latest/ and best/); move the step "
                f"directories of {self.directory / 'latest'} up into {self.directory} to resume"
            )
        self._options = ocp.CheckpointManagerOptions(
            create=True,
            cleanup_tmp_directories=True,
            preservation_policy=checkpoint_managers.AnyPreservationPolicy([
                checkpoint_managers.LatestN(keep),
                checkpoint_managers.BestN(
                    get_metric_fn=_best_first, n=1, keep_checkpoints_without_metrics=False
                ),
            ]),
            multiprocessing_options=ocp.options.MultiprocessingOptions(
                barrier_sync_key_prefix=barrier_prefix or None
            ),
        )
        self._manager = self._open()

    def _open(self) -> ocp.CheckpointManager:
        return ocp.CheckpointManager(self.directory, options=self._options, item_names=_ITEMS)

    def save(self, state: dict[str, Any], meta: dict[str, Any], test_acc: float | None) -> None:
        """Saves `state` at step `meta["step"]` in the background; `wait()` before relying on it.

        `test_acc` is the step's evaluated accuracy (None mid-epoch), which decides the best step.
        """
        step = int(meta["step"])
        self._manager.save(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
            metrics=None if test_acc is None else {"test_acc": float(test_acc), "step": step},
            force=True,
        )

    def newest_step(self) -> int | None:
        return self._manager.latest_step()

    def restore_newest(self, abstract_state: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]] | None:
        """The newest readable checkpoint as `(state, meta)` shaped like `abstract_state`, or None.

        A step that cannot be read (a kill or a full disk damaged it) is moved to
        `checkpoints.unreadable/` with a warning, and the step before it is tried, so a replay
        can write that step again. When no step can be read, a `UserError` names what to delete.
        """
        failures = []
        for step in sorted(self._manager.all_steps(), reverse=True):
            try:
                with _quiet_failed_reads():
                    restored = self._manager.restore(
                        step,
                        args=ocp.args.Composite(
                            state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()
                        ),
                    )
            except Exception as error:  # pylint: disable=broad-except  # any damage: try the step before
                failures.append((step, error))
                continue
            if failures:
                self._set_aside([failed for failed, _ in failures], f"step {step}")
            return restored.state, dict(restored.meta)
        if failures:
            step, error = failures[0]
            raise UserError(
                f"no checkpoint in {self.directory} can be read (step {step}: {_first_line(error)}); "
                f"delete {self.directory} to start the run over, or restore it from a copy"
            )
        return None

    def _set_aside(self, steps: list[int], fallback: str) -> None:
        """Moves unreadable `steps` out of the manager's directory (process 0; all processes wait)."""
        aside = self.directory.with_name("checkpoints.unreadable")
        moved = [aside / f"{step}-{int(time.time())}" for step in steps]
        self._manager.close()
        if jax.process_index() == 0:
            aside.mkdir(exist_ok=True)
            for step, target in zip(steps, moved):
                os.replace(self.directory / str(step), target)
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices(f"catkd_set_aside_{self.directory}")
        self._manager = self._open()
        listing = ", ".join(str(path) for path in moved)
        warn(f"checkpoint steps {', '.join(map(str, steps))} of {self.directory} could not be read; "
             f"resuming from {fallback}. The unreadable steps are now in {listing}: delete them "
             "once you no longer need to inspect them")

    def wait(self) -> None:
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.close()


_ITEMS = ("state", "meta")


@contextlib.contextmanager
def _quiet_failed_reads() -> Iterator[None]:
    """Drops what reads still in flight report when orbax gives up on a damaged checkpoint
    ("Event loop is closed", "Future exception was never retrieved"): that failure is the one
    `restore_newest` and `load_variables` report, and these reports would only bury it. Python
    reports them through its hooks; tensorstore's own threads print them straight to stderr,
    until their reads end (`_LATE_READS_SECONDS` after a failure)."""
    previous_hook = sys.unraisablehook

    def hook(unraisable: Any) -> None:
        if not (isinstance(unraisable.exc_value, RuntimeError) and "Event loop is closed" in str(unraisable.exc_value)):
            previous_hook(unraisable)

    never_retrieved = lambda record: "exception was never retrieved" not in record.getMessage()
    asyncio_log = logging.getLogger("asyncio")
    sys.unraisablehook = hook
    asyncio_log.addFilter(never_retrieved)
    try:
        with console.filtered_stderr(_not_a_closed_loop_report):
            try:
                yield
            except Exception:
                time.sleep(_LATE_READS_SECONDS)  # the reads still in flight report into the filter
                # Abandoned futures report now, while the filters are on. Only a failed read leaves
                # any, and a full collection costs a large process a noticeable time per read.
                gc.collect()
                raise
    finally:
        asyncio_log.removeFilter(never_retrieved)
        sys.unraisablehook = previous_hook


# After orbax gives up on a damaged step, tensorstore's reads still in flight end within this time.
_LATE_READS_SECONDS = 1.0
_CLOSED_LOOP_REPORT = ("Traceback (most recent call last):", "asyncio/base_events.py", "self._check_closed()",
                       "raise RuntimeError('Event loop is closed')", "RuntimeError: Event loop is closed")


def _not_a_closed_loop_report(line: str) -> bool:
    """Whether a stderr line is not one of those reports' lines (nor a blank line between them)."""
    return bool(line.strip()) and not any(part in line for part in _CLOSED_LOOP_REPORT)


def _best_first(metrics: dict[str, float]) -> tuple[float, int]:
    """Orders evaluated steps for `BestN`: by accuracy, the earlier of equal ones ranking higher."""
    return metrics["test_acc"], -metrics["step"]


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0] if text else ''}"


def _restore_training_checkpoint(manager_dir: pathlib.Path, step: int | None, setting: str) -> tuple[dict, dict]:
    with ocp.CheckpointManager(
        manager_dir, options=ocp.CheckpointManagerOptions(create=False), item_names=_ITEMS
    ) as manager:
        step = manager.latest_step() if step is None else step
        if step is None:
            raise MissingInputError(f"{manager_dir} holds no checkpoint yet")
        failure = None
        try:
            with _quiet_failed_reads():
                restored = manager.restore(
                    step, args=ocp.args.Composite(state=ocp.args.StandardRestore(), meta=ocp.args.JsonRestore())
                )
        except Exception as error:  # pylint: disable=broad-except  # any damage: say which step, and the others
            failure = _first_line(error)  # only its text leaves, not the failed read's frames
        if failure is not None:
            others = [str(manager_dir / str(other)) for other in manager.all_steps() if other != step]
            remedy = (f"Point {setting} at another step ({', '.join(others)}) or restore it from a copy" if others
                      else "Restore it from a copy (no other step is kept)")
            raise InputError(f"checkpoint step {step} in {manager_dir} cannot be read ({failure}); it is damaged. "
                             f"{remedy}")
    variables = {"params": restored.state["params"], "batch_stats": restored.state["batch_stats"]}
    return variables, dict(restored.meta)


def _not_a_network(directory: pathlib.Path, setting: str) -> str:
    """Why `directory` is no network; a directory of several runs (a multi-run workdir, the
    quickstart's) lists them."""
    networks = sorted(str(path.parent.relative_to(directory))
                      for path in (*directory.glob("*/checkpoints"), *directory.glob("*/*/checkpoints")))
    if networks:
        return (f"{directory} holds several networks: {', '.join(networks)}; point {setting} at one of them, "
                f"e.g. {directory / networks[0]}")
    return f"{directory} is neither a workdir, a checkpoint directory, a model directory nor a .pth"


def load_variables(
    path: str | os.PathLike,
    *,
    arch: str | None = None,
    num_classes: int | None = None,
    setting: str = "--checkpoint",
    classifier_bias: bool = True,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """A network's `{"params", "batch_stats"}` and info (`arch`, `num_classes`) from `path`.

    `path` may be a workdir, a checkpoint manager directory, one step directory, a model
    directory or a `.pth` file (which needs `arch` and `num_classes`). With `arch` or
    `num_classes` given, a checkpoint of another architecture or class count is refused.
    `setting` is what the user set `path` with, for the remedy of a damaged checkpoint.
    A `.pth` of the CAM-head layout (no classifier bias) is read as it is with
    `classifier_bias=False`, else with a zero bias, which gives the same logits; one of the plain
    layout keeps its bias either way.
    """
    source = pathlib.Path(path).absolute()
    if source.suffix == ".pth":
        if arch is None or num_classes is None:
            raise ValueError(f"reading {source} needs the architecture and class count")
        arch = canonical_name(arch)
        state_dict = convert.load_torch_checkpoint(source)
        keep_bias = classifier_bias or not convert.has_cam_head(state_dict)
        variables = convert.from_torch_state_dict(state_dict, arch, num_classes, keep_bias)
        return variables, {"arch": arch, "num_classes": num_classes}
    if not source.exists():
        raise MissingInputError(f"no checkpoint at {source}")
    if (source / "model.json").is_file():
        variables, info = load_model(source)
    elif (source / "checkpoints").is_dir():
        variables, info = _restore_training_checkpoint(source / "checkpoints", None, setting)
    elif (source / "state").is_dir() and source.name.isdigit():
        variables, info = _restore_training_checkpoint(source.parent, int(source.name), setting)
    elif any(child.name.isdigit() for child in source.iterdir()):
        variables, info = _restore_training_checkpoint(source, None, setting)
    else:
        raise MissingInputError(_not_a_network(source, setting))
    expected = {"arch": arch and canonical_name(arch), "num_classes": num_classes}
    for key, want in expected.items():
        if want is not None and info[key] != want:
            raise InputError(
                f"the checkpoint at {source} has {key} {info[key]!r} but the config asks for "
                f"{want!r}; point to a matching checkpoint or change the config"
            )
    return variables, info
