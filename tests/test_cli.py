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

from catkd_jax import training
from conftest import REPO_ROOT, tiny_config, xla_flags

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
    # (TFDS data, not prepared here) or measure another data set. (Trained in this process: the
    # command line's training is other tests'.)
    training.train_and_evaluate(tiny_config(data__synthetic_test_size=24), workdir)
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
    (tmp_path / "elsewhere").mkdir()
    bare = _main("--mode", "eval", "--checkpoint", str(tmp_path / "elsewhere"), cwd=tmp_path)
    assert bare.returncode == 2 and "--config is needed" in _error_line(bare)


def test_a_checkpoint_that_does_not_exist_is_named_before_anything_else(tmp_path):
    completed = _main("--mode", "eval", "--checkpoint", str(tmp_path / "absent"), cwd=tmp_path)
    assert completed.returncode == 1
    assert _error_line(completed) == (f"error: --checkpoint {tmp_path / 'absent'} does not exist; pass a workdir, "
                                      "checkpoint or model directory, or a .pth")
    assert completed.stderr.count("\n") == 1 and not list(tmp_path.iterdir())


@pytest.mark.parametrize("help_flag", ["--help", "--helpshort"])
def test_help_lists_the_commands_flags(help_flag, tmp_path):
    completed = _main(help_flag, cwd=tmp_path)
    listed = set(re.findall(r"^  (?:-\w,)?--(\w+)", completed.stdout, re.MULTILINE))
    assert listed >= {"config", "mode", "workdir", "checkpoint", "allow_config_change", "verbosity"}, completed.stdout
    assert not any(name.startswith(("jax_", "xla_", "log")) for name in listed)  # other modules' in --helpfull


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
    assert line.endswith("it is damaged. Restore it from a copy (no other step is kept)")
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


def _in_process(argv: list[str], monkeypatch, capsys) -> tuple[int, str]:
    """The command line's `(exit code, stderr)` for `argv`, run in this process: parsing, then `main`.

    ml_collections reads `--config.FIELD` overrides from `sys.argv` and defines a flag for each,
    which a second parse would define again; `os._exit` (how a user error ends) becomes a
    `SystemExit` that the test catches.
    """
    from absl import flags  # pylint: disable=import-outside-toplevel
    from catkd_jax import cli  # pylint: disable=import-outside-toplevel

    for name in [name for name in flags.FLAGS if name.startswith("config.")]:
        delattr(flags.FLAGS, name)
    flags.FLAGS.unparse_flags()
    monkeypatch.setattr(sys, "argv", ["main.py", *argv])

    def exit_now(code: int) -> None:
        raise SystemExit(code)

    monkeypatch.setattr(os, "_exit", exit_now)
    capsys.readouterr()
    try:
        cli.main(cli._parse_flags(sys.argv))  # pylint: disable=protected-access
        code = 0
    except SystemExit as stop:
        code = stop.code
    finally:
        flags.FLAGS.unparse_flags()
    return code, capsys.readouterr().err


def _npz(path: pathlib.Path, train_labels=None, **changes) -> str:
    """A small CIFAR-10-style .npz at `path` (`changes` replace its arrays); returns the path."""
    import numpy as np  # pylint: disable=import-outside-toplevel

    images = np.zeros((32, 32, 32, 3), np.uint8)
    labels = np.arange(32) % 10 if train_labels is None else np.asarray(train_labels)
    arrays = dict(train_images=images, train_labels=labels, test_images=images[:16], test_labels=labels[:16] % 10,
                  class_names=np.asarray([f"c{k}" for k in range(10)]))
    np.savez(path, **(arrays | changes))
    return str(path)


def _bad_input(tmp_path: pathlib.Path, case: str) -> list[str]:
    """The flags of one bad input `case` (a file it needs is written into `tmp_path`)."""
    import numpy as np  # pylint: disable=import-outside-toplevel

    npz_path = tmp_path / "d.npz"
    npz_arrays = {
        "labels above the classes": dict(train_labels=np.arange(32) % 11),
        "negative labels": dict(train_labels=np.arange(32) % 10 - 1),
        "float labels": dict(train_labels=np.zeros(32, np.float32)),
        "float images": dict(train_images=np.zeros((32, 32, 32, 3), np.float32)),
        "grey images": dict(train_images=np.zeros((32, 32, 32), np.uint8)),
        "fewer labels than images": dict(train_labels=np.arange(31) % 10),
    }
    if case in npz_arrays:
        _npz(npz_path, **npz_arrays[case])
    if case == "not an npz":
        npz_path.write_text("a text file")
    if case in ("config syntax error", "config name error"):
        (tmp_path / "bad.py").write_text("def get_config(:\n" if case == "config syntax error" else
                                         "def get_config():\n    return undefined_name\n")
    quickstart = ["--config", str(REPO_ROOT / "configs" / "quickstart.py")]
    return {
        "seeds not numbers": ["--config", DEFAULT, *TINY, "--config.runs.seeds=abc"],
        "decay epochs not numbers": ["--config", DEFAULT, *TINY, "--config.optim.decay_epochs=abc"],
        "resolution 0": ["--config", DEFAULT, *TINY, "--config.cat_kd.resolution=0"],
        "unknown cam strategy": ["--config", DEFAULT, *TINY, "--config.cat_kd.cam_strategy=middle"],
        "unknown method, quickstart": [*quickstart, "--config.method=catkd"],
        "method the quickstart ignores": [*quickstart, "--config.method=kd"],
        "misspelt allowed change": ["--config", DEFAULT, *TINY, "--allow_config_change=optim.lrr"],
        "allowed change of the runs": ["--config", DEFAULT, *TINY, "--allow_config_change=runs.seeds"],
        "config syntax error": ["--config", str(tmp_path / "bad.py")],
        "config name error": ["--config", str(tmp_path / "bad.py")],
    }.get(case, ["--config", DEFAULT, *TINY, "--config.data.source=npz", f"--config.data.dir={npz_path}"])


_NPZ_PREFIX = r"\S+d\.npz"


@pytest.mark.parametrize("case, code, expected", [
    ("seeds not numbers", 2, r"config\.runs\.seeds must be a tuple of integers >= 0, got \('abc',\); on the command "
                             r"line: --config\.runs\.seeds='\(0,1,2\)'"),
    ("decay epochs not numbers", 2, r"config\.optim\.decay_epochs must be a tuple of integers >= 1, got \('abc',\)"),
    ("resolution 0", 2, r"config\.cat_kd\.resolution must be an integer >= 1, got 0"),
    ("unknown cam strategy", 2, r"config\.cat_kd\.cam_strategy='middle' is unknown; use one of top, bottom"),
    ("unknown method, quickstart", 2, r"config\.method='catkd' is unknown; use one of vanilla, cat_kd, kd, dkd"),
    ("method the quickstart ignores", 2, r"config\.method='kd' is not used by the quickstart, .* leave it at "
                                         r"'cat_kd', or set config\.pipeline='single'"),
    ("misspelt allowed change", 2, r"--allow_config_change=optim\.lrr: the config has no field 'optim\.lrr'; "
                                   r"did you mean optim\.lr\?"),
    ("allowed change of the runs", 2, r"--allow_config_change=runs\.seeds: runs\.seeds cannot change in a workdir"),
    ("labels above the classes", 1, _NPZ_PREFIX + r": train labels must be in \[0, 10\) for 10 classes, got 0\.\.10"),
    ("negative labels", 1, _NPZ_PREFIX + r": train labels must be in \[0, 10\) for 10 classes, got -1\.\.8"),
    ("float labels", 1, _NPZ_PREFIX + r": train labels must be integers \[N\], got float32"),
    ("float images", 1, _NPZ_PREFIX + r": train images must be uint8 \[N, H, W, 3\], got float32"),
    ("grey images", 1, _NPZ_PREFIX + r": train images must be uint8 \[N, H, W, 3\], got uint8 \(32, 32, 32\)"),
    ("fewer labels than images", 1, _NPZ_PREFIX + r": 32 train images but 31 labels"),
    ("not an npz", 1, _NPZ_PREFIX + r" is not an \.npz file"),
    ("config syntax error", 2, r"--config \S+bad\.py could not be loaded: SyntaxError at line 1: invalid syntax"),
    ("config name error", 2, r"--config \S+bad\.py could not be loaded: NameError at line 2: name 'undefined_name' "
                             r"is not defined"),
])
def test_a_bad_value_or_input_is_one_line_before_anything_is_written(case, code, expected, tmp_path, monkeypatch,
                                                                     capsys):
    workdir = tmp_path / "run"
    exit_code, stderr = _in_process([*_bad_input(tmp_path, case), "--workdir", str(workdir)], monkeypatch, capsys)
    assert exit_code == code, stderr[-3000:]
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr[-3000:]
    assert re.search(expected, lines[0]), lines[0]
    assert not workdir.exists()


def test_a_config_file_without_get_config_is_one_line(tmp_path):
    config = tmp_path / "settings.py"
    config.write_text("learning_rate = 0.1\n")
    completed = _main("--config", str(config), "--config.seed=1", "--workdir", str(tmp_path / "run"), cwd=tmp_path)
    assert completed.returncode == 2
    assert completed.stderr == (f"error: --config {config} has no get_config(); a config file defines get_config() "
                                "returning its ConfigDict (see configs/default.py)\n")
    assert not (tmp_path / "run").exists()


def test_library_start_up_lines_are_hidden_and_other_lines_kept(capfd):
    from catkd_jax import console  # pylint: disable=import-outside-toplevel

    # As TensorFlow's import prints them (data.base.import_tensorflow), and CUDA plugins on GPUs.
    start_up = [
        "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n",
        "I0000 00:00:1796591768.831291    5386 port.cc:153] oneDNN custom operations are on. You may see slightly "
        "different numerical results due to floating-point round-off errors from different computation orders.\n",
        "I0000 00:00:1796591768.894858    5386 cpu_feature_guard.cc:227] This TensorFlow binary is optimized to use "
        "available CPU instructions in performance-critical operations.\n",
        "To enable the following instructions: AVX2 AVX512F FMA, in other operations, rebuild TensorFlow with the "
        "appropriate compiler flags.\n",
        "E0000 00:00:1720000000.123456  123 cuda_dnn.cc:8310] Unable to register cuDNN factory: Attempting to "
        "register factory for plugin cuDNN when one has already been registered\n",
    ]
    news = ["W0000 00:00:1796591768.900000    5386 env.cc:12] a warning that is news\n", "error: a line of ours\n"]
    with console.filtered_stderr(lambda line: not console.is_start_up_line(line)):
        os.write(2, "".join(start_up[:3] + news[:1] + start_up[3:] + news[1:]).encode())
    assert capfd.readouterr().err == "".join(news)
