"""On-disk formats of this project: the one place that decides checkpoint layout.

Model directory (a frozen network, e.g. a converted teacher)::

    DIR/model.json     {"format": "catkd-jax-model", "version": 1, "arch": ..., "num_classes": ...}
    DIR/variables/     orbax checkpoint of {"params": ..., "batch_stats": ...}

It is written under a temporary name and renamed into place, so a crash never leaves a
half-written directory under the final name.
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
