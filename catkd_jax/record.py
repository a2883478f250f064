"""The workdir's `config.json` is the record of how its checkpoints were made.

A run resumes only with a config whose result-changing fields equal the recorded ones. Fields
that cannot change what is learned may differ (`NEUTRAL_FIELDS`: more epochs, checkpointing,
evaluation batching, linear-probe settings); any other difference is refused with the list of
fields, unless each of them is named in `allow_changes` (main.py's `--allow_config_change`),
in which case `config_changes.jsonl` keeps the recorded and the new value of each.
"""

from __future__ import annotations

import json
import os
import pathlib
import time
from typing import Any, Sequence

import ml_collections

from catkd_jax import default_config
from catkd_jax.errors import UserError

CONFIG_FILE = "config.json"
CHANGES_FILE = "config_changes.jsonl"
# Dotted fields, or sections ending in ".", that may change when a run resumes.
NEUTRAL_FIELDS = ("num_epochs", "eval_batch_size", "log_every_steps", "checkpoint.", "probe.")


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(tree, dict):
        return {prefix[:-1]: tree}
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        flat.update(_flatten(value, f"{prefix}{key}."))
    return flat


def as_json(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """The config as its record holds it (tuples become lists)."""
    return json.loads(config.to_json_best_effort())


def changed_fields(recorded: dict[str, Any], config: ml_collections.ConfigDict) -> dict[str, tuple[Any, Any]]:
    """`{dotted field: (recorded value, new value)}` of the result-changing fields that differ.

    A field the record lacks (one added to the project after the run started) counts as its
    default, which is what the code did before the field existed.
    """
    old, new = _flatten(recorded), _flatten(as_json(config))
    defaults = _flatten(as_json(default_config.get_config()))
    old = {field: old.get(field, defaults.get(field, "(absent)")) for field in set(old) | set(new)}
    neutral = lambda field: any(
        field == name or (name.endswith(".") and field.startswith(name)) for name in NEUTRAL_FIELDS
    )
    return {
        field: (old[field], new.get(field, "(absent)"))
        for field in sorted(old)
        if old[field] != new.get(field, "(absent)") and not neutral(field)
    }


def check_resume(
    workdir: pathlib.Path, config: ml_collections.ConfigDict, allow_changes: Sequence[str] = ()
) -> dict[str, tuple[Any, Any]]:
    """The allowed changes of `config` against `workdir`'s record; refuses any other change.

    Returns `{}` when there is no record. Raises `UserError` listing every differing field
    that `allow_changes` does not name.
    """
    path = workdir / CONFIG_FILE
    if not path.is_file():
        return {}
    changes = changed_fields(json.loads(path.read_text()), config)
    refused = {field: values for field, values in changes.items() if field not in allow_changes}
    if refused:
        listing = ", ".join(f"{field} {old!r} -> {new!r}" for field, (old, new) in refused.items())
        raise UserError(
            f"{workdir} holds a run made with another config ({listing}); resume with the recorded "
            f"values, start a new --workdir, or accept the change with "
            f"--allow_config_change={','.join(refused)}"
        )
    return changes


def write(workdir: pathlib.Path, config: ml_collections.ConfigDict, changes: dict[str, tuple[Any, Any]]) -> None:
    """Writes `config` as `workdir`'s record, logging the allowed `changes` of a resume."""
    if changes:
        with (workdir / CHANGES_FILE).open("a") as file:
            for field, (old, new) in changes.items():
                file.write(json.dumps(dict(time=time.strftime("%Y-%m-%dT%H:%M:%S"), field=field,
                                           recorded=old, now=new)) + "\n")
    path, text = workdir / CONFIG_FILE, config.to_json_best_effort(indent=2) + "\n"
    if not path.is_file() or path.read_text() != text:  # a resume that changes nothing writes nothing
        path.write_text(text)


def find(checkpoint: str | os.PathLike) -> pathlib.Path | None:
    """The `config.json` that records how `checkpoint` was made, if any: in it (a workdir, or a
    run of a multi-run workdir) or in the workdir above it (its `checkpoints/` or one step)."""
    path = pathlib.Path(checkpoint)
    for directory in (path, path.parent, path.parent.parent)[: 3 if path.is_dir() else 0]:
        if (directory / CONFIG_FILE).is_file():
            return directory / CONFIG_FILE
    return None


def read(path: str | os.PathLike) -> ml_collections.ConfigDict:
    """The config a `config.json` records."""
    return ml_collections.ConfigDict(json.loads(pathlib.Path(path).read_text()))
