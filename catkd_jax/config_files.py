"""Config files: Python files with a `get_config()`, read by path (they are not a package).

An experiment file builds on `catkd_jax.default_config` or on another config file beside it
(`sibling(__file__, "cifar100_cat_res32x4_res32x4")`), and names other config files by their
place beside it (`teacher.config = beside(__file__, "cifar100_teacher_resnet32x4.py")`), so
config files work from any directory, the repository's or a copy, installed package or not.
"""

from __future__ import annotations

import copy
import importlib.util
import os
import pathlib
import types
from typing import Any, Mapping

import ml_collections

from catkd_jax.errors import MissingInputError


def load_module(path: str | os.PathLike) -> types.ModuleType:
    """The Python file at `path`, executed as a module named after its stem."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise MissingInputError(f"no config file at {path}")
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def sibling(file: str | os.PathLike, name: str) -> types.ModuleType:
    """The config file `name` (without .py) in the directory of `file` (a config's `__file__`)."""
    return load_module(pathlib.Path(file).resolve().with_name(f"{name}.py"))


def beside(file: str | os.PathLike, name: str) -> str:
    """The absolute path of the file `name` in the directory of `file` (a config's `__file__`),
    for a config field that names another config file."""
    return str(pathlib.Path(file).resolve().with_name(name))


def load_config(path: str | os.PathLike) -> ml_collections.ConfigDict:
    """`get_config()` of the config file at `path` (a relative path: from the working directory)."""
    return load_module(path).get_config()


def with_values(config: ml_collections.ConfigDict, changes: Mapping[str, Any]) -> ml_collections.ConfigDict:
    """A copy of `config` with the dotted fields of `changes` (`{"cat_kd.beta": 10.0}`) set.

    Only existing fields can be set (a misspelt one raises, suggesting the closest name); a value
    may be of another type, a tracer included: a sweep's train step reads its swept field from
    such a copy.
    """
    config = copy.deepcopy(config)
    was_locked = config.is_locked
    config.lock()
    try:
        with config.ignore_type():
            config.update_from_flattened_dict(dict(changes))
    finally:
        if not was_locked:
            config.unlock()
    return config
