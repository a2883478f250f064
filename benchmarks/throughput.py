"""Throughput of the full jitted train step and of evaluation, on synthetic on-device data.

    python benchmarks/throughput.py --teacher resnet32x4 --student resnet8x4 --method cat_kd \
        --batch-size 64 --steps 20 [--dtype bfloat16] [--runs R [--shared-inputs]] [--json]

The train step is the one training uses (`catkd_jax.training.make_multi_run_step`, here with
`--runs` students): teacher forward, student forward and backward, SGD update. Reported:
images/s of training and of evaluation (student forward), counted over all runs' students,
seconds to compile (and run once) the train step (with --xla-option's compiler options), its
FLOPs and device memory from XLA's cost and memory analyses, peak host memory.
With --json, one JSON object on stdout.
"""

from __future__ import annotations

import argparse
import json
import resource
import time

import jax
import jax.numpy as jnp
import numpy as np

from catkd_jax import config_files, default_config as default, methods, runs, sharding, training
from catkd_jax.models import create_model


CIFAR100_TRAIN_SIZE = 50_000  # the rows of CRD's memory banks


def _time(fn, steps: int) -> float:
    """Seconds per call of `fn` (which returns arrays) over `steps` calls, after the caller warmed up."""
    started = time.perf_counter()
    result = None
    for _ in range(steps):
        result = fn()
    jax.block_until_ready(result)
    return (time.perf_counter() - started) / steps


def run(args: argparse.Namespace) -> dict:
    config = default.get_config()
    config.method = args.method
    config.student.arch = args.student
    config.student.classifier_bias = args.method != "cat_kd"
    config.teacher.arch = args.teacher
    config.dtype = args.dtype
    config.batch_size = args.batch_size
    if args.runs > 1 and args.shared_inputs:
        config.runs.sweep = "optim.lr=" + ",".join(str(0.05 * (k + 1)) for k in range(args.runs))
    elif args.runs > 1:
        config.runs.seeds = tuple(range(args.runs))
    config.runs.vectorize = args.vectorize
    plan = runs.plan_runs(config)
    vectorize = runs.vectorize(config)
    dtype = jnp.dtype(args.dtype)
    num_classes = 100
    mesh = sharding.create_mesh()
    sharding.check_batch_size(args.batch_size, mesh)

    student = create_model(args.student, num_classes, dtype, config.student.classifier_bias)
    teacher, teacher_variables = None, None
    if methods.needs_teacher(args.method):
        teacher = create_model(args.teacher, num_classes, dtype)
        # The settings that must fit the pair (ReviewKD's lists, CRD's embedding inputs), as its configs set them.
        config = config_files.with_values(config, methods.fitted_settings(args.method, student, teacher))
        config.teacher.fold_batch_norm = args.fold_batch_norm
        teacher_variables = training.initialize(teacher, jax.random.key(1), (32, 32, 3))
        teacher_variables = sharding.replicate(
            training.teacher_inference_variables(config, teacher, teacher_variables, (32, 32, 3)), mesh
        )
    steps_per_epoch = 781  # CIFAR-100 at batch 64; only the schedule's boundaries depend on it
    run_configs = [runs.run_config(config, plan, run) for run in plan.runs]
    state = sharding.replicate(training.initial_states(student, plan, run_configs, (32, 32, 3), steps_per_epoch,
                                                       teacher=teacher, teacher_variables=teacher_variables,
                                                       num_train=CIFAR100_TRAIN_SIZE), mesh)
    values = sharding.replicate(np.asarray(plan.values(), np.float32), mesh)
    rng = np.random.default_rng(0)
    leading = () if plan.shared_inputs else (args.runs,)
    batch = sharding.global_batch(
        {
            "image": rng.standard_normal((*leading, args.batch_size, 32, 32, 3), np.float32),
            "label": rng.integers(0, num_classes, (*leading, args.batch_size)).astype(np.int32),
            "mask": np.ones((*leading, args.batch_size), bool),
        },
        mesh,
        run_axis=not plan.shared_inputs,
    )
    train_batch = {key: batch[key] for key in ("image", "label")}
    if args.method == "crd":  # each example's bank row and contrastive rows, as the data source adds them
        index = np.stack([rng.permutation(CIFAR100_TRAIN_SIZE)[:args.batch_size] for _ in range(int(np.prod(leading)))])
        contrast = rng.integers(0, CIFAR100_TRAIN_SIZE, (*index.shape, 1 + config.crd.num_negatives))
        contrast[..., 0] = index
        extra = {"index": index.reshape(*leading, -1).astype(np.int32),
                 "contrast_index": contrast.reshape(*leading, args.batch_size, -1).astype(np.int32)}
        train_batch |= sharding.global_batch(extra, mesh, run_axis=not plan.shared_inputs)
    train_step = jax.jit(
        training.make_multi_run_step(config, student, teacher, steps_per_epoch, plan, vectorize), donate_argnums=0
    )
    eval_step = jax.jit(training.make_multi_run_eval_step(student, plan, vectorize))

    started = time.perf_counter()
    compiled_step = train_step.lower(state, train_batch, teacher_variables, values).compile(
        compiler_options=dict(args.xla_option) or None)
    state, metrics = compiled_step(state, train_batch, teacher_variables, values)
    jax.block_until_ready(metrics)
    compile_seconds = time.perf_counter() - started
    train_step = compiled_step
    for _ in range(args.warmup):
        state, metrics = train_step(state, train_batch, teacher_variables, values)
    jax.block_until_ready(metrics)

    def one_train_step():
        nonlocal state
        state, step_metrics = train_step(state, train_batch, teacher_variables, values)
        return step_metrics

    train_seconds = _time(one_train_step, args.steps)
    eval_variables = {"params": state.params, "batch_stats": state.batch_stats}
    jax.block_until_ready(eval_step(eval_variables, batch))
    eval_seconds = _time(lambda: eval_step(eval_variables, batch), args.steps)
    images = args.runs * args.batch_size  # per step, summed over the runs' students
    return {
        "teacher": args.teacher if teacher is not None else None,
        "student": args.student,
        "method": args.method,
        "batch_size": args.batch_size,
        "runs": args.runs,
        "shared_inputs": plan.shared_inputs,
        "vectorized": vectorize,
        "dtype": args.dtype,
        "teacher_batch_norm_folded": args.fold_batch_norm if teacher is not None else None,
        "devices": f"{jax.device_count()} x {jax.devices()[0].device_kind}",
        "train_images_per_sec": images / train_seconds,
        "eval_images_per_sec": images / eval_seconds,
        "compile_seconds": compile_seconds,
        "train_step_flops": _cost(compiled_step, "flops"),
        "train_step_memory_mib": _memory_mib(compiled_step),
        "peak_host_memory_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "compiler_options": dict(args.xla_option),
    }


def _cost(compiled: jax.stages.Compiled, key: str) -> float | None:
    """A figure of XLA's cost analysis of `compiled` (None where the backend gives none)."""
    analysis = compiled.cost_analysis()
    if isinstance(analysis, (list, tuple)):  # one dict per program in older JAX versions
        analysis = analysis[0] if analysis else None
    return float(analysis[key]) if analysis and key in analysis else None


def _memory_mib(compiled: jax.stages.Compiled) -> float | None:
    """Device memory the compiled step needs, from XLA's memory analysis: its arguments, outputs
    and temporaries, less the outputs that reuse donated arguments (None where not reported)."""
    analysis = compiled.memory_analysis()
    if analysis is None:
        return None
    total = (analysis.argument_size_in_bytes + analysis.output_size_in_bytes + analysis.temp_size_in_bytes
             - analysis.alias_size_in_bytes)
    return total / 2**20


def measurement_arguments() -> argparse.ArgumentParser:
    """The options of a measured train step that the benchmarks built on this one share (an
    argparse parent): the pair, batch, timed and untimed steps, dtype, --json."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--teacher", default="resnet32x4")
    parser.add_argument("--student", default="resnet8x4")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20, help="timed steps")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps after compilation")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     parents=[measurement_arguments()])
    parser.add_argument("--method", default="cat_kd", choices=sorted(methods.METHODS))
    parser.add_argument("--no-fold-batch-norm", dest="fold_batch_norm", action="store_false",
                        help="run the teacher's BatchNorms unfolded")
    parser.add_argument("--runs", type=int, default=1, help="students trained in one program (catkd_jax.runs)")
    parser.add_argument("--shared-inputs", action="store_true",
                        help="with --runs: the runs share their batches, as in a sweep (an optim.lr sweep "
                             "here); otherwise each has its own, as with seeds")
    parser.add_argument("--vectorize", default="auto", choices=["auto", "vmap", "unroll"],
                        help="with --runs: config.runs.vectorize")
    parser.add_argument("--xla-option", action="append", default=[], type=_xla_option, metavar="NAME=VALUE",
                        help="an XLA option for compiling the train step (repeatable), e.g. xla_gpu_autotune_level=0")
    return parser.parse_args(argv)


def _xla_option(text: str) -> tuple[str, bool | int | float | str]:
    """`NAME=VALUE` -> (NAME, VALUE as a bool, int or float where it reads as one)."""
    name, separator, value = text.partition("=")
    if not separator or not name:
        raise argparse.ArgumentTypeError(f"{text!r}: write an XLA option as NAME=VALUE")
    if value.lower() in ("true", "false"):
        return name, value.lower() == "true"
    for kind in (int, float):
        try:
            return name, kind(value)
        except ValueError:
            pass
    return name, value


def main() -> None:
    args = parse_args()
    result = run(args)
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:>22}: {value:.1f}" if isinstance(value, float) else f"{key:>22}: {value}")


if __name__ == "__main__":
    main()
