"""The five-minute demonstration: a teacher, a vanilla student and a CAT-KD student, compared.

`run(config, workdir)` (what `python main.py --config configs/quickstart.py` does) trains the
three networks on the embedded 'shapes' data, evaluates each, measures how well each one's
class activation maps find the object (the share of test images whose true-class CAM peaks
inside the object's box), draws their CAMs side by side, prints a table and writes it to
`workdir/summary.json`.
"""

from __future__ import annotations

import json
import os
import pathlib
from typing import Any

import jax
import ml_collections
import numpy as np

from catkd_jax import config_files, training, visualize
from catkd_jax.console import format_table
from catkd_jax.data import DataSource, create_source
from catkd_jax.errors import ConfigError


def _variant(config: ml_collections.ConfigDict, **changes: Any) -> ml_collections.ConfigDict:
    """A single-process copy of `config` with dotted fields changed, e.g. `{"student.arch": "resnet8"}`."""
    return config_files.with_values(config, {"pipeline": "single", **changes})


def _source_with_boxes(config: ml_collections.ConfigDict) -> DataSource:
    source = create_source(config)
    if "box" not in next(iter(source.eval_batches())):
        raise ConfigError(
            f"CAM localisation needs object boxes, which config.data.source={config.data.source!r} "
            "does not provide; use config.data.source='shapes'"
        )
    return source


def cam_localization(
    config: ml_collections.ConfigDict, checkpoint: str | os.PathLike, arch: str
) -> float:
    """% of test images whose true-class CAM peaks inside the object's box (sources with boxes)."""
    source = _source_with_boxes(config)
    model, variables, _ = training.load_network(checkpoint, arch, source.num_classes)
    forward = jax.jit(lambda v, x: model.apply(v, x, train=False)[1])
    kernel = variables["params"]["classifier"]["kernel"]
    hits = total = 0
    for batch in source.eval_batches():
        features = forward(variables, batch["image"])
        inside = np.asarray(
            visualize.cam_peak_in_box(features, kernel, batch["label"], batch["box"], source.image_shape[:2])
        )
        hits += int(np.sum(inside & batch["mask"]))
        total += int(np.sum(batch["mask"]))
    return 100.0 * hits / total


def _cam_figure(config, networks: dict[str, tuple[str, pathlib.Path]], path: pathlib.Path) -> pathlib.Path:
    source = create_source(config)
    batch = visualize.first_test_examples(source, 6)
    outputs = {
        name: visualize.network_outputs(checkpoint, arch, source.num_classes, batch["image"])[1]
        for name, (arch, checkpoint) in networks.items()
    }
    return visualize.save_cam_figure(
        path,
        batch["image"],
        batch["label"],
        source.class_names,
        outputs,
        resolution=config.cat_kd.resolution,
        normalize=config.cat_kd.normalize,
        boxes=batch["box"],
    )


def run(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> dict[str, Any]:
    """Trains and compares teacher, vanilla student and CAT-KD student; returns the table."""
    _source_with_boxes(config)  # fail before training, not after
    workdir = pathlib.Path(workdir)
    teacher_dir = workdir / "teacher"
    runs = {
        "teacher": (config.teacher.arch, teacher_dir, _variant(
            config, method="vanilla", **{"student.arch": config.teacher.arch, "student.classifier_bias": True,
                                         "num_epochs": config.teacher.num_epochs or config.num_epochs})),
        "vanilla student": (config.student.arch, workdir / "vanilla", _variant(
            config, method="vanilla", **{"student.classifier_bias": True})),
        "CAT-KD student": (config.student.arch, workdir / "cat_kd", _variant(
            config, method="cat_kd", **{"teacher.checkpoint": str(teacher_dir)})),
    }
    rows = []
    for name, (arch, run_dir, run_config) in runs.items():
        print(f"--- {name}: {arch}, {run_config.method}, {run_config.num_epochs} epochs -> {run_dir}")
        summary = training.train_and_evaluate(run_config, run_dir)
        rows.append(dict(
            network=name,
            arch=arch,
            method=run_config.method,
            best_test_acc=summary["best_test_acc"],
            final_test_acc=summary["final_test_acc"],
            cam_localization=cam_localization(run_config, run_dir, arch),
        ))
    figure = _cam_figure(config, {name: (arch, run_dir) for name, (arch, run_dir, _) in runs.items()},
                         workdir / "cams.png")
    table = _format_table(rows)
    print(table)
    print(f"CAM figure: {figure}")
    result = dict(rows=rows, figure=str(figure), table=table)
    (workdir / "summary.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def _format_table(rows: list[dict[str, Any]]) -> str:
    header = ["network", "arch", "method", "best acc", "final acc", "CAM in box"]
    return format_table(header, [
        [row["network"], row["arch"], row["method"], f"{row['best_test_acc']:.2f}%", f"{row['final_test_acc']:.2f}%",
         f"{row['cam_localization']:.1f}%"] for row in rows])
