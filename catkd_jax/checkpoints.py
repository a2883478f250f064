"""On-disk formats of this project: the one place that decides checkpoint layout.

Model directory (a frozen network, e.g. a converted teacher)::

    DIR/model.json     {"format": "catkd-jax-model", "version": 1, "arch": ..., "num_classes": ...}
    DIR/variables/     orbax checkpoint of {"params": ..., "batch_stats": ...}

It is written under a temporary name and renamed into place, so a crash never leaves a
half-written directory under the final name.

Training checkpoints (orbax CheckpointManager, atomic by construction)::

    WORKDIR/checkpoints/latest/<step>/{state,meta}   the last `keep` periodic ones
    WORKDIR/checkpoints/best/<step>/{state,meta}     the best test accuracy so far

`state` is `{"step", "params", "batch_stats", "opt_state"}`; `meta` is JSON with the epoch,
best accuracy, and the model's `arch`, `num_classes` and `classifier_bias`.

`load_variables(path)` reads a network from any of: a workdir (its latest checkpoint), a
checkpoint manager directory (its latest step), a step directory, a model directory, or a
PyTorch `.pth` (given the architecture).
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

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
        raise FileNotFoundError(
            f"{source} is not a catkd-jax model directory (no model.json); "
            "convert a .pth with `python -m catkd_jax.convert`"
        )
    info = json.loads(info_file.read_text())
    if info.get("format") != MODEL_FORMAT or info.get("version") != MODEL_FORMAT_VERSION:
        raise ValueError(f"{info_file} is not a {MODEL_FORMAT} v{MODEL_FORMAT_VERSION} description")
    with ocp.StandardCheckpointer() as checkpointer:
        variables = checkpointer.restore(source / "variables")
    return variables, info


class TrainCheckpoints:
    """Periodic and best training checkpoints of one workdir."""

    def __init__(self, workdir: str | os.PathLike, keep: int):
        root = pathlib.Path(workdir).absolute() / "checkpoints"
        self.latest = ocp.CheckpointManager(
            root / "latest",
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True),
            item_names=("state", "meta"),
        )
        self.best = ocp.CheckpointManager(
            root / "best",
            options=ocp.CheckpointManagerOptions(max_to_keep=1, create=True),
            item_names=("state", "meta"),
        )

    def save(self, state: dict[str, Any], meta: dict[str, Any], *, periodic: bool, best: bool) -> None:
        """Saves in the background; `wait()` (or `close()`) before relying on the files."""
        step = int(meta["step"])
        for manager, wanted in ((self.latest, periodic), (self.best, best)):
            if wanted:
                manager.save(
                    step,
                    args=ocp.args.Composite(
                        state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)
                    ),
                    force=True,
                )

    def restore_latest(self, abstract_state: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]] | None:
        """The latest periodic checkpoint as `(state, meta)` shaped like `abstract_state`."""
        step = self.latest.latest_step()
        if step is None:
            return None
        restored = self.latest.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()
            ),
        )
        return restored.state, restored.meta

    def wait(self) -> None:
        self.latest.wait_until_finished()
        self.best.wait_until_finished()

    def close(self) -> None:
        self.latest.close()
        self.best.close()


def _restore_training_checkpoint(manager_dir: pathlib.Path, step: int | None) -> tuple[dict, dict]:
    with ocp.CheckpointManager(
        manager_dir, options=ocp.CheckpointManagerOptions(create=False), item_names=("state", "meta")
    ) as manager:
        step = manager.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"{manager_dir} holds no checkpoint yet")
        restored = manager.restore(
            step, args=ocp.args.Composite(state=ocp.args.StandardRestore(), meta=ocp.args.JsonRestore())
        )
    variables = {"params": restored.state["params"], "batch_stats": restored.state["batch_stats"]}
    return variables, dict(restored.meta)


def load_variables(
    path: str | os.PathLike,
    *,
    arch: str | None = None,
    num_classes: int | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """A network's `{"params", "batch_stats"}` and info (`arch`, `num_classes`) from `path`.

    `path` may be a workdir, a checkpoint manager directory, one step directory, a model
    directory or a `.pth` file (which needs `arch` and `num_classes`). With `arch` or
    `num_classes` given, a checkpoint of another architecture or class count is refused.
    """
    source = pathlib.Path(path).absolute()
    if source.suffix == ".pth":
        if arch is None or num_classes is None:
            raise ValueError(f"reading {source} needs the architecture and class count")
        from catkd_jax import convert  # pylint: disable=import-outside-toplevel

        arch = canonical_name(arch)
        state_dict = convert.load_torch_checkpoint(source)
        variables = convert.from_torch_state_dict(state_dict, arch, num_classes)
        return variables, {"arch": arch, "num_classes": num_classes}
    if not source.exists():
        raise FileNotFoundError(f"no checkpoint at {source}")
    if (source / "model.json").is_file():
        variables, info = load_model(source)
    elif (source / "checkpoints" / "latest").is_dir():
        variables, info = _restore_training_checkpoint(source / "checkpoints" / "latest", None)
    elif (source / "state").is_dir() and source.name.isdigit():
        variables, info = _restore_training_checkpoint(source.parent, int(source.name))
    elif any(child.name.isdigit() for child in source.iterdir()):
        variables, info = _restore_training_checkpoint(source, None)
    else:
        raise FileNotFoundError(
            f"{source} is neither a workdir, a checkpoint directory, a model directory nor a .pth"
        )
    expected = {"arch": arch and canonical_name(arch), "num_classes": num_classes}
    for key, want in expected.items():
        if want is not None and info[key] != want:
            raise ValueError(
                f"the checkpoint at {source} has {key} {info[key]!r} but the config asks for "
                f"{want!r}; point to a matching checkpoint or change the config"
            )
    return variables, info
