"""Several independent runs in one program: seeds and hyper-parameter sweeps.

`config.runs.seeds = (0, 1, 2)` trains one student per seed; `config.runs.sweep =
"cat_kd.beta=10,50,100"` one per value of a float field (all with `config.seed`: common random
numbers, so runs differ by the swept value alone); both together train every (value, seed)
pair. The training loop stacks the runs' states on a leading axis and `jax.vmap`s the train
step over it. Runs that share a seed share their input batches, and then the teacher's forward
pass is computed once for all of them (it depends on nothing that varies between runs).

A run is the same as a single run launched with its seed and value: same initialisation, data
order, augmentation and (for generated data sources) data.
"""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib
import statistics
from typing import Any, Callable, Iterator, Sequence

import jax
import ml_collections
import numpy as np

from catkd_jax import config_files, console
from catkd_jax.errors import ConfigError
from catkd_jax.methods import METHODS

# Sweepable: the float fields read inside the train step, whose values can then be traced: the
# optimiser's and every method's section, except fields that set a method's constants as it is built.
_SWEEPABLE_SECTIONS = ("optim", *(name for name in METHODS if name != "vanilla"))
_BUILD_TIME_FIELDS = ("vid.init_pred_var", "vid.eps")


@dataclasses.dataclass(frozen=True)
class Run:
    """One run of a multi-run program; `value` is that of the swept field, if any."""

    index: int
    seed: int
    value: float | None = None

    @property
    def name(self) -> str:
        return f"run_{self.index}"


@dataclasses.dataclass(frozen=True)
class RunPlan:
    """The runs `config.runs` asks for.

    `field` is the swept field (`"cat_kd.beta"`) or None; `shared_inputs` is True when every
    run sees the same batches (one seed), so batches carry no run axis.
    """

    runs: tuple[Run, ...]
    field: str | None

    @property
    def shared_inputs(self) -> bool:
        return len({run.seed for run in self.runs}) == 1

    @property
    def multiple(self) -> bool:
        return len(self.runs) > 1

    def values(self) -> list[float]:
        """The swept value of every run (zeros without a sweep: the step ignores them)."""
        return [0.0 if run.value is None else run.value for run in self.runs]

    def directories(self, workdir: pathlib.Path) -> list[pathlib.Path]:
        """A single run writes into `workdir` itself; several into `workdir/run_<k>`."""
        if not self.multiple:
            return [workdir]
        return [workdir / run.name for run in self.runs]

    def describe(self, run: Run) -> str:
        parts = [f"seed {run.seed}"]
        if self.field is not None:
            parts.append(f"{self.field}={run.value:g}")
        return ", ".join(parts)


def parse_sweep(config: ml_collections.ConfigDict) -> tuple[str, tuple[float, ...]] | None:
    """`config.runs.sweep` ("section.field=v1,v2,...") as `(field, values)`, or None if empty."""
    text = config.runs.sweep.strip()
    if not text:
        return None
    usage = "write it as 'section.field=v1,v2,...', e.g. 'cat_kd.beta=10,50,100'"
    field, equals, listed = text.partition("=")
    field = field.strip()
    section, dot, name = field.partition(".")
    if not equals or not dot:
        raise ConfigError(f"config.runs.sweep={text!r} is not understood; {usage}")
    if (section not in _SWEEPABLE_SECTIONS or section not in config or name not in config[section]
            or field in _BUILD_TIME_FIELDS):
        raise ConfigError(
            f"config.runs.sweep: {field!r} cannot be swept; sweep a float field of "
            f"{', '.join(_SWEEPABLE_SECTIONS)} (fields that change shapes or data need separate runs)"
        )
    if not isinstance(config[section][name], float):
        raise ConfigError(
            f"config.runs.sweep: {field} is a {type(config[section][name]).__name__} field; only float "
            "fields can be swept in one program (others change the program: launch separate runs)"
        )
    try:
        values = tuple(float(value) for value in listed.split(","))
    except ValueError:
        raise ConfigError(f"config.runs.sweep={text!r}: the values must be numbers; {usage}") from None
    if len(set(values)) != len(values):
        raise ConfigError(f"config.runs.sweep={text!r} lists a value twice")
    return field, values


def plan_runs(config: ml_collections.ConfigDict) -> RunPlan:
    """The runs of `config`: one per (sweep value, seed), or the single run of `config.seed`."""
    seeds = tuple(int(seed) for seed in config.runs.seeds) or (int(config.seed),)
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"config.runs.seeds={tuple(config.runs.seeds)} lists a seed twice")
    sweep = parse_sweep(config)
    field, values = sweep if sweep else (None, (None,))
    runs = [(value, seed) for value in values for seed in seeds]
    return RunPlan(tuple(Run(index, seed, value) for index, (value, seed) in enumerate(runs)), field)


def vectorize(config: ml_collections.ConfigDict) -> bool:
    """Whether to `vmap` the runs' students (`config.runs.vectorize`) rather than unroll them.

    'auto' vectorises on accelerators only: XLA's CPU convolutions batched over runs (grouped
    convolutions) are several times slower than the same convolutions one run at a time.
    """
    choice = config.runs.vectorize
    if choice not in ("auto", "vmap", "unroll"):
        raise ConfigError(f"config.runs.vectorize must be 'auto', 'vmap' or 'unroll', got {choice!r}")
    if choice == "auto":
        return jax.default_backend() != "cpu"
    return choice == "vmap"


def run_config(config: ml_collections.ConfigDict, plan: RunPlan, run: Run) -> ml_collections.ConfigDict:
    """The config of `run` as a single run: its seed and swept value, an empty `runs` section."""
    changes = {"seed": run.seed, "runs.seeds": (), "runs.sweep": ""}
    if plan.field is not None:
        changes[plan.field] = run.value
    return config_files.with_values(config, changes)


def summarize(plan: RunPlan, results: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """`summary.json` content: each run's seed, value and accuracies, and mean ± std over runs.

    Diverged runs (with a `diverged_epoch`) are listed but left out of the mean.
    """
    rows = []
    for run, result in zip(plan.runs, results):
        row = {"run": run.name, "seed": run.seed}
        if plan.field is not None:
            row[plan.field] = run.value
        rows.append({**row, **result})
    summary: dict[str, Any] = {"field": plan.field, "runs": rows}
    for key in ("best_test_acc", "final_test_acc"):
        values = [row[key] for row in rows if "diverged_epoch" not in row and math.isfinite(row[key])]
        if values:
            summary[key] = mean_and_std(values)
    return summary


def mean_and_std(values: Sequence[float]) -> dict[str, float]:
    """`{"mean", "std", "runs"}` of `values`; the sample standard deviation (n - 1), as papers
    report over seeds, and 0 for a single value."""
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"mean": statistics.mean(values), "std": spread, "runs": len(values)}


def format_table(summary: dict[str, Any]) -> str:
    """The runs of `summary` as an aligned text table, with the mean ± std line."""
    field = summary["field"]
    header = ["run", "seed", *([field] if field else []), "best acc", "epoch", "final acc"]
    lines = []
    for row in summary["runs"]:
        cells = [row["run"], str(row["seed"])]
        if field:
            cells.append(f"{row[field]:g}")
        if row.get("best_epoch"):
            cells += [f"{row['best_test_acc']:.2f}%", str(row["best_epoch"]), f"{row['final_test_acc']:.2f}%"]
        else:
            cells += ["-", "", "-"]
        if row.get("diverged_epoch"):
            cells[-1] += f" (diverged in epoch {row['diverged_epoch']})"
        lines.append(cells)
    if "best_test_acc" in summary:
        best, final = summary["best_test_acc"], summary["final_test_acc"]
        lines.append(["mean ± std", "", *([""] if field else []), f"{best['mean']:.2f} ± {best['std']:.2f}", "",
                      f"{final['mean']:.2f} ± {final['std']:.2f}"])
    return console.format_table(header, lines)


def write_summary(workdir: pathlib.Path, summary: dict[str, Any]) -> None:
    if jax.process_index() == 0:
        (workdir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")


def run_directories(workdir: pathlib.Path) -> list[pathlib.Path]:
    """The `run_<k>` directories of a multi-run workdir, in run order (empty for a single run)."""
    found = [path for path in workdir.glob("run_*") if path.is_dir() and path.name[4:].isdigit()]
    return sorted(found, key=lambda path: int(path.name[4:]))


def stack(trees: Sequence[Any]) -> Any:
    """The runs' pytrees (same structure) as one, each leaf stacked on a leading run axis (numpy)."""
    return jax.tree_util.tree_map(lambda *leaves: np.stack(leaves), *trees)


def unstack(tree: Any, index: int) -> Any:
    """Run `index`'s pytree from one stacked on a leading run axis."""
    return jax.tree_util.tree_map(lambda leaf: leaf[index], tree)


def stacked_batches(sources: Sequence[Any], batches_of: Callable[[Any], Iterator[dict]]) -> Iterator[dict[str, np.ndarray]]:
    """`batches_of(source)` of one shared source, or those of one source per run stacked on a
    leading run axis (`[R, B, ...]`)."""
    if len(sources) == 1:
        yield from batches_of(sources[0])
        return
    for parts in zip(*(batches_of(source) for source in sources)):
        yield {key: np.stack([part[key] for part in parts]) for key in parts[0]}
