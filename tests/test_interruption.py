"""Stopping and resuming: SIGTERM and SIGINT save a checkpoint at the current step, and the
rerun ends exactly where an uninterrupted run ends (parameters, metrics and logs)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest

from catkd_jax import checkpoints, interruption, training
from conftest import REPO_ROOT, read_metrics, timeless_metrics, tiny_config
from signalling import signal_at_step

# The runs of `_config`: 72 training images, in 4 batches of 16 and a last one of 8, so 5 steps
# an epoch; the interruptions below fall before, in and after that smaller batch.
STEPS_PER_EPOCH = 5


def _config():
    """`tiny_config` for two epochs, with 8 training images after its last full batch."""
    return tiny_config(num_epochs=2, data__synthetic_train_size=72)


def _assert_same_run(resumed, uninterrupted) -> None:
    for directory in [""] if not (uninterrupted / "run_0").is_dir() else ["run_0", "run_1"]:
        a, _ = checkpoints.load_variables(uninterrupted / directory)
        b, _ = checkpoints.load_variables(resumed / directory)
        jax.tree_util.tree_map(np.testing.assert_array_equal, a, b)
        assert timeless_metrics(resumed / directory) == timeless_metrics(uninterrupted / directory)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("uninterrupted")
    training.train_and_evaluate(_config(), workdir)
    return workdir


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_mid_epoch_saves_that_step_and_the_rerun_is_bit_identical(signum, uninterrupted, tmp_path,
                                                                           monkeypatch):
    previous_handler = signal.getsignal(signum)
    with monkeypatch.context() as patch:
        signal_at_step(patch.setattr, STEPS_PER_EPOCH + 2, signum)
        with pytest.raises(interruption.Interrupted) as stopped:
            training.train_and_evaluate(_config(), tmp_path)
    step = STEPS_PER_EPOCH + 2
    assert str(stopped.value) == (f"interrupted at epoch 2, step {step}: checkpoint saved; "
                                  "run the same command to resume")
    assert stopped.value.exit_code == 128 + signum
    assert signal.getsignal(signum) is previous_handler  # restored
    _, meta = checkpoints.load_variables(tmp_path)
    assert (meta["epoch"], meta["step"], meta["epoch_step"]) == (2, step, step - STEPS_PER_EPOCH)
    assert [r["epoch"] for r in read_metrics(tmp_path)] == [1]

    training.train_and_evaluate(_config(), tmp_path)  # the same command again
    _assert_same_run(tmp_path, uninterrupted)


def test_a_signal_in_the_last_step_of_an_epoch_saves_the_evaluated_epoch(uninterrupted, tmp_path, monkeypatch):
    with monkeypatch.context() as patch:  # the step of the smaller last batch
        signal_at_step(patch.setattr, STEPS_PER_EPOCH, signal.SIGTERM)
        with pytest.raises(interruption.Interrupted, match="at epoch 1, step 5:"):
            training.train_and_evaluate(_config(), tmp_path)
    _, meta = checkpoints.load_variables(tmp_path)
    assert (meta["epoch"], meta["step"]) == (1, 5) and "epoch_step" not in meta
    assert [r["epoch"] for r in read_metrics(tmp_path)] == [1]
    training.train_and_evaluate(_config(), tmp_path)
    _assert_same_run(tmp_path, uninterrupted)


def test_a_second_signal_stops_at_once(tmp_path, monkeypatch):
    signal_at_step(monkeypatch.setattr, 2, signal.SIGINT, signal.SIGINT)
    with pytest.raises(KeyboardInterrupt, match="second SIGINT"):
        training.train_and_evaluate(tiny_config(num_epochs=1), tmp_path)


def test_a_multi_run_program_resumes_every_run_mid_epoch_bit_identically(tmp_path, monkeypatch):
    # Stopped before the smaller last batch, which the resumed program then trains.
    config = lambda: tiny_config(num_epochs=1, runs__seeds=(0, 1), data__synthetic_train_size=72)
    training.train_and_evaluate(config(), tmp_path / "uninterrupted")
    with monkeypatch.context() as patch:
        signal_at_step(patch.setattr, STEPS_PER_EPOCH - 1, signal.SIGTERM)
        with pytest.raises(interruption.Interrupted, match="at epoch 1, step 4:"):
            training.train_and_evaluate(config(), tmp_path / "resumed")
    for run in ("run_0", "run_1"):
        _, meta = checkpoints.load_variables(tmp_path / "resumed" / run)
        assert (meta["step"], meta["epoch_step"]) == (4, 4)
    training.train_and_evaluate(config(), tmp_path / "resumed")
    _assert_same_run(tmp_path / "resumed", tmp_path / "uninterrupted")
    summary = lambda path: json.loads((path / "summary.json").read_text())
    assert summary(tmp_path / "resumed") == summary(tmp_path / "uninterrupted")


# `python -c` program: main.py after a line of `signalling` calls (a signal at a fixed point).
TESTS_ON_PATH = {"PYTHONPATH": str(REPO_ROOT / "tests")}
DRIVER = """
import runpy, signal, sys
import signalling
{setup}
sys.argv = {argv!r}
runpy.run_path({main!r}, run_name="__main__")
"""


def driven_command(main_command: list[str], setup: str) -> list[str]:
    """`main_command` (`[python, main.py, flags...]`) run after `setup`, a line of `signalling`
    calls; it imports `signalling` from the tests directory (`PYTHONPATH`, see `TESTS_ON_PATH`)."""
    return [sys.executable, "-c", DRIVER.format(setup=setup, argv=main_command[1:], main=main_command[1])]


def driver_command(main_command: list[str], step: int, signal_name: str) -> list[str]:
    """`main_command` receiving `signal_name` at training step `step`."""
    return driven_command(main_command, f"signalling.signal_at_step(setattr, {step}, signal.{signal_name})")


def command_env() -> dict[str, str]:
    """The environment of a `driven_command`: the compiler settings of this test process
    (conftest), so that its runs and this process's round alike."""
    return dict(os.environ, JAX_PLATFORMS="cpu", JAX_DISABLE_MOST_OPTIMIZATIONS="true", **TESTS_ON_PATH)


def tiny_main_command(workdir) -> list[str]:
    """main.py with `_config()`'s settings as flags on configs/default.py."""
    settings = {"method": "vanilla", "student.arch": "resnet8", "student.classifier_bias": True,
                "teacher.arch": "resnet8", "data.name": "cifar10", "data.source": "synthetic",
                "data.synthetic_train_size": 72, "data.synthetic_test_size": 40, "batch_size": 16,
                "eval_batch_size": 16, "num_epochs": 2, "optim.lr": 0.05, "checkpoint.every_epochs": 1}
    return [sys.executable, str(REPO_ROOT / "main.py"), "--config", str(REPO_ROOT / "configs" / "default.py"),
            "--workdir", str(workdir), *(f"--config.{key}={value}" for key, value in settings.items())]


def test_the_command_line_says_where_it_stopped_and_exits_143_and_the_same_command_resumes(uninterrupted, tmp_path):
    command = tiny_main_command(tmp_path)
    env = command_env()
    stopped = subprocess.run(driver_command(command, STEPS_PER_EPOCH + 1, "SIGTERM"), env=env, cwd=REPO_ROOT,
                             capture_output=True, text=True, timeout=120)
    assert stopped.returncode == 143, stopped.stderr[-3000:]
    assert stopped.stderr.splitlines()[-1] == (
        f"interrupted at epoch 2, step {STEPS_PER_EPOCH + 1}: checkpoint saved; run the same command to resume")
    assert "Traceback" not in stopped.stderr
    resumed = subprocess.run(command, env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"Resuming {tmp_path} in epoch 2 after step {STEPS_PER_EPOCH + 1}" in resumed.stdout
    _assert_same_run(tmp_path, uninterrupted)


def _interrupted_start(main_command: list[str], setup: str) -> subprocess.CompletedProcess:
    """`main_command` run with `setup` (a line of `signalling` calls) done first."""
    return subprocess.run(driven_command(main_command, setup), env=command_env(), cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=120)


def _checkpoint_files(workdir) -> list[str]:
    return sorted(str(path.relative_to(workdir)) for path in (workdir / "checkpoints").rglob("*"))


@pytest.mark.parametrize("point", ["import of absl", "import of JAX", "config file", "workdir written"])
def test_a_signal_in_start_up_ends_at_once_saying_truly_what_is_kept(point, tmp_path):
    workdir = tmp_path / "run"
    command = tiny_main_command(workdir)
    setup, code, signal_name = "", 130, "SIGINT"
    if point == "import of absl":  # the command line's own imports (catkd_jax.launch's handler)
        setup = "signalling.signal_on_import('absl', signal.SIGINT)"
        expected = " before anything was written; run the same command to start again"
    elif point == "import of JAX":  # the first seconds: flags parsed, libraries importing
        setup = "signalling.signal_on_import('jax', signal.SIGINT)"
        expected = " before anything was written; run the same command to start again"
    elif point == "config file":  # while --config is read, before the workdir is known
        config = tmp_path / "interrupting.py"
        config.write_text("import os, signal\nfrom catkd_jax import default_config\n\n\ndef get_config():\n"
                          "    os.kill(os.getpid(), signal.SIGINT)\n    return default_config.get_config()\n")
        command[command.index("--config") + 1] = str(config)
        expected = "; nothing was written, run the same command to start again"
    else:  # config.json written, no checkpoint yet; SIGTERM (a scheduler) alike
        setup = "signalling.signal_on_call(setattr, 'catkd_jax.record', 'write', signal.SIGTERM, after=True)"
        code, signal_name = 143, "SIGTERM"
        expected = f" before the first checkpoint: {workdir} has none yet, run the same command to start again"
    stopped = _interrupted_start(command, setup)
    assert stopped.returncode == code, stopped.stderr[-3000:]
    assert stopped.stderr.splitlines()[-1] == f"interrupted ({signal_name}){expected}", stopped.stderr[-3000:]
    assert "Traceback" not in stopped.stderr
    assert not (workdir / "checkpoints").exists() or not _checkpoint_files(workdir)
    assert (workdir / "config.json").exists() == (point == "workdir written")


def test_a_signal_while_a_run_resumes_keeps_its_checkpoint_and_says_so(uninterrupted, tmp_path):
    workdir = tmp_path / "run"
    shutil.copytree(uninterrupted, workdir)
    before = _checkpoint_files(workdir)
    stopped = _interrupted_start(
        tiny_main_command(workdir),
        "signalling.signal_on_call(setattr, 'catkd_jax.checkpoints', 'TrainCheckpoints.restore_newest', signal.SIGINT)")
    assert stopped.returncode == 130, stopped.stderr[-3000:]
    assert stopped.stderr.splitlines()[-1] == (
        f"interrupted (SIGINT); the last checkpoint in {workdir} is kept, run the same command to resume")
    assert _checkpoint_files(workdir) == before
