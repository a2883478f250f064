"""The workdir's `config.json` is the record of how its checkpoints were made.

A run resumes only with a config whose result-changing fields equal the recorded ones. Fields
that cannot change what is learned may differ (`NEUTRAL_FIELDS`: more epochs, checkpointing,
evaluation batching, linear-probe settings); any other difference is refused with the list of
fields, unless each of them is named in `allow_changes` (main.py's `--allow_config_change`),
in which case `config_changes.jsonl` keeps the recorded and the new value of each. The runs a
workdir holds (`runs.seeds`, `runs.sweep`: its `run_<k>` directories) never change.

The record describes the checkpoints that are kept: a resume rewrites it only once it has saved
a checkpoint (`config_changes.jsonl` names that step), so a run that stops before then leaves it
as it was. Paths (checkpoints, the teacher's config file) are recorded absolute, so the record reads
the same from anywhere.
"""

from __future__ import annotations

import difflib
import json
import os
import pathlib
import time
from typing import Any, Sequence

import ml_collections

from catkd_jax import config_files, default_config
from catkd_jax.errors import ConfigError, UserError

CONFIG_FILE = "config.json"
CHANGES_FILE = "config_changes.jsonl"
# Dotted fields, or sections ending in ".", that may change when a run resumes.
NEUTRAL_FIELDS = ("num_epochs", "eval_batch_size", "log_every_steps", "checkpoint.", "probe.")
# Fields added with a default that is not what the code did before them: a record without one
# counts as the value given here (data.drop_remainder: epochs dropped their last partial batch).
FORMER_BEHAVIOUR = {"data.drop_remainder": True}
# Fields no resume may change: they say which runs the workdir holds.
FIXED_FIELDS = ("runs.seeds", "runs.sweep")
# Fields that name a file or directory: recorded absolute.
PATH_FIELDS = ("teacher.checkpoint", "teacher.config", "student.init_checkpoint")


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


def flat_fields(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """`{dotted field: value}` of every field of `config`, as its record holds them."""
    return _flatten(as_json(config))


def changed_fields(recorded: dict[str, Any], config: ml_collections.ConfigDict,
                   neutral_fields: Sequence[str] = NEUTRAL_FIELDS) -> dict[str, tuple[Any, Any]]:
    """`{dotted field: (recorded value, new value)}` of the fields that differ, but for
    `neutral_fields` (dotted fields, or sections ending in ".").

    A field the record lacks (one added to the project after the run started) counts as what
    the code did before the field existed: its default, or its `FORMER_BEHAVIOUR` value.
    """
    old, new = _flatten(recorded), flat_fields(config)
    for flat in (old, new):  # a relative path of an older record meant one from the working directory
        flat.update({field: os.path.abspath(flat[field]) for field in PATH_FIELDS if flat.get(field)})
    defaults = _flatten(as_json(default_config.get_config())) | FORMER_BEHAVIOUR
    old = {field: old.get(field, defaults.get(field, "(absent)")) for field in set(old) | set(new)}
    neutral = lambda field: any(
        field == name or (name.endswith(".") and field.startswith(name)) for name in neutral_fields
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
        if any(field in FIXED_FIELDS for field in refused):
            raise UserError(f"{workdir} holds the runs of another config ({listing}); the runs of a workdir "
                            "cannot change: resume with the recorded values or start a new --workdir")
        raise UserError(
            f"{workdir} holds a run made with another config ({listing}); resume with the recorded "
            f"values, start a new --workdir, or accept the change with "
            f"--allow_config_change={','.join(refused)}"
        )
    return changes


def check_allowed_changes(config: ml_collections.ConfigDict, allow_changes: Sequence[str]) -> None:
    """Raises `ConfigError` for a name of `allow_changes` that is no field of `config`, or one
    of the `FIXED_FIELDS`."""
    fields = flat_fields(config)
    for name in allow_changes:
        if name in FIXED_FIELDS:
            raise ConfigError(f"--allow_config_change={name}: {name} cannot change in a workdir (it says which runs "
                              "the workdir holds); start a new --workdir")
        if name not in fields:
            close = difflib.get_close_matches(name, fields, n=1)
            hint = f"did you mean {close[0]}? " if close else ""
            raise ConfigError(f"--allow_config_change={name}: the config has no field {name!r}; {hint}name dotted "
                              "fields such as optim.lr (catkd_jax/default_config.py lists them)")


def with_absolute_paths(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """`config` with its `PATH_FIELDS` absolute (from the working directory), '' left as it is."""
    fields = flat_fields(config)
    return config_files.with_values(
        config, {field: os.path.abspath(fields[field]) for field in PATH_FIELDS if fields.get(field)})


def write(workdir: pathlib.Path, config: ml_collections.ConfigDict, changes: dict[str, tuple[Any, Any]],
          first_step: int = 0) -> None:
    """Writes `config` as `workdir`'s record, logging the allowed `changes` of a resume whose
    first checkpoint with them is `first_step`."""
    if changes:
        with (workdir / CHANGES_FILE).open("a") as file:
            for field, (old, new) in changes.items():
                file.write(json.dumps(dict(time=time.strftime("%Y-%m-%dT%H:%M:%S"), field=field,
                                           recorded=old, now=new, from_step=first_step)) + "\n")
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
