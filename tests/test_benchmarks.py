"""The benchmark scripts keep working (tiny settings; the figures themselves live in docs)."""

from __future__ import annotations

import argparse
import importlib.util

from conftest import REPO_ROOT


def _script(name: str):
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", REPO_ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
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
