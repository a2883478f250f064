"""Test-set evaluation: of the runs being trained, and of any saved network."""

from __future__ import annotations

import functools
import json
import os
import pathlib
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import ml_collections

from catkd_jax import checkpoints, config_files, runs, sharding
from catkd_jax.console import report
from catkd_jax.data import DataSource, create_source
from catkd_jax.models import create_model
from catkd_jax.training.state import activation_dtype
from catkd_jax.training.steps import make_eval_step, sum_over
from catkd_jax.types import Variables


def evaluation_result(sums: dict[str, Any]) -> dict[str, Any]:
    """Top-1/top-5 accuracy (%), mean loss and count from the eval step's sums (one network)."""
    count = float(sums["count"])
    return {
        "test_acc": 100.0 * float(sums["top1"]) / count,
        "test_acc_top5": 100.0 * float(sums["top5"]) / count,
        "test_loss": float(sums["loss"]) / count,
        "test_count": int(count),
    }


def run_evaluation(
    eval_step: Callable, variables: Variables, source: DataSource, mesh: jax.sharding.Mesh
) -> dict[str, Any]:
    """Top-1/top-5 accuracy (%) and mean loss over the whole test set, each example once."""
    sums = sum_over(sharding.prefetch(source.eval_batches(), mesh), lambda batch: eval_step(variables, batch))
    return evaluation_result(sums)


def evaluate_runs(eval_step, variables, sources, mesh) -> list[dict[str, Any]]:
    """`evaluation_result` of every run; `eval_step` and `variables` are stacked over runs."""
    batches = runs.stacked_batches(sources, lambda source: source.eval_batches())
    sums = sum_over(sharding.prefetch(batches, mesh, run_axis=len(sources) > 1),
                     lambda batch: eval_step(variables, batch))
    num_runs = len(next(iter(sums.values())))
    return [evaluation_result({name: value[k] for name, value in sums.items()}) for k in range(num_runs)]


def load_network(
    checkpoint: str | os.PathLike, arch: str, num_classes: int | None, dtype: jnp.dtype = jnp.float32
) -> tuple[flax.linen.Module, Variables, dict[str, Any]]:
    """Model, variables and info (`arch`, `num_classes`...) of the network saved at `checkpoint`.

    `checkpoint` is any form `checkpoints.load_variables` reads; `arch` is only used for a
    `.pth`, the other formats say which architecture they hold. `num_classes`, needed for a
    `.pth`, is otherwise checked against the checkpoint's when given.
    """
    pth_arch = arch if str(checkpoint).endswith(".pth") else None
    variables, info = checkpoints.load_variables(checkpoint, arch=pth_arch, num_classes=num_classes)
    has_bias = "bias" in variables["params"]["classifier"]
    return create_model(info["arch"], info["num_classes"], dtype, has_bias), variables, info


def evaluate(config: ml_collections.ConfigDict, checkpoint: str | os.PathLike) -> dict[str, Any]:
    """Evaluates the network saved at `checkpoint` on the test set and prints one line.

    A multi-run workdir (`run_<k>` directories, `catkd_jax.runs`) evaluates every run, prints a
    line each and the mean ± std, and returns `{"runs": [...], "test_acc": {"mean", "std", "runs"}}`.
    A run whose loss diverged (its workdir's summary.json says so) is marked, evaluated at its
    last good checkpoint if it has one, and left out of the mean (absent if every run diverged).
    """
    mesh = sharding.create_mesh()
    sharding.check_batch_size(config.eval_batch_size, mesh, "eval_batch_size")
    # Generated data sets depend on the seed, so each network is tested on its own seed's data;
    # one source per seed serves every network trained with it.
    source_for = functools.cache(lambda seed: create_source(config_files.with_values(config, {"seed": seed})))
    path = pathlib.Path(checkpoint)
    run_dirs = runs.run_directories(path) if path.is_dir() and not (path / "checkpoints").exists() else []
    if not run_dirs:
        return _evaluate_network(config, checkpoint, source_for, mesh)
    diverged = _diverged_epochs(path)
    results = []
    for directory in run_dirs:
        label = f"{directory.name}: "
        epoch = diverged.get(directory.name)
        if epoch is not None:
            label = f"{directory.name} (diverged in epoch {epoch}, left out of the mean): "
            if not checkpoints.has_training_checkpoints(directory):
                report(f"{label}no checkpoint was kept")
                results.append({"diverged_epoch": epoch})
                continue
        results.append(_evaluate_network(config, directory, source_for, mesh, label=label)
                       | ({} if epoch is None else {"diverged_epoch": epoch}))
    kept = [result["test_acc"] for result in results if "diverged_epoch" not in result]
    if not kept:
        report(f"no mean: every one of the {len(results)} runs diverged")
        return {"runs": results}
    accuracy = runs.mean_and_std(kept)
    report(f"mean ± std over {len(kept)} runs: top1 {accuracy['mean']:.2f} ± {accuracy['std']:.2f}")
    return {"runs": results, "test_acc": accuracy}


def _diverged_epochs(workdir: pathlib.Path) -> dict[str, int]:
    """`{run name: epoch}` of the runs whose loss diverged, as the workdir's summary.json says."""
    summary = workdir / "summary.json"
    if not summary.is_file():
        return {}
    rows = json.loads(summary.read_text()).get("runs", [])
    return {row["run"]: row["diverged_epoch"] for row in rows if row.get("diverged_epoch")}


def _evaluate_network(config, checkpoint, source_for, mesh, label: str = "") -> dict[str, Any]:
    num_classes = source_for(config.seed).num_classes
    model, variables, info = load_network(checkpoint, config.student.arch, num_classes, activation_dtype(config))
    source = source_for(info.get("seed", config.seed))
    result = run_evaluation(jax.jit(make_eval_step(model)), sharding.replicate(variables, mesh), source, mesh)
    report(f"{label}top1 {result['test_acc']:.2f} top5 {result['test_acc_top5']:.2f} loss {result['test_loss']:.4f} "
          f"({result['test_count']} images)")
    return result
