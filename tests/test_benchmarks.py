"""The benchmark scripts keep working (tiny settings; the figures themselves live in docs)."""

from __future__ import annotations

import argparse
import importlib.util
import json
import re
import sys

import pytest

from conftest import REPO_ROOT


def _script(name: str):
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", REPO_ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # as an import would: dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_throughput_reports_the_documented_keys():
    script = _script("throughput")
    args = script.parse_args(["--teacher=resnet8", "--student=resnet8", "--batch-size=8", "--steps=3", "--warmup=1"])
    result = script.run(args)
    for key in ("train_images_per_sec", "eval_images_per_sec", "compile_seconds", "peak_host_memory_mib"):
        assert result[key] > 0, key
    # Consistent figures: an eval step (the student's forward pass) is faster than a train step
    # (the teacher's forward pass, the student's forward and backward passes, the update), and
    # compiling the train step takes longer than running it once.
    assert result["eval_images_per_sec"] > result["train_images_per_sec"]
    assert result["compile_seconds"] > args.batch_size / result["train_images_per_sec"]
    assert result["peak_host_memory_mib"] > 100  # JAX alone takes more


def test_input_pipeline_benchmark_counts_images():
    args = argparse.Namespace(source="shapes", name="cifar100", dir="", size=256, batch_size=64, epochs=1)
    result = _script("input_pipeline").run(args)
    assert result["train_examples"] == 256 and result["images_per_sec"] > 0


def test_epoch_time_is_the_epochs_images_at_the_measured_rates(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO_ROOT / "benchmarks"))  # as `python benchmarks/epoch_time.py` has it
    script = _script("epoch_time")
    args = script.parse_args(["--teacher=resnet8", "--student=resnet8", "--methods=vanilla,cat_kd", "--batch-size=8",
                              "--steps=2", "--warmup=1", "--train-size=800", "--test-size=160"])
    result = script.run(args)
    assert [row["method"] for row in result["rows"]] == ["vanilla", "cat_kd"]
    vanilla, cat_kd = result["rows"]
    for row in result["rows"]:
        assert row["epoch_seconds"] == pytest.approx(800 / row["train_images_per_sec"] + 160 / row["eval_images_per_sec"])
        assert row["relative_to_vanilla"] == pytest.approx(row["epoch_seconds"] / vanilla["epoch_seconds"])
    lines = script.table(result).splitlines()
    assert lines[0].split() == ["method", "train", "img/s", "eval", "img/s", "epoch", "s", "x", "vanilla"]
    assert lines[3].split() == ["cat_kd", f"{cat_kd['train_images_per_sec']:.1f}", f"{cat_kd['eval_images_per_sec']:.1f}",
                                f"{cat_kd['epoch_seconds']:.1f}", f"{cat_kd['relative_to_vanilla']:.2f}"]
    with pytest.raises(SystemExit):
        script.parse_args(["--methods=vanilla,cat"])


def test_paper_tables_are_read_from_the_markdown():
    script = _script("paper_tables")
    title, cells = script.paper_numbers(script._read_paper_tables(), "A.4")
    assert title.startswith("Tables A.4 / A.5")
    assert cells[("ResNet50 → MobileNetV2", "normalised")] == 71.36  # bold in the file
    assert cells[("ResNet110 → ResNet32", "not normalised")] == 73.62
    _, cells = script.paper_numbers(script._read_paper_tables(), "A.3")
    assert len(cells) == 15 and cells[("600", "ResNet32x4")] == 78.26


def test_paper_table_a3_at_tiny_scale_sets_each_cells_mean_and_std_beside_the_paper(tmp_path):
    script = _script("paper_tables")
    args = script.parse_args(["--table=A3", "--scale=tiny", "--seeds=2", f"--workdir={tmp_path}"])
    markdown = script.run(args)
    assert (tmp_path / "table_A3.md").read_text() == markdown
    rows = [line.strip("|").split("|") for line in markdown.splitlines() if re.match(r"\| \d", line)]
    assert len(rows) == 15  # 5 betas x 3 teachers
    _, paper = script.paper_numbers(script._read_paper_tables(), "A.3")
    teachers = {"ResNet56": "resnet56", "WRN-40-2": "wrn_40_2", "ResNet32x4": "resnet32x4"}
    for beta, column, paper_cell, ours, difference in (map(str.strip, row) for row in rows):
        assert float(paper_cell) == paper[(beta, column)]
        # Ours: the mean and sample std over the two seeds of the runs' best accuracies, as the
        # column's sweep program recorded them.
        summary = json.loads((tmp_path / f"shufflev1_from_{teachers[column]}" / "summary.json").read_text())
        best = [run["best_test_acc"] for run in summary["runs"] if run["cat_kd.beta"] == float(beta)]
        assert [run["seed"] for run in summary["runs"] if run["cat_kd.beta"] == float(beta)] == [0, 1]
        mean, std = sum(best) / 2, abs(best[0] - best[1]) / 2 ** 0.5
        assert ours == f"{mean:.2f} ± {std:.2f} (n=2)"
        assert difference == f"{mean - float(paper_cell):+.2f}"
    # One sweep program per teacher, each teacher trained once (none was given).
    assert sorted(path.name for path in (tmp_path / "teachers").iterdir()) == sorted(teachers.values())
