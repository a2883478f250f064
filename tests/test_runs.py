"""Tests of several runs in one program: seeds and sweeps (catkd_jax/runs.py and the loop)."""

from __future__ import annotations

import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import textwrap
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from catkd_jax import checkpoints, config_files, record, runs, training
from catkd_jax.errors import ConfigError, UserError
from catkd_jax.models import create_model
from conftest import REPO_ROOT, read_metrics, tiny_config, xla_flags

COMPARED = ("train_loss", "train_acc", "test_loss", "test_acc", "lr")


def assert_same_runs(single_dir, run_dir, keys=COMPARED):
    """Per-epoch metrics of a run in a multi-run program equal those of the single run.

    The tolerance covers the float reordering of vmapped convolutions (measured: up to 6e-5
    relative after 8 steps); a run sharing another's data, seed or statistics is off by percents.
    """
    single, multi = read_metrics(single_dir), read_metrics(run_dir)
    assert [r["epoch"] for r in multi] == [r["epoch"] for r in single]
    for a, b in zip(single, multi):
        for key in keys:
            assert b[key] == pytest.approx(a[key], rel=1e-3, abs=1e-6), (key, a["epoch"])


def test_plan_seeds_sweep_and_their_product():
    single = runs.plan_runs(tiny_config(seed=7))
    assert [(r.seed, r.value) for r in single.runs] == [(7, None)] and not single.multiple

    seeds = runs.plan_runs(tiny_config(runs__seeds=(3, 1)))
    assert [(r.name, r.seed) for r in seeds.runs] == [("run_0", 3), ("run_1", 1)]
    assert not seeds.shared_inputs

    sweep = runs.plan_runs(tiny_config(seed=5, runs__sweep="cat_kd.beta=10, 50,100"))
    assert sweep.field == "cat_kd.beta" and sweep.shared_inputs
    assert [(r.seed, r.value) for r in sweep.runs] == [(5, 10.0), (5, 50.0), (5, 100.0)]

    both = runs.plan_runs(tiny_config(runs__seeds=(0, 1), runs__sweep="optim.lr=0.1,0.2"))
    assert [(r.value, r.seed) for r in both.runs] == [(0.1, 0), (0.1, 1), (0.2, 0), (0.2, 1)]

    run_config = runs.run_config(tiny_config(), both, both.runs[3])
    assert (run_config.seed, run_config.optim.lr, run_config.runs.seeds, run_config.runs.sweep) == (1, 0.2, (), "")


def test_vectorize_choice():
    assert runs.vectorize(tiny_config(runs__vectorize="vmap"))
    assert not runs.vectorize(tiny_config(runs__vectorize="unroll"))
    assert runs.vectorize(tiny_config()) == (jax.default_backend() != "cpu")
    with pytest.raises(ValueError, match="must be 'auto', 'vmap' or 'unroll'"):
        runs.vectorize(tiny_config(runs__vectorize="scan"))


@pytest.mark.parametrize(
    "sweep, message",
    [
        ("cat_kd.beta", "is not understood"),
        ("beta=1,2", "is not understood"),
        ("cat_kd.resolution=2,4", "is a int field"),
        ("data.reserved_rate=0.5,1", "cannot be swept"),
        ("cat_kd.gamma=1,2", "cannot be swept"),
        ("cat_kd.beta=1,x", "must be numbers"),
        ("cat_kd.beta=1,1", "lists a value twice"),
    ],
)
def test_bad_sweeps_are_refused_clearly(sweep, message):
    with pytest.raises(ValueError, match=message):
        runs.plan_runs(tiny_config(runs__sweep=sweep))


def test_repeated_seed_is_refused():
    with pytest.raises(ValueError, match="lists a seed twice"):
        runs.plan_runs(tiny_config(runs__seeds=(1, 1)))


@pytest.fixture(scope="module")
def single_seed_runs(tmp_path_factory) -> dict[int, pathlib.Path]:
    """Seeds 0 and 1 trained for 2 epochs, each as a single run (tests only read them)."""
    root = tmp_path_factory.mktemp("single_seed_runs")
    for seed in (0, 1):
        training.train_and_evaluate(tiny_config(num_epochs=2, seed=seed), root / f"seed{seed}")
    return {seed: root / f"seed{seed}" for seed in (0, 1)}


@pytest.fixture(scope="module")
def two_seed_program(tmp_path_factory) -> Callable[[str], tuple[pathlib.Path, dict]]:
    """Seeds 0 and 1 trained for 2 epochs in one program: `(workdir, summary)` per
    `runs.vectorize` mode, trained on first use (tests only read them)."""
    trained = {}

    def train(vectorize: str) -> tuple[pathlib.Path, dict]:
        if vectorize not in trained:
            workdir = tmp_path_factory.mktemp(f"two_seeds_{vectorize}")
            config = tiny_config(num_epochs=2, runs__seeds=(0, 1), runs__vectorize=vectorize)
            trained[vectorize] = workdir, training.train_and_evaluate(config, workdir)
        return trained[vectorize]

    return train


@pytest.mark.parametrize("vectorize", ["unroll", "vmap"])
def test_two_seeds_in_one_program_equal_two_single_runs(vectorize, single_seed_runs, two_seed_program):
    multi, summary = two_seed_program(vectorize)
    for k, seed in enumerate((0, 1)):
        assert_same_runs(single_seed_runs[seed], multi / f"run_{k}")
        _, info = checkpoints.load_variables(multi / f"run_{k}")
        assert info["seed"] == seed and info["epoch"] == 2
    # Different seeds really are different runs.
    assert read_metrics(single_seed_runs[0])[0]["train_loss"] != read_metrics(single_seed_runs[1])[0]["train_loss"]

    written = json.loads((multi / "summary.json").read_text())
    assert written == json.loads(json.dumps(summary))
    best = [row["best_test_acc"] for row in written["runs"]]
    assert best == [max(r["test_acc"] for r in read_metrics(multi / f"run_{k}")) for k in (0, 1)]
    assert written["best_test_acc"]["mean"] == pytest.approx(np.mean(best))
    assert written["best_test_acc"]["std"] == pytest.approx(np.std(best, ddof=1))
    run_config = json.loads((multi / "run_1" / "config.json").read_text())
    assert run_config["seed"] == 1 and run_config["runs"]["seeds"] == []


def test_sweep_equals_single_runs_with_each_value_and_shares_the_teacher(teacher_dir, tmp_path):
    overrides = dict(num_epochs=1, method="cat_kd", student__classifier_bias=False,
                     teacher__checkpoint=str(teacher_dir))
    for beta in (1.0, 4.0):
        training.train_and_evaluate(tiny_config(cat_kd__beta=beta, **overrides), tmp_path / f"beta{beta:g}")
    summary = training.train_and_evaluate(tiny_config(runs__sweep="cat_kd.beta=1,4", **overrides), tmp_path / "sweep")
    keys = (*COMPARED, "train_loss_cat", "train_loss_ce")
    assert_same_runs(tmp_path / "beta1", tmp_path / "sweep" / "run_0", keys)
    assert_same_runs(tmp_path / "beta4", tmp_path / "sweep" / "run_1", keys)
    assert [row["cat_kd.beta"] for row in summary["runs"]] == [1.0, 4.0]


@pytest.mark.parametrize("vectorize", [False, True])
def test_shared_inputs_run_the_teacher_once(vectorize):
    """A sweep's compiled step costs the teacher's forward pass less than a seeds' step."""
    config = tiny_config(method="cat_kd")
    student, teacher = create_model("resnet8", 10, classifier_bias=False), create_model("resnet20", 10)
    teacher_variables = training.initialize(teacher, jax.random.key(0), (32, 32, 3))
    variables = training.initialize(student, jax.random.key(1), (32, 32, 3))
    state = training.TrainState(jnp.zeros((), jnp.int32), variables["params"], variables["batch_stats"],
                             training.create_optimizer(config, 4).init(variables["params"]))
    stacked = jax.tree_util.tree_map(lambda leaf: jnp.stack([leaf, leaf]), state)
    image = jnp.zeros((16, 32, 32, 3))
    batch = {"image": image, "label": jnp.zeros((16,), jnp.int32)}
    flops = {}
    for name, overrides in (("sweep", dict(runs__sweep="cat_kd.beta=1,2")), ("seeds", dict(runs__seeds=(0, 1)))):
        plan = runs.plan_runs(tiny_config(method="cat_kd", **overrides))
        step_batch = batch if plan.shared_inputs else jax.tree_util.tree_map(lambda x: jnp.stack([x, x]), batch)
        step = training.make_multi_run_step(config, student, teacher, 4, plan, vectorize)
        lowered = jax.jit(step).lower(stacked, step_batch, teacher_variables, jnp.asarray(plan.values()))
        flops[name] = lowered.cost_analysis()["flops"]
    forward = jax.jit(lambda v, x: teacher.apply(v, x, train=False)).lower(teacher_variables, image)
    teacher_flops = forward.cost_analysis()["flops"]
    assert flops["seeds"] - flops["sweep"] == pytest.approx(teacher_flops, rel=0.05)


def test_a_diverging_run_stops_alone_and_eval_marks_it(tmp_path, capsys):
    summary = training.train_and_evaluate(
        tiny_config(num_epochs=2, optim__decay_epochs=(), runs__sweep="optim.lr=0.05,1e30"), tmp_path
    )
    good, bad = summary["runs"]
    assert "diverged_epoch" not in good and np.isfinite(good["final_test_acc"])
    assert bad["diverged_epoch"] == 1
    assert [r["epoch"] for r in read_metrics(tmp_path / "run_0")] == [1, 2]
    assert not (tmp_path / "run_1" / "metrics.jsonl").exists() or not read_metrics(tmp_path / "run_1")
    assert summary["best_test_acc"]["runs"] == 1

    # Evaluating the workdir reports the run it can, marks the diverged one (no checkpoint: it
    # diverged in its first epoch) and gives the mean of the others.
    capsys.readouterr()
    result = training.evaluate(tiny_config(), tmp_path)
    assert result["runs"][0]["test_acc"] == pytest.approx(read_metrics(tmp_path / "run_0")[-1]["test_acc"], abs=1e-9)
    assert result["runs"][1] == {"diverged_epoch": 1}
    assert result["test_acc"]["runs"] == 1 and result["test_acc"]["mean"] == result["runs"][0]["test_acc"]
    printed = capsys.readouterr().out.strip().splitlines()
    assert printed[0].startswith("run_0: top1 ")
    assert printed[1] == "run_1 (diverged in epoch 1, left out of the mean): no checkpoint was kept"
    assert printed[2].startswith("mean ± std over 1 runs: top1 ")


def test_other_runs_on_a_multi_run_workdir_are_refused_and_change_nothing(teacher_dir, tmp_path):
    for run in ("run_0", "run_1"):  # two runs' checkpoints, as a program of seeds (0, 1) leaves them
        shutil.copytree(teacher_dir, tmp_path / run)
    record.write(tmp_path, tiny_config(runs__seeds=(0, 1)), {})
    before = sorted((path, path.stat().st_mtime_ns) for path in tmp_path.rglob("*"))
    with pytest.raises(UserError, match=rf"^{re.escape(str(tmp_path))} holds the runs of another config \(runs.seeds "
                                        r"\[0, 1\] -> \[5\]\); the runs of a workdir cannot change: resume with the "
                                        r"recorded values or start a new --workdir$"):
        training.train_and_evaluate(tiny_config(runs__seeds=(5,)), tmp_path)
    with pytest.raises(UserError, match=r"holds the runs of another config \(runs.sweep '' -> 'optim.lr=0.1,0.2'\)"):
        training.train_and_evaluate(tiny_config(runs__seeds=(0, 1), runs__sweep="optim.lr=0.1,0.2"), tmp_path)
    with pytest.raises(ConfigError, match=r"--allow_config_change=runs.seeds: runs.seeds cannot change in a workdir"):
        training.train_and_evaluate(tiny_config(runs__seeds=(5,)), tmp_path, allow_changes=("runs.seeds",))
    assert sorted((path, path.stat().st_mtime_ns) for path in tmp_path.rglob("*")) == before


def test_multi_run_resume_is_bit_identical(two_seed_program, tmp_path):
    uninterrupted, _ = two_seed_program("unroll")
    interrupted = tmp_path
    training.train_and_evaluate(tiny_config(num_epochs=1, runs__seeds=(0, 1), runs__vectorize="unroll"), interrupted)
    training.train_and_evaluate(tiny_config(num_epochs=2, runs__seeds=(0, 1), runs__vectorize="unroll"), interrupted)
    for k in (0, 1):
        a, _ = checkpoints.load_variables(uninterrupted / f"run_{k}")
        b, _ = checkpoints.load_variables(interrupted / f"run_{k}")
        jax.tree_util.tree_map(np.testing.assert_array_equal, a, b)
        assert read_metrics(interrupted / f"run_{k}") == [
            dict(r, epoch_seconds=m["epoch_seconds"])
            for r, m in zip(read_metrics(uninterrupted / f"run_{k}"), read_metrics(interrupted / f"run_{k}"))
        ]


def test_eval_of_a_multi_run_workdir_evaluates_every_run(two_seed_program, capsys):
    workdir, _ = two_seed_program("unroll")
    capsys.readouterr()
    result = training.evaluate(tiny_config(), workdir)
    logged = [read_metrics(workdir / f"run_{k}")[-1]["test_acc"] for k in (0, 1)]
    assert [r["test_acc"] for r in result["runs"]] == pytest.approx(logged, abs=1e-9)
    assert result["test_acc"]["mean"] == pytest.approx(np.mean(logged))
    printed = capsys.readouterr().out.strip().splitlines()
    assert printed[0].startswith("run_0: top1 ") and printed[-1].startswith("mean ± std over 2 runs: top1 ")
    one = training.evaluate(tiny_config(), workdir / "run_1")  # one run, on its own seed's data
    assert one["test_acc"] == pytest.approx(logged[1], abs=1e-9)


# FitNet: a method with its own trainable module and a BatchNorm's running statistics, which on
# two devices must see the global batch too.
_CLI_SETTINGS = {"runs.seeds": (0, 1), "method": "fitnet", "student.arch": "resnet8", "student.classifier_bias": True,
                 "teacher.arch": "resnet8", "data.source": "synthetic", "data.name": "cifar10",
                 "data.synthetic_train_size": 32, "data.synthetic_test_size": 16, "batch_size": 16,
                 "eval_batch_size": 16, "num_epochs": 1}

_CLI_SCRIPT = textwrap.dedent(
    """
    import sys
    sys.argv = ["main.py", "--config", {config!r}, "--workdir", {workdir!r}, *{flags!r}]
    import jax
    jax.config.update("jax_disable_most_optimizations", True)
    assert jax.device_count() == 2, jax.devices()
    import runpy
    runpy.run_path({main!r}, run_name="__main__")
    """
)


def test_command_line_seeds_on_two_devices_match_one_device(teacher_dir, tmp_path):
    """`--config.runs.seeds=(0,1)` through main.py, with the runs' batches split over 2 devices,
    against the same config trained here on this process's one device."""
    config_file = REPO_ROOT / "configs" / "cifar100_res32x4_res8x4.py"
    settings = dict(_CLI_SETTINGS, **{"teacher.checkpoint": str(teacher_dir)})
    assert jax.device_count() == 1
    training.train_and_evaluate(config_files.with_values(config_files.load_config(config_file), settings),
                                tmp_path / "devices1")
    flags = [f"--config.{key}={value}" for key, value in settings.items()]
    script = _CLI_SCRIPT.format(config=str(config_file), workdir=str(tmp_path / "devices2"), flags=flags,
                                main=str(REPO_ROOT / "main.py"))
    env = dict(os.environ, XLA_FLAGS=xla_flags("--xla_force_host_platform_device_count=2"), JAX_PLATFORMS="cpu")
    completed = subprocess.run([sys.executable, "-c", script], env=env, cwd=REPO_ROOT, capture_output=True, text=True)
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "mean ± std" in completed.stdout
    for k in (0, 1):
        assert_same_runs(tmp_path / "devices1" / f"run_{k}", tmp_path / "devices2" / f"run_{k}")
