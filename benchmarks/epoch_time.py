"""Seconds per training epoch of each method for one teacher-student pair (the paper's Figure 7, right).

    python benchmarks/epoch_time.py --teacher resnet32x4 --student resnet8x4 \
        [--methods vanilla,kd,dkd,cat_kd] [--train-size 50000] [--test-size 10000] \
        [--batch-size 64] [--steps 20] [--json]

An epoch is its training steps at the measured step rate plus one evaluation of the test set:
`train_size / train images/s + test_size / eval images/s`, the rates measured by
`throughput.py` (the train step training uses, on synthetic on-device batches). The input
pipeline is left out: it runs on the host, overlapped with the device, and
`input_pipeline.py` measures it. Vanilla trains the student alone (no teacher forward pass).
With --json, one JSON object on stdout.
"""

from __future__ import annotations

import argparse
import json

import throughput  # the sibling script: python puts this directory first on the path

from catkd_jax import methods
from catkd_jax.console import format_table


def run(args: argparse.Namespace) -> dict:
    rows = []
    for method in args.methods:
        measured = throughput.run(throughput.parse_args([
            f"--teacher={args.teacher}", f"--student={args.student}", f"--method={method}",
            f"--batch-size={args.batch_size}", f"--steps={args.steps}", f"--warmup={args.warmup}",
            f"--dtype={args.dtype}"]))
        train_seconds = args.train_size / measured["train_images_per_sec"]
        eval_seconds = args.test_size / measured["eval_images_per_sec"]
        rows.append({"method": method, "train_images_per_sec": measured["train_images_per_sec"],
                     "eval_images_per_sec": measured["eval_images_per_sec"], "train_seconds": train_seconds,
                     "eval_seconds": eval_seconds, "epoch_seconds": train_seconds + eval_seconds})
    baseline = next((row["epoch_seconds"] for row in rows if row["method"] == "vanilla"), None)
    for row in rows:
        row["relative_to_vanilla"] = row["epoch_seconds"] / baseline if baseline else None
    return {"teacher": args.teacher, "student": args.student, "batch_size": args.batch_size, "dtype": args.dtype,
            "train_size": args.train_size, "test_size": args.test_size, "devices": measured["devices"], "rows": rows}


def table(result: dict) -> str:
    """The result as a text table: one line per method."""
    header = ["method", "train img/s", "eval img/s", "epoch s", "x vanilla"]
    lines = [[row["method"], f"{row['train_images_per_sec']:.1f}", f"{row['eval_images_per_sec']:.1f}",
              f"{row['epoch_seconds']:.1f}",
              "-" if row["relative_to_vanilla"] is None else f"{row['relative_to_vanilla']:.2f}"]
             for row in result["rows"]]
    return format_table(header, lines)


def _methods(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = sorted(set(names) - set(methods.METHODS))
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"--methods takes names of {', '.join(methods.METHODS)}, got {text!r}")
    return names


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     parents=[throughput.measurement_arguments()])
    parser.add_argument("--methods", type=_methods, default=["vanilla", "kd", "dkd", "cat_kd"],
                        help="comma-separated methods, e.g. vanilla,kd,dkd,cat_kd")
    parser.add_argument("--train-size", type=int, default=50_000, help="training images per epoch (CIFAR-100's)")
    parser.add_argument("--test-size", type=int, default=10_000, help="test images evaluated per epoch")
    return parser.parse_args(argv)


def main() -> None:
    args = parse_args()
    result = run(args)
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{result['teacher']} -> {result['student']}, batch {result['batch_size']}, {result['dtype']}, "
              f"{result['devices']}; an epoch: {result['train_size']} training + {result['test_size']} test images")
        print(table(result))


if __name__ == "__main__":
    main()
