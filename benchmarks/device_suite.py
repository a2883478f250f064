"""One prepared run of the measurements that matter on an accelerator, within a time budget.

    python benchmarks/device_suite.py [--tiny] [--data FILE.npz] [--out FILE.json] [--budget-seconds 420]
    python benchmarks/device_suite.py --prepare-data ../shared/data/cifar10-jpeg.tar.gz FILE.npz

Parts (`--parts`, default all):
1. throughput: train-step throughput (images/s), compile seconds, XLA's FLOPs and device memory
   of the step (and the allocator's peak so far, where the device reports one), achieved FLOP/s
   and its fraction of the device's peak (`PEAK_TFLOPS`), for the pairs of `PAIRS`: batch 64
   (the paper's) and `--large-batch`, float32 and bfloat16, the teacher folded and not
   (`throughput.run`, synthetic on-device batches); wrn_40_2 -> ShuffleV1 with its grouped
   convolutions decomposed as on CPUs (`EVERY_PLATFORM`); the first setting compiled with each
   of `XLA_OPTION_VARIANTS`.
2. reference (with --reference-code, the folder holding the original code's `mdistiller`): the
   original PyTorch step of the same pairs at batch 64 (`reference_step.py`, in a subprocess),
   beside part 1's figures.
3. runs: several runs in one program: 1 and 5 seeds vmapped against one run at a time.
4. real_data (with --data, an .npz of `catkd_jax.data.npz`, read without TensorFlow): a vanilla
   resnet8 trained twice for `--real-data-epochs`: the loss falls, test accuracy is above
   chance, and the two runs are bit-identical; the training loop's images/s (input pipeline,
   transfers and all) beside its train step's alone.
5. methods: every distillation method's train step on resnet32x4 -> resnet8x4, batch 64, float32
   (images/s, compile seconds, memory), with --reference-code beside the original's trainer
   iteration of the same method (`reference_step.py --method`, one subprocess for all).
Within the budget, each part's essentials come first (part 1 at batch 64 in float32 with the
teacher folded, part 2, the same in bfloat16, the decomposed grouped convolutions, parts 3, 4
and 5, the XLA options), then the rest of part 1; a measurement starts only while the budget
lasts (what is left is listed as skipped), and one that fails is listed with its error while
the others go on. --out is rewritten after every measurement, so a run that is stopped keeps
what it measured. Prints one table per part. --tiny runs every part at
toy sizes (CPU, tests). --prepare-data writes the .npz from a CIFAR-10 image folder or its
.tar.gz (TensorFlow decodes it, on a machine that has it): the first `--train-size` and
`--test-size` images, class-balanced.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import pathlib
import subprocess
import sys
import tarfile
import tempfile
import time
import unittest.mock
from typing import Any, Callable, Iterator, Sequence

import jax
import numpy as np

import throughput  # the sibling script: python puts this directory first on the path

from catkd_jax import checkpoints, config_files, default_config, methods, training
from catkd_jax.console import format_table
from catkd_jax.data import reduce_training_set, save_npz
from catkd_jax.models import layers

# Dense peak TFLOP/s per chip by device kind and dtype; float32 convolutions and matmuls run
# as TF32 on these GPUs under JAX's default precision.
PEAK_TFLOPS = {
    "H200": {"bfloat16": 989.4, "float32": 494.7},
    "H100": {"bfloat16": 989.4, "float32": 494.7},
    "A100": {"bfloat16": 312.0, "float32": 156.0},
}

PARTS = ("throughput", "reference", "runs", "real_data", "methods")

# Part 5's methods: every distillation method (--tiny: CRD alone, the one whose batches carry more).
METHODS = tuple(name for name in methods.METHODS if methods.needs_teacher(name))
TINY_METHODS = ("crd",)

# The original code's step measured in a subprocess: importing torch, cuDNN's autotuning and three
# pairs of 2 x --steps eager steps take well under a minute on a GPU.
REFERENCE_TIMEOUT_SECONDS = 300

PAIRS = (("resnet32x4", "resnet8x4"), ("resnet56", "resnet20"), ("wrn_40_2", "ShuffleV1"))

# `jax.lax.platform_dependent`'s platform names. Part 1 also measures wrn_40_2 -> ShuffleV1 with
# its grouped convolutions decomposed on all of them, as they are on CPUs: whether that pays on
# this device too.
EVERY_PLATFORM = ("cpu", "cuda", "rocm", "tpu")

# XLA options, each alone in the compile of part 1's first step (resnet32x4 -> resnet8x4, batch
# 64, float32): what autotuning costs in compile time and buys in speed, and what bit-identical
# GPU steps cost (the real-data part says whether they are bit-identical without). --tiny: one
# CPU option, to exercise the path.
XLA_OPTION_VARIANTS = ({"xla_gpu_autotune_level": 0}, {"xla_gpu_deterministic_ops": True})
TINY_XLA_OPTION_VARIANTS = ({"xla_cpu_use_fusion_emitters": False},)


def peak_tflops(device_kind: str, dtype: str) -> float | None:
    """The peak of `PEAK_TFLOPS` for a device kind ("NVIDIA H200"), None if unknown (CPUs)."""
    for name, peaks in PEAK_TFLOPS.items():
        if name in device_kind:
            return peaks[dtype]
    return None


class Recorder:
    """Runs the suite's measurements while its budget of wall-clock seconds lasts, and keeps what
    each gave (or that it was skipped, or its error) in `result`, written to `out` at the start
    and after each measurement."""

    def __init__(self, result: dict, seconds: float, out: pathlib.Path):
        self.result, self.out = result, out
        self.deadline = time.monotonic() + seconds
        self._save()

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def measure(self, name: str, measure: Callable[[], Any], keep: Callable[[Any], None]) -> None:
        if self.left() <= 0:
            self.result["skipped"].append(name)
        else:
            started = time.monotonic()
            try:
                measured = measure()
            # A lent device runs the suite once: a configuration that fails must not cost the others.
            except Exception as error:  # pylint: disable=broad-exception-caught
                first_line = (str(error).strip().splitlines() or [""])[0]
                self.result["errors"].append(f"{name}: {type(error).__name__}: {first_line}")
            else:
                if isinstance(measured, dict):
                    measured["seconds"] = time.monotonic() - started
                keep(measured)
        self._save()

    def _save(self) -> None:
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.out.write_text(json.dumps(self.result, indent=1))


def _throughput(teacher: str | None, student: str, batch: int, dtype: str, folded: bool, args: argparse.Namespace,
                runs: int = 1, vectorize: str = "auto", method: str = "cat_kd", xla_options: dict | None = None) -> dict:
    flags = [*([f"--teacher={teacher}"] if teacher else []), f"--student={student}", f"--method={method}",
             f"--batch-size={batch}", f"--dtype={dtype}", f"--steps={args.steps}", f"--warmup={args.warmup}",
             f"--runs={runs}", f"--vectorize={vectorize}"]
    flags += [f"--xla-option={name}={str(value).lower() if isinstance(value, bool) else value}"
              for name, value in (xla_options or {}).items()]
    result = throughput.run(throughput.parse_args(flags + ([] if folded else ["--no-fold-batch-norm"])))
    steps_per_second = result["train_images_per_sec"] / (batch * runs)
    flops = result["train_step_flops"]
    result["achieved_tflops"] = flops * steps_per_second / 1e12 if flops else None
    peak = peak_tflops(jax.devices()[0].device_kind, dtype)
    result["fraction_of_peak"] = result["achieved_tflops"] / peak if peak and flops else None
    # The allocator's high-water mark so far in this process (GPUs report it; CPUs give None):
    # an upper bound on this configuration's use, beside XLA's estimate of the step alone.
    stats = jax.devices()[0].memory_stats() or {}
    peak_bytes = stats.get("peak_bytes_in_use")
    result["process_peak_device_mib"] = peak_bytes / 2**20 if peak_bytes is not None else None
    return result


@contextlib.contextmanager
def grouped_convolutions_decomposed_on(platforms: Sequence[str]) -> Iterator[None]:
    """Models traced inside decompose their grouped convolutions on `platforms` (instead of the
    CPU alone; `layers.grouped_conv_general_dilated`)."""
    decomposed = functools.partial(layers.grouped_conv_general_dilated, decomposed_on=tuple(platforms))
    with unittest.mock.patch.object(layers, "grouped_conv_general_dilated", decomposed):
        yield


def _decomposed_throughput(teacher: str, student: str, args: argparse.Namespace) -> dict:
    with grouped_convolutions_decomposed_on(EVERY_PLATFORM):
        return dict(_throughput(teacher, student, 64, "float32", True, args), grouped_convolutions="decomposed")


def _setting_name(teacher: str, student: str, batch: int, dtype: str, folded: bool, *variant: str) -> str:
    """A part-1 measurement's name in the skipped and failed lists."""
    return ", ".join([f"{teacher}->{student} batch {batch} {dtype} {'folded' if folded else 'unfolded'}", *variant])


def throughput_settings(args: argparse.Namespace) -> tuple[list, list, list]:
    """`(teacher, student, batch, dtype, folded)` of part 1 in three groups, measured in this
    order among the other parts: batch 64 in float32 with the teacher folded (the original
    code's setting), the same in bfloat16, the rest. --tiny varies batch, dtype and folding
    together, once."""
    if args.tiny:
        return [("resnet8", "resnet8", 8, "float32", True)], [], [("resnet8", "resnet8", args.large_batch, "bfloat16", False)]
    float32, bfloat16 = ([(teacher, student, 64, dtype, True) for teacher, student in PAIRS] for dtype in ("float32", "bfloat16"))
    rest = [(teacher, student, args.large_batch, dtype, True) for teacher, student in PAIRS
            for dtype in ("bfloat16", "float32")]
    rest += [(teacher, student, 64, dtype, False) for teacher, student in PAIRS for dtype in ("float32", "bfloat16")]
    return float32, bfloat16, rest


def reference(args: argparse.Namespace, method_names: Sequence[str] = ("cat_kd",)) -> list[dict]:
    """The original PyTorch step of part 1's pairs at batch 64 (`reference_step.py`), in a
    process of its own: torch and JAX do not share this one's device memory or failures; or of
    `method_names` on part 5's pair."""
    pairs = [("resnet20", "resnet20")] if args.tiny else PAIRS  # the original has no CAM-head resnet8
    if tuple(method_names) != ("cat_kd",):
        pairs = PAIRS[:1]
    command = [sys.executable, str(pathlib.Path(__file__).with_name("reference_step.py")),
               f"--code={args.reference_code}", "--pairs=" + ",".join(f"{t}:{s}" for t, s in pairs),
               f"--method={','.join(method_names)}",
               f"--batch-size={8 if args.tiny else 64}", f"--steps={args.steps}", "--json"]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=REFERENCE_TIMEOUT_SECONDS, check=False)
    if completed.returncode != 0:
        raise RuntimeError(f"reference_step.py exited with {completed.returncode}: "
                           + " | ".join(completed.stderr.strip().splitlines()[-3:]))
    return json.loads(completed.stdout.strip().splitlines()[-1])


def real_data(args: argparse.Namespace, workdir: pathlib.Path) -> dict:
    """Two identical trainings of a vanilla resnet8 on the .npz: loss, accuracy, bit-equality;
    and the training loop's images/s (its step logs in the last epoch, median) beside the same
    train step's alone on synthetic on-device batches: what the loop's input and host work cost."""
    batch = 64 if not args.tiny else 8
    config = default_config.get_config()
    changes = {"method": "vanilla", "student.arch": "resnet8", "student.classifier_bias": True,
               "data.name": "cifar10", "data.source": "npz", "data.dir": str(args.data),
               "batch_size": batch, "eval_batch_size": 100 if not args.tiny else 8,
               "num_epochs": args.real_data_epochs, "optim.lr": 0.05, "optim.decay_epochs": (),
               "checkpoint.every_epochs": args.real_data_epochs, "log_every_steps": 25 if not args.tiny else 1}
    config = config_files.with_values(config, changes)
    summaries, metrics = [], []
    for attempt in (1, 2):
        summaries.append(training.train_and_evaluate(config, workdir / f"run{attempt}"))
        metrics.append([json.loads(line) for line in (workdir / f"run{attempt}" / "metrics.jsonl").read_text().splitlines()])
    (first, meta), (second, _) = (checkpoints.load_variables(workdir / f"run{attempt}") for attempt in (1, 2))
    identical = all(jax.tree_util.tree_leaves(jax.tree_util.tree_map(np.array_equal, first, second)))
    timeless = [[{k: v for k, v in record.items() if k not in ("epoch_seconds", "images_per_sec")} for record in run]
                for run in metrics]
    epochs = [record for record in metrics[0] if record.get("record") != "steps"]
    loop_rates = [record["images_per_sec"] for record in metrics[0]
                  if record.get("record") == "steps" and record["epoch"] == args.real_data_epochs]
    step_rate = _throughput(None, "resnet8", batch, "float32", True, args, method="vanilla")["train_images_per_sec"]
    return {"epochs": args.real_data_epochs, "steps": meta["step"],
            "train_loss_by_epoch": [record["train_loss"] for record in epochs],
            "test_acc_by_epoch": [record["test_acc"] for record in epochs],
            "best_test_acc": summaries[0]["best_test_acc"], "chance_acc": 10.0,
            "bit_identical": identical and timeless[0] == timeless[1],
            "epoch_seconds": [record["epoch_seconds"] for record in epochs],
            "loop_images_per_sec": float(np.median(loop_rates)), "step_images_per_sec": step_rate}


def run(args: argparse.Namespace) -> dict:
    device = jax.devices()[0]
    result: dict[str, Any] = {"device": f"{jax.device_count()} x {device.device_kind}", "backend": jax.default_backend(),
                              "jax": jax.__version__, "tiny": args.tiny, "throughput": [], "reference": [],
                              "runs": [], "methods": [], "methods_reference": [], "skipped": [], "errors": []}
    recorder = Recorder(result, args.budget_seconds, args.out)

    def throughput_part(settings: list) -> None:
        for teacher, student, batch, dtype, folded in settings if "throughput" in args.parts else ():
            recorder.measure(_setting_name(teacher, student, batch, dtype, folded),
                             functools.partial(_throughput, teacher, student, batch, dtype, folded, args),
                             result["throughput"].append)

    float32, bfloat16, rest = throughput_settings(args)
    throughput_part(float32)
    if args.reference_code and "reference" in args.parts:
        recorder.measure("reference", functools.partial(reference, args), result["reference"].extend)
    throughput_part(bfloat16)
    if not args.tiny and "throughput" in args.parts:  # the tiny pair has no grouped convolutions
        teacher, student = PAIRS[-1]  # ShuffleV1: grouped 1x1 and depthwise convolutions
        recorder.measure(_setting_name(teacher, student, 64, "float32", True, "grouped convolutions decomposed"),
                         functools.partial(_decomposed_throughput, teacher, student, args), result["throughput"].append)
    teacher, student = ("resnet8", "resnet8") if args.tiny else PAIRS[0]
    batch = 8 if args.tiny else 64
    seeds = 2 if args.tiny else 5
    for runs, vectorize in ((1, "unroll"), (seeds, "vmap")) if "runs" in args.parts else ():
        recorder.measure(f"{teacher}->{student} {runs} runs {vectorize}",
                         functools.partial(_throughput, teacher, student, batch, "float32", True, args, runs, vectorize),
                         result["runs"].append)
    if args.data and "real_data" in args.parts:
        with tempfile.TemporaryDirectory() as workdir:
            recorder.measure("real data", functools.partial(real_data, args, pathlib.Path(workdir)),
                             functools.partial(result.__setitem__, "real_data"))
    if "methods" in args.parts:
        teacher, student = ("resnet8", "resnet8") if args.tiny else PAIRS[0]
        for name in TINY_METHODS if args.tiny else METHODS:
            # A method that runs the teacher in training mode (OFD) needs its BatchNorm unfolded.
            folded = not methods.get_method(name).teacher_in_train_mode
            recorder.measure(f"{name}, {teacher}->{student} batch {batch}",
                             functools.partial(_throughput, teacher, student, batch, "float32", folded, args, method=name),
                             result["methods"].append)
        if args.reference_code and not args.tiny:  # (the tests' stand-in for the original has CAT-KD only)
            recorder.measure("methods reference", functools.partial(reference, args, METHODS),
                             result["methods_reference"].extend)
    teacher, student, batch, dtype, folded = float32[0]
    for options in (TINY_XLA_OPTION_VARIANTS if args.tiny else XLA_OPTION_VARIANTS) if "throughput" in args.parts else ():
        recorder.measure(_setting_name(teacher, student, batch, dtype, folded, _describe(options)),
                         functools.partial(_throughput, teacher, student, batch, dtype, folded, args, xla_options=options),
                         result["throughput"].append)
    throughput_part(rest)
    return result


def _describe(options: dict) -> str:
    return ", ".join(f"{name}={value}" for name, value in options.items())


def tables(result: dict) -> str:
    """The result as text tables: throughput (beside the original code's, where measured), runs,
    real data."""
    original = {(r["teacher"], r["student"], r["batch_size"]): r["trainer_images_per_sec"] for r in result["reference"]}
    header = ["teacher -> student", "batch", "dtype", "teacher", "train img/s", "x original", "compile s", "TFLOP/s",
              "of peak", "step MiB"]
    rows = [[f"{r['teacher']} -> {r['student']}", r["batch_size"], r["dtype"],
             ("folded" if r["teacher_batch_norm_folded"] else "unfolded")
             + (", grouped convs decomposed" if r.get("grouped_convolutions") == "decomposed" else "")
             + (f", {_describe(r['compiler_options'])}" if r.get("compiler_options") else ""),
             f"{r['train_images_per_sec']:.0f}",
             _optional(_ratio(r["train_images_per_sec"], original.get((r["teacher"], r["student"], r["batch_size"]))),
                       "{:.2f}"),
             f"{r['compile_seconds']:.1f}", _optional(r["achieved_tflops"], "{:.1f}"),
             _optional(r["fraction_of_peak"], "{:.1%}"), _optional(r["train_step_memory_mib"], "{:.0f}")]
            for r in result["throughput"]]
    parts = [f"{result['device']} ({result['backend']}, jax {result['jax']})"] + ([format_table(header, rows)] if rows else [])
    if result["reference"]:
        rows = [[f"{r['teacher']} -> {r['student']}", r["batch_size"], r["device"], f"{r['trainer_images_per_sec']:.0f}",
                 f"{r['step_images_per_sec']:.0f}", _optional(r["peak_device_mib"], "{:.0f}")] for r in result["reference"]]
        parts.append("the original PyTorch code (float32; x original above divides by its trainer's rate):\n"
                     + format_table(["teacher -> student", "batch", "device", "trainer img/s", "step img/s",
                                     "peak MiB"], rows))
    if result["runs"]:
        single = result["runs"][0]["train_images_per_sec"]
        rows = [[r["runs"], "vmap" if r["vectorized"] else "one program, unrolled", f"{r['train_images_per_sec']:.0f}",
                 f"{r['train_images_per_sec'] / single:.2f}"] for r in result["runs"]]
        parts.append(format_table(["runs", "how", "img/s (all students)", "x one run"], rows))
    if result.get("real_data"):
        data = result["real_data"]
        parts.append(
            f"real data: train loss by epoch {', '.join(f'{x:.3f}' for x in data['train_loss_by_epoch'])}; "
            f"best test accuracy {data['best_test_acc']:.2f}% (chance {data['chance_acc']:.0f}%); "
            f"two runs bit-identical: {data['bit_identical']}; the training loop {data['loop_images_per_sec']:.0f} "
            f"images/s, its train step alone {data['step_images_per_sec']:.0f}")
    if result["methods"]:
        original = {r["method"]: r["trainer_images_per_sec"] for r in result["methods_reference"]}
        rows = [[r["method"], f"{r['teacher']} -> {r['student']}", r["batch_size"],
                 "folded" if r["teacher_batch_norm_folded"] else "unfolded", f"{r['train_images_per_sec']:.0f}",
                 _optional(original.get(r["method"]), "{:.0f}"),
                 _optional(_ratio(r["train_images_per_sec"], original.get(r["method"])), "{:.2f}"),
                 f"{r['compile_seconds']:.1f}", _optional(r["train_step_memory_mib"], "{:.0f}")]
                for r in result["methods"]]
        parts.append("methods (float32; original: its trainer's img/s):\n" + format_table(
            ["method", "teacher -> student", "batch", "teacher", "train img/s", "original img/s", "x original",
             "compile s", "step MiB"], rows))
    if result["skipped"]:
        parts.append("skipped (budget spent): " + "; ".join(result["skipped"]))
    if result["errors"]:
        parts.append("failed:\n" + "\n".join(result["errors"]))
    return "\n\n".join(parts)


def _ratio(value: float, reference: float | None) -> float | None:
    return None if reference is None else value / reference


def _optional(value: float | None, template: str) -> str:
    return "-" if value is None else template.format(value)


def prepare_data(source: pathlib.Path, out: pathlib.Path, train_size: int, test_size: int) -> dict:
    """Writes the first class-balanced `train_size` / `test_size` images of a CIFAR-10 folder
    (or its .tar.gz) to `out` (an .npz of `catkd_jax.data.npz`)."""
    from catkd_jax.data.folders import load_folder  # pylint: disable=import-outside-toplevel

    with tempfile.TemporaryDirectory() as extracted:
        root = source
        if source.is_file():
            with tarfile.open(source) as archive:
                archive.extractall(extracted, filter="data")
            (root,) = [path for path in pathlib.Path(extracted).iterdir() if path.is_dir()]
        (train_images, train_labels, test_images, test_labels), classes = load_folder(str(root))
    arrays = []
    for images, labels, size in ((train_images, train_labels, train_size), (test_images, test_labels, test_size)):
        kept = reduce_training_set(labels, len(classes), reserved_rate=min(1.0, size / len(labels)))
        arrays += [images[kept], np.asarray(labels)[kept]]
    save_npz(out, arrays, classes)
    return {"train": len(arrays[1]), "test": len(arrays[3]), "classes": classes, "mib": out.stat().st_size / 2**20}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="toy sizes: every part in seconds on a CPU")
    parser.add_argument("--data", type=pathlib.Path, help="an .npz for part 4 (see --prepare-data)")
    parser.add_argument("--reference-code", type=pathlib.Path,
                        help="for part 2: the folder that holds the original CAT-KD code's mdistiller package")
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("runs") / "device_suite.json",
                        help="the JSON result, rewritten after each measurement (runs/ is ignored by git)")
    parser.add_argument("--budget-seconds", type=float, default=420.0, help="no measurement starts after this")
    parser.add_argument("--parts", type=lambda text: text.split(","), default=list(PARTS),
                        help=f"comma-separated parts to run, of {','.join(PARTS)}")
    parser.add_argument("--large-batch", type=int, default=None, help="part 1's large batch (default 1024; 16 tiny)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per measurement (default 20; 2 tiny)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--real-data-epochs", type=int, default=None, help="default 2; 1 tiny")
    parser.add_argument("--prepare-data", nargs=2, type=pathlib.Path, metavar=("SOURCE", "OUT"))
    parser.add_argument("--train-size", type=int, default=10_000, help="--prepare-data: training images kept")
    parser.add_argument("--test-size", type=int, default=2_000, help="--prepare-data: test images kept")
    args = parser.parse_args(argv)
    args.large_batch = args.large_batch or (16 if args.tiny else 1024)
    args.steps = args.steps or (2 if args.tiny else 20)
    args.real_data_epochs = args.real_data_epochs or (1 if args.tiny else 2)
    return args


def main() -> None:
    args = parse_args()
    if args.prepare_data:
        print(json.dumps(prepare_data(*args.prepare_data, args.train_size, args.test_size)))
        return
    print(tables(run(args)))
    print(f"Wrote {args.out}")


if __name__ == "__main__":
    main()
