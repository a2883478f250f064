"""The command line's answers to user mistakes: one `error:` line naming the problem and the
remedy, exit code 2 (a setting or usage) or 1 (an input), no traceback, nothing written."""

from __future__ import annotations

import hashlib
import os
import pathlib
import re
import shutil
import subprocess
import sys

import pytest

from conftest import REPO_ROOT, xla_flags

DEFAULT = str(REPO_ROOT / "configs" / "default.py")
# The compiler settings of this test process (conftest): compiling is most of a tiny run's time.
CPU_TEST_SETTINGS = dict(JAX_PLATFORMS="cpu", JAX_DISABLE_MOST_OPTIMIZATIONS="true")
# tiny_config's settings as flags: a run that would start at once if nothing were wrong.
TINY = ["--config.method=vanilla", "--config.student.arch=resnet8", "--config.data.name=cifar10",
        "--config.data.source=synthetic", "--config.data.synthetic_train_size=64",
        "--config.data.synthetic_test_size=40", "--config.batch_size=16", "--config.eval_batch_size=16"]


def _main(*flags: str, cwd) -> subprocess.CompletedProcess:
    env = dict(os.environ, **CPU_TEST_SETTINGS)
    return subprocess.run([sys.executable, str(REPO_ROOT / "main.py"), *flags], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


def _error_line(completed: subprocess.CompletedProcess) -> str:
    """The one error line of stderr, after checking there is nothing else of note."""
    assert "Traceback" not in completed.stderr, completed.stderr[-3000:]
    lines = [line for line in completed.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, completed.stderr[-3000:]
    return lines[0]


@pytest.mark.parametrize("flags, code, expected", [
    (["--config", "configs/no_such_file.py"], 2, r"--config configs/no_such_file.py: no such config file; pass one"),
    (["--config", DEFAULT, "--config.cat_kd.betta=1"], 2,
     r"--config.cat_kd.betta: the config has no field 'betta'. Did you mean \"beta\" instead of \"betta\"\?"),
    (["--config", DEFAULT, "--config.cat_kd.beta=abc"], 2, r"could not convert string to float: 'abc'"),
    (["--config", DEFAULT, *TINY, "--config.student.arch=resnet9000"], 2,
     r"unknown architecture 'resnet9000'; valid names: .*resnet8"),
    (["--config", DEFAULT, *TINY, "--config.method=cat_kd", "--config.teacher.checkpoint=/no/such/teacher"], 2,
     r"method 'cat_kd' needs a teacher but config.teacher.checkpoint='/no/such/teacher' does not exist. Point it"),
    (["--config", DEFAULT, "--mode", "eval"], 2, r"--mode eval needs --checkpoint"),
    (["--config", DEFAULT, "positional"], 2, r"unexpected arguments: positional. Flags take the form --name=value"),
], ids=["missing config", "misspelt field", "bad value", "unknown arch", "missing teacher",
        "eval without checkpoint", "stray argument"])
def test_a_user_mistake_is_one_line_with_its_remedy_and_an_exit_code(flags, code, expected, tmp_path):
    workdir = tmp_path / "run"
    completed = _main(*flags, "--workdir", str(workdir), "--config.num_epochs=1", cwd=REPO_ROOT)
    assert completed.returncode == code, completed.stderr[-3000:]
    line = _error_line(completed)
    assert re.search(expected, line), line
    assert not workdir.exists()  # refused before anything was written


def test_a_file_that_is_not_a_weights_only_pth_is_refused_in_our_words(tmp_path):
    pytest.importorskip("torch")
    fake = tmp_path / "teacher.pth"
    fake.write_bytes(b"not a checkpoint at all")
    completed = _main("--config", DEFAULT, *TINY, "--mode", "eval", "--checkpoint", str(fake),
                      "--workdir", str(tmp_path / "run"), cwd=tmp_path)
    assert completed.returncode == 1, completed.stderr[-3000:]
    line = _error_line(completed)
    assert f"{fake} is not a PyTorch checkpoint of tensors only" in line and "nothing in it was executed" in line
    assert "weights_only=False" not in completed.stderr


def test_eval_of_a_workdir_uses_its_recorded_config_and_overrides_apply_on_top(tmp_path):
    workdir = tmp_path / "run"
    # Settings the default config does not have: evaluated with the default's, this would fail
    # (TFDS data, not prepared here) or measure another data set.
    trained = _main("--config", DEFAULT, *TINY, "--config.data.synthetic_test_size=24", "--config.num_epochs=1",
                    "--workdir", str(workdir), cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr[-3000:]
    recorded = (workdir / "config.json").read_text()

    evaluated = _main("--mode", "eval", "--checkpoint", str(workdir), cwd=tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert f"Config: {workdir / 'config.json'}, recorded by the run" in evaluated.stdout
    assert re.search(r"top1 [\d.]+ top5 [\d.]+ loss [\d.]+ \(24 images\)", evaluated.stdout), evaluated.stdout

    # Overrides apply on top of the recorded config; a step directory finds the workdir's record.
    (step,) = (workdir / "checkpoints").iterdir()
    overridden = _main("--mode", "eval", "--checkpoint", str(step), "--config.eval_batch_size=8", cwd=tmp_path)
    assert overridden.returncode == 0, overridden.stderr[-3000:]
    assert re.search(r"\(24 images\)", overridden.stdout), overridden.stdout
    assert (workdir / "config.json").read_text() == recorded  # evaluating writes nothing

    # Without a record, a reading mode still needs --config, and says so.
    bare = _main("--mode", "eval", "--checkpoint", str(tmp_path / "elsewhere"), cwd=tmp_path)
    assert bare.returncode == 2 and "--config is needed" in _error_line(bare)


def test_the_convert_command_refuses_an_existing_output_first_in_one_line(tmp_path):
    completed = subprocess.run(
        [sys.executable, "-m", "catkd_jax.convert", "--arch", "resnet8", "--checkpoint", str(tmp_path / "absent.pth"),
         "--output", str(tmp_path)], cwd=tmp_path, capture_output=True, text=True, timeout=120,
        env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)))
    assert completed.returncode == 2, completed.stderr[-3000:]
    assert _error_line(completed) == f"error: --output {tmp_path} already exists; choose a new output directory " \
                                     "(nothing was converted)"


def test_a_workdir_that_cannot_be_created_is_refused_before_any_work(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    # A teacher that would be trained first (an hour, at full size) if the check came later.
    completed = _main("--config", DEFAULT, *TINY, "--config.method=cat_kd", "--config.teacher.train_if_missing=True",
                      "--workdir", str(blocker / "run"), cwd=tmp_path)
    assert completed.returncode == 1, completed.stderr[-3000:]
    assert _error_line(completed) == (f"error: cannot write {blocker / 'run' / 'config.json'}: {blocker} is a file, "
                                      "not a directory; choose another --workdir")
    assert "Training the teacher" not in completed.stdout and blocker.read_text() == "not a directory"


def _tree(directory: pathlib.Path) -> dict[str, tuple[str, int]]:
    """Every file under `directory`: content hash and modification time."""
    return {str(path.relative_to(directory)): (hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mtime_ns)
            for path in sorted(directory.rglob("*")) if path.is_file()}


def test_a_damaged_checkpoint_is_one_line_naming_the_step_and_the_workdir_is_untouched(teacher_dir, tmp_path):
    workdir = tmp_path / "run"
    shutil.copytree(teacher_dir, workdir)
    (step,) = (workdir / "checkpoints").iterdir()
    data = max((path for path in (step / "state").rglob("*") if path.is_file()), key=lambda path: path.stat().st_size)
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])  # as a kill during a copy leaves it
    before = _tree(workdir)
    completed = _main("--mode", "eval", "--checkpoint", str(workdir), cwd=tmp_path)
    assert completed.returncode == 1, completed.stderr[-3000:]
    line = _error_line(completed)
    assert f"checkpoint step {step.name} in {workdir / 'checkpoints'} cannot be read" in line
    assert line.endswith("it is damaged. Evaluate another step (none is left) or restore it from a copy")
    assert _tree(workdir) == before


def test_a_batch_the_devices_do_not_divide_is_one_line(tmp_path):
    completed = subprocess.run(
        [sys.executable, str(REPO_ROOT / "main.py"), "--config", DEFAULT, *TINY, "--config.batch_size=15",
         "--workdir", str(tmp_path / "run")], cwd=tmp_path, capture_output=True, text=True, timeout=120,
        env=dict(os.environ, **CPU_TEST_SETTINGS, XLA_FLAGS=xla_flags("--xla_force_host_platform_device_count=2")))
    assert completed.returncode == 2, completed.stderr[-3000:]
    assert _error_line(completed) == ("error: config.batch_size=15 is not divisible by the 2 devices; "
                                      "choose a multiple of 2")
    assert not (tmp_path / "run").exists()
