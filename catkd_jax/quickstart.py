"""The five-minute demonstration: a teacher, vanilla students and CAT-KD students, compared.

`run(config, workdir)` (what `python main.py --config configs/quickstart.py` does) trains a
teacher on the embedded 'shapes' data, then one vanilla and one CAT-KD student per seed of
`config.runs.seeds` (each kind in one program, `catkd_jax.runs`). Students learn from
`config.data.reserved_rate` of the training images, the teacher from all of them: the paper's
reduced-data setting (its Figure 7, left). Every network is evaluated on its seed's test set
for accuracy and CAM localisation (the share of test images whose true-class CAM peaks inside
the object's box). It prints mean ± std over the seeds and the CAT-KD − vanilla difference
paired by seed, writes every seed's numbers and the config to `workdir/summary.json` and draws
one network of each kind into `workdir/cams.png`. Those two are not replaced by the results of
another config unless asked (`replace_results`, main.py's `--replace_results`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
from typing import Any, Sequence

import jax
import ml_collections
import numpy as np

from catkd_jax import config_files, default_config, outputs, record, runs, training, validation, visualize
from catkd_jax.console import format_table
from catkd_jax.data import DataSource, create_source
from catkd_jax.errors import ConfigError, UserError

# The figure: few images, only each network's true-class CAM, so it reads at screen width.
_FIGURE_IMAGES = 4
# Each seed's numbers, and the decimals the table shows them with.
_METRICS = {"best_test_acc": 2, "final_test_acc": 2, "cam_localization": 1}
# Fields the quickstart does not read (it trains its own teacher, then a vanilla and a CAT-KD
# student per seed): another value than the default would be ignored without a word.
_UNREAD_FIELDS = ("method", "teacher.checkpoint", "teacher.train_if_missing", "runs.sweep")
# Fields that cannot change the quickstart's results (its summary.json and cams.png): those that
# a resume may change (`record.NEUTRAL_FIELDS`) but the number of epochs, which a resume extends
# and which here sets the results of fresh runs.
_RESULT_NEUTRAL_FIELDS = tuple(field for field in record.NEUTRAL_FIELDS if field != "num_epochs")


@dataclasses.dataclass(frozen=True)
class _Network:
    name: str
    arch: str
    workdir: pathlib.Path
    config: ml_collections.ConfigDict  # a single-process config; runs.seeds for the students


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


def _networks(config: ml_collections.ConfigDict, workdir: pathlib.Path) -> list[_Network]:
    teacher_dir = workdir / "teacher"
    teacher_epochs = config.teacher.num_epochs or config.num_epochs
    # The students' learning-rate schedule, scaled to the teacher's epochs.
    teacher_decay = tuple(max(1, round(epoch * teacher_epochs / config.num_epochs)) for epoch in config.optim.decay_epochs)
    teacher = _variant(config, method="vanilla", **{
        "student.arch": config.teacher.arch, "student.classifier_bias": True, "student.init_checkpoint": "",
        "runs.seeds": (), "data.reserved_rate": 1.0, "num_epochs": teacher_epochs, "optim.decay_epochs": teacher_decay})
    # Both students are one network (a biased Linear head, PyTorch's init), so only the method
    # differs. The original's CAM head draws its kernel from N(0, 2 / classes): std 0.63 for
    # these 5 classes, with which CAT-KD students reached 35% (docs/benchmarks.md).
    vanilla = _variant(config, method="vanilla", **{"student.classifier_bias": True})
    cat_kd = _variant(config, method="cat_kd", **{"teacher.checkpoint": str(teacher_dir), "student.classifier_bias": True})
    return [
        _Network("teacher", config.teacher.arch, teacher_dir, teacher),
        _Network("vanilla student", config.student.arch, workdir / "vanilla", vanilla),
        _Network("CAT-KD student", config.student.arch, workdir / "cat_kd", cat_kd),
    ]


def _train(network: _Network, allow_changes: Sequence[str]) -> list[dict[str, Any]]:
    """Trains `network`'s runs; returns each run's seed, accuracies and CAM localisation."""
    summary = training.train_and_evaluate(network.config, network.workdir, allow_changes)
    plan = runs.plan_runs(network.config)
    results = summary["runs"] if plan.multiple else [summary]
    return [
        dict(seed=run.seed, best_test_acc=result["best_test_acc"], final_test_acc=result["final_test_acc"],
             cam_localization=cam_localization(runs.run_config(network.config, plan, run), directory, network.arch))
        for run, directory, result in zip(plan.runs, plan.directories(network.workdir), results)
    ]


def _row(network: _Network, seed_rows: list[dict[str, Any]]) -> dict[str, Any]:
    row = dict(network=network.name, arch=network.arch, method=network.config.method, runs=seed_rows)
    return row | {key: runs.mean_and_std([seed_row[key] for seed_row in seed_rows]) for key in _METRICS}


def _paired_difference(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """CAT-KD minus vanilla student, seed by seed (same data and order), as mean ± std."""
    vanilla, cat_kd = (next(row for row in rows if row["network"] == name)
                       for name in ("vanilla student", "CAT-KD student"))
    return {key: runs.mean_and_std([c[key] - v[key] for v, c in zip(vanilla["runs"], cat_kd["runs"])])
            for key in _METRICS}


def _check_config(config: ml_collections.ConfigDict) -> None:
    validation.check_config(config)
    values, defaults = record.flat_fields(config), record.flat_fields(default_config.get_config())
    for field in _UNREAD_FIELDS:
        if values.get(field, defaults[field]) != defaults[field]:
            raise ConfigError(
                f"config.{field}={values[field]!r} is not used by the quickstart, which trains its own teacher, then "
                f"a vanilla and a CAT-KD student per seed of runs.seeds; leave it at {defaults[field]!r}, or set "
                "config.pipeline='single' to train one network as the config says"
            )


def _check_results(config: ml_collections.ConfigDict, summary_path: pathlib.Path, replace_results: bool) -> None:
    """Refuses to replace the results of another config at `summary_path` unless `replace_results`."""
    if replace_results or not summary_path.is_file():
        return
    recorded = json.loads(summary_path.read_text()).get("config")
    if recorded is None:  # a summary from before the config was kept in it
        return
    changes = record.changed_fields(recorded, config, _RESULT_NEUTRAL_FIELDS)
    if changes:
        listing = ", ".join(f"{field} {old!r} -> {new!r}" for field, (old, new) in changes.items())
        raise UserError(
            f"{summary_path.parent} holds the quickstart results (summary.json, cams.png) of another config "
            f"({listing}); use another --workdir, or pass --replace_results to replace them"
        )


def run(config: ml_collections.ConfigDict, workdir: str | os.PathLike, allow_changes: Sequence[str] = (),
        replace_results: bool = False) -> dict[str, Any]:
    """Trains and compares the teacher, vanilla students and CAT-KD students; returns the table.

    The networks resume from `workdir` as `training.train_and_evaluate` does (with
    `allow_changes`); results of another config there are refused unless `replace_results`.
    """
    _check_config(config)
    workdir = pathlib.Path(workdir)
    summary_path, figure_path = workdir / "summary.json", workdir / "cams.png"
    _check_results(config, summary_path, replace_results)
    replaced = {path: outputs.check_writable(path) for path in (summary_path, figure_path)}
    _source_with_boxes(config)  # fail before training, not after
    networks = _networks(config, workdir)
    rows = []
    for network in networks:
        seeds = [run.seed for run in runs.plan_runs(network.config).runs]
        print(f"--- {network.name}: {network.arch}, {network.config.method}, {network.config.num_epochs} epochs, "
              f"seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))} -> {network.workdir}")
        rows.append(_row(network, _train(network, allow_changes)))
    difference = _paired_difference(rows)
    figure = _cam_figure(config, networks, figure_path)
    table = _format_table(rows, difference)
    print(table)
    print(f"CAM figure: {figure}{outputs.replaced_note(figure, replaced[figure_path])}")
    result = dict(rows=rows, difference=difference, figure=str(figure), table=table, config=record.as_json(config))
    summary_path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"Summary: {summary_path}{outputs.replaced_note(summary_path, replaced[summary_path])}")
    return result


def _cam_figure(config: ml_collections.ConfigDict, networks: list[_Network], path: pathlib.Path) -> pathlib.Path:
    """The CAMs of the teacher and of each kind of student of `config.seed` on its first test images."""
    source = create_source(config)
    batch = visualize.first_test_examples(source, _FIGURE_IMAGES)
    outputs = {}
    for network in networks:
        plan = runs.plan_runs(network.config)
        directory = dict(zip((run.seed for run in plan.runs), plan.directories(network.workdir)))
        checkpoint = directory.get(config.seed, next(iter(directory.values())))
        outputs[network.name] = visualize.network_outputs(checkpoint, network.arch, source.num_classes,
                                                          batch["image"])[1]
    return visualize.save_cam_figure(
        path, batch["image"], batch["label"], source.class_names, outputs,
        resolution=config.cat_kd.resolution, normalize=config.cat_kd.normalize, boxes=batch["box"], num_top=0,
    )


def _mean_std(value: dict[str, float], digits: int, sign: str = "") -> str:
    return f"{value['mean']:{sign}.{digits}f} ± {value['std']:.{digits}f}"


def _format_table(rows: list[dict[str, Any]], difference: dict[str, Any]) -> str:
    header = ["network", "arch", "method", "seeds", "best acc %", "final acc %", "CAM in box %"]
    lines = [[row["network"], row["arch"], row["method"], str(len(row["runs"])),
              *(_mean_std(row[key], digits) for key, digits in _METRICS.items())]
             for row in rows]
    lines.append(["CAT-KD - vanilla", "", "paired", str(difference["best_test_acc"]["runs"]),
                  *(_mean_std(difference[key], digits, "+") for key, digits in _METRICS.items())])
    return format_table(header, lines) + "\n(mean ± sample standard deviation over the seeds)"
