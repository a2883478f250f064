"""Several processes of one job: two processes on localhost (CPU, one device each, gloo
collectives) train CRD, checkpoint and resume exactly like one process with two devices, memory
banks included, and a process that dies (of a job training ReviewKD) makes the other stop with a
clear error instead of hanging.

Every subprocess runs under a hard deadline and is SIGKILLed when the test ends.
"""

from __future__ import annotations

import os
import re
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from catkd_jax import checkpoints, testing
from conftest import REPO_ROOT, timeless_metrics, xla_flags
from test_interruption import TESTS_ON_PATH, driver_command

DEADLINE = 90  # seconds for any one job


def _main_command(workdir: pathlib.Path, teacher: pathlib.Path, epochs: int, method: str) -> list[str]:
    """main.py training `method` (CRD or ReviewKD: methods with state, memory banks or running
    statistics of their own, fitted to the networks) on a resnet8 with tiny synthetic data
    (tiny_config's sizes)."""
    settings = {
        "method": method, "student.arch": "resnet8", "student.classifier_bias": True,
        "teacher.arch": "resnet8", "teacher.checkpoint": teacher, "data.name": "cifar10",
        "data.source": "synthetic", "data.synthetic_train_size": 64, "data.synthetic_test_size": 40,
        "batch_size": 16, "eval_batch_size": 16, "num_epochs": epochs, "checkpoint.every_epochs": 1,
        **testing.reference_method_settings(method, "resnet8", "resnet8"),
    }
    return [sys.executable, str(REPO_ROOT / "main.py"), "--config", str(REPO_ROOT / "configs" / "default.py"),
            "--workdir", str(workdir), *(f"--config.{key}={value}" for key, value in settings.items())]


def _environment(cache: pathlib.Path, devices: int = 1, **variables: str) -> dict[str, str]:
    """The environment of one process with `devices` CPU devices: no cluster variables of the
    caller's, and JAX's compilation cache in `cache` (see `_two_processes`) instead of the session's."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "XLA_", "SLURM_", "OMPI_"))}
    return dict(env, JAX_PLATFORMS="cpu", JAX_DISABLE_MOST_OPTIMIZATIONS="true", JAX_COMPILATION_CACHE_DIR=str(cache),
                JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                XLA_FLAGS=xla_flags(f"--xla_force_host_platform_device_count={devices}"), **TESTS_ON_PATH, **variables)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class _Job:
    """Processes of one job, their output in files; all are SIGKILLed on exit."""

    def __init__(self, logs: pathlib.Path):
        self.logs, self.processes = logs, []
        logs.mkdir(parents=True, exist_ok=True)

    def start(self, command: list[str], env: dict[str, str]) -> subprocess.Popen:
        index = len(self.processes)
        with open(self.logs / f"{index}.out", "w") as out, open(self.logs / f"{index}.err", "w") as err:
            self.processes.append(subprocess.Popen(command, env=env, cwd=REPO_ROOT, stdout=out, stderr=err))
        return self.processes[-1]

    def output(self, index: int, stream: str = "err") -> str:
        return (self.logs / f"{index}.{stream}").read_text()

    def wait(self, deadline: float = DEADLINE) -> list[int]:
        end = time.monotonic() + deadline
        codes = []
        for index, process in enumerate(self.processes):
            try:
                codes.append(process.wait(timeout=max(end - time.monotonic(), 0.1)))
            except subprocess.TimeoutExpired:
                pytest.fail(f"process {index} still running after {deadline}s:\n{self.output(index)[-3000:]}")
        return codes

    def __enter__(self) -> "_Job":
        return self

    def __exit__(self, *exc_info) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.kill()
                process.wait()


@pytest.fixture(scope="module")
def compilation_cache(tmp_path_factory) -> pathlib.Path:
    """The module's jobs compile the same programs: JAX's persistent cache keeps them between jobs."""
    return tmp_path_factory.mktemp("multihost_compilation_cache")


def _pair_environments(cache: pathlib.Path, logs: pathlib.Path) -> list[dict[str, str]]:
    """The environments of a job's two processes. Only process 0 writes JAX's cache; process 1
    reads a copy taken before the job starts, never a file that process 0 is still writing."""
    snapshot = logs / "compilation_cache"
    shutil.copytree(cache, snapshot)
    port = _free_port()
    return [_environment(directory, JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES="2",
                         JAX_PROCESS_ID=str(process_id))
            for process_id, directory in enumerate((cache, snapshot))]


def _two_processes(job: _Job, command: list[str], cache: pathlib.Path) -> None:
    for env in _pair_environments(cache, job.logs):
        job.start(command, env)


@pytest.fixture(scope="module")
def reference(teacher_dir, compilation_cache, tmp_path_factory):
    """Three epochs of CRD in one process with two devices."""
    workdir = tmp_path_factory.mktemp("one_process")
    with _Job(workdir.parent / f"{workdir.name}_logs") as job:
        job.start(_main_command(workdir, teacher_dir, 3, "crd"),
                  _environment(compilation_cache, devices=2))
        assert job.wait() == [0], job.output(0)[-3000:]
    return workdir


def _assert_same_as(workdir: pathlib.Path, reference: pathlib.Path) -> None:
    ours, theirs = timeless_metrics(workdir), timeless_metrics(reference)
    assert [r["epoch"] for r in ours] == [1, 2, 3]
    for a, b in zip(ours, theirs, strict=True):
        assert a.keys() == b.keys()
        for key in a:
            assert a[key] == pytest.approx(b[key], rel=1e-5), key
    a, _ = checkpoints.load_variables(workdir)
    b, _ = checkpoints.load_variables(reference)
    jax.tree_util.tree_map(np.testing.assert_array_equal, a, b)
    ours, theirs = (_saved_state(directory)["method_state"] for directory in (workdir, reference))
    assert set(ours["memory"]) == {"student", "teacher", "z_student", "z_teacher"}  # CRD's banks and constants
    jax.tree_util.tree_map(np.testing.assert_array_equal, ours, theirs)


def _saved_state(workdir: pathlib.Path) -> dict:
    """The newest training state saved in `workdir`, as saved (the method's state included)."""
    with ocp.CheckpointManager(workdir / "checkpoints", item_names=("state", "meta")) as manager:
        return manager.restore(manager.latest_step(), args=ocp.args.Composite(state=ocp.args.StandardRestore())).state


def test_two_processes_stopped_by_sigterm_to_one_resume_like_one_process_with_two_devices(
        teacher_dir, reference, compilation_cache, tmp_path):
    """Two processes train CRD and checkpoint together; SIGTERM to one stops both at one step;
    the same command resumes; the result equals one process with two devices, bit for bit,
    the memory banks included."""
    command = _main_command(tmp_path / "run", teacher_dir, 3, "crd")
    with _Job(tmp_path / "logs_stopped") as pair:
        for process_id, env in enumerate(_pair_environments(compilation_cache, pair.logs)):
            pair.start(driver_command(command, 2, "SIGTERM") if process_id == 0 else command, env)
        assert pair.wait() == [143, 143], pair.output(0)[-3000:] + pair.output(1)[-3000:]
        message = pair.output(0).strip().splitlines()[-1]
    # JAX's preemption service picks the stop step: one that every process reaches after the
    # notice has spread, so at or after the signal's step 2 (4 steps an epoch, 12 in all).
    match = re.fullmatch(r"interrupted at epoch (\d+), step (\d+): checkpoint saved; run the same command to resume",
                         message)
    assert match, message
    epoch, step = int(match[1]), int(match[2])
    assert 2 <= step < 12 and epoch == (step - 1) // 4 + 1, message
    _, meta = checkpoints.load_variables(tmp_path / "run")
    assert meta["step"] == step
    with _Job(tmp_path / "logs_resumed") as pair:
        _two_processes(pair, command, compilation_cache)
        assert pair.wait() == [0, 0], pair.output(0)[-3000:] + pair.output(1)[-3000:]
        assert "Resuming" in pair.output(0, "out")
        assert "epoch" not in pair.output(1, "out"), "only process 0 reports"
    _assert_same_as(tmp_path / "run", reference)


def test_a_killed_process_makes_the_other_stop_with_a_clear_error(teacher_dir, compilation_cache, tmp_path):
    with _Job(tmp_path / "logs") as job:
        _two_processes(job, _main_command(tmp_path / "run", teacher_dir, 1000, "reviewkd"), compilation_cache)
        end = time.monotonic() + DEADLINE
        # Mid-epoch 2: both processes are past start-up, compilation and epoch 1's checkpoint, and
        # the next operation across them is a training step's collective, which notices a lost
        # process at once. (A checkpoint's barriers notice only when the coordination service's
        # heartbeat times out, after 100 s.)
        while "epoch 2/1000 step 2/" not in job.output(0, "out"):
            assert time.monotonic() < end and job.processes[0].poll() is None, job.output(0)[-3000:]
            time.sleep(0.2)
        job.processes[1].send_signal(signal.SIGKILL)
        killed = time.monotonic()
        assert job.wait(deadline=60)[0] == 1
        stopped_after = time.monotonic() - killed
    error = job.output(0).strip().splitlines()[-1]
    assert error.startswith("error: process 0 of 2: an operation across the job's processes failed, most likely "
                            "because another process stopped (")
    assert error.endswith("Run the same command on every host to resume from the last checkpoint")
    assert "Traceback" not in job.output(0)
    print(f"the surviving process stopped {stopped_after:.1f}s after the other was killed")
