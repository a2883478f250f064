"""catkd-jax command line: train, evaluate, visualise, linear-probe.

    catkd-jax --config configs/cifar100_res32x4_res8x4.py [--config.a.b=value ...]
    catkd-jax --config configs/cifar100_res32x4_res8x4.py --mode eval --checkpoint runs/X
    catkd-jax --config configs/cifar100_res32x4_res8x4.py --mode linear_probe --checkpoint runs/X

(`python main.py ...` in the repository is the same.) All logic lives in `catkd_jax`; this
module only parses flags, joins a multi-process job and turns errors into exit codes.

JAX and the pipelines are imported once the flags are checked (`_dispatch`): a mistake in the
flags is told at once, before any library prints its start-up lines, and Ctrl-C is handled
from the first moment (`_end_at_once_on_signals`).
"""

import dataclasses
import functools
import os
import pathlib
import signal
import sys
import traceback
import types

from absl import app, flags, logging
from ml_collections import config_flags

from catkd_jax import interruption, record, recorded_config
from catkd_jax.errors import ConfigError, MissingInputError, UserError

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config file. Optional for --mode eval|visualize|linear_probe of a workdir: "
    "then the config the workdir recorded (its config.json).", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory (default: runs/<config file stem>).")
_MODE = flags.DEFINE_enum(
    "mode", "train", ["train", "eval", "visualize", "linear_probe"],
    "train; eval (prints top-1/top-5/loss); visualize (writes <workdir>/cams_<checkpoint name>.png); linear_probe "
    "(a linear classifier on the frozen network's features of config.probe.data, "
    "writes <workdir>/linear_probe.json).",
)
_CHECKPOINT = flags.DEFINE_string(
    "checkpoint", None, "For eval, visualize and linear_probe: a workdir, checkpoint or model directory, or a .pth."
)
_ALLOW_CONFIG_CHANGE = flags.DEFINE_list(
    "allow_config_change", [],
    "Training: fields (e.g. optim.lr) that may differ from the workdir's config.json when resuming; "
    "each change is logged in <workdir>/config_changes.jsonl.",
)
_REPLACE_RESULTS = flags.DEFINE_bool(
    "replace_results", False,
    "Quickstart: replace the workdir's summary.json and cams.png even if another config made them.",
)
# Modes that read a trained network, and so may take its workdir's recorded config.
_READING_MODES = ("eval", "visualize", "linear_probe")
# The flags `--help` and `--helpshort` list (absl lists the main module's, and ours are defined here).
_KEY_FLAGS = ("config", "mode", "workdir", "checkpoint", "allow_config_change", "replace_results", "verbosity")


@dataclasses.dataclass
class _Progress:
    """How far the command got, for the line it ends with: the workdir it writes (None until
    chosen, and for the modes that only read one), and its place in a multi-process job (known
    once JAX has started; until then each process speaks for itself)."""

    workdir: pathlib.Path | None = None
    process_index: int = 0
    process_count: int = 1


def main(argv: list[str], progress: _Progress | None = None) -> None:
    progress = progress or _Progress()  # (run() passes the one its signal handler reads)
    if len(argv) > 1:
        _exit_with(progress, f"error: unexpected arguments: {' '.join(argv[1:])}. Flags take the form "
                   "--name=value; run with --helpshort to list them", ConfigError.exit_code)
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # the libraries' INFO logs drown the progress lines
    try:
        _dispatch(progress)
    except UserError as error:
        if _show_tracebacks():
            traceback.print_exc()
        _exit_with(progress, f"error: {error}", error.exit_code, last_words=True)
    except interruption.Interrupted as error:
        _exit_with(progress, str(error), error.exit_code)
    except KeyboardInterrupt as error:  # a second Ctrl-C in training: no checkpoint of this moment
        _exit_with(progress, _stopped_message(progress, str(error) or "interrupted"), 130, at_once=True)
    except Exception as error:  # pylint: disable=broad-except
        if progress.process_count == 1:
            raise
        _leave_job(progress, error)


def _stopped_message(progress: _Progress, what: str) -> str:
    """`what` ("interrupted", ...), and what a stop now leaves: whether the workdir being written
    has a checkpoint to resume from."""
    workdir = progress.workdir
    if workdir is None:
        return f"{what}; nothing was written, run the same command to start again"
    # A single run's, a multi-run program's (run_<k>/), the quickstart's (cat_kd/run_<k>/, teacher/).
    steps = (step for pattern in ("checkpoints/*", "*/checkpoints/*", "*/*/checkpoints/*")
             for step in workdir.glob(pattern))
    if any(step.name.isdigit() for step in steps):
        return f"{what}; the last checkpoint in {workdir} is kept, run the same command to resume"
    if workdir.exists():
        return f"{what} before the first checkpoint: {workdir} has none yet, run the same command to start again"
    return f"{what} before anything was written; run the same command to start again"


def _end_at_once_on_signals(progress: _Progress) -> None:
    """Makes SIGINT (Ctrl-C) and SIGTERM end the process at once with the line of
    `_stopped_message` and exit code 128 + the signal, outside the training loop (which turns
    them into a checkpoint, `interruption.StopRequests`, and puts this handler back after).

    The process ends without Python's shutdown: a `KeyboardInterrupt` raised into start-up can be
    swallowed by a library (a run then went on to the end), and the shutdown of half-started
    TensorFlow, XLA or orbax threads can crash (exit 139). An unfinished checkpoint save is
    removed when the workdir is next opened (`checkpoints.TrainCheckpoints`).
    """

    def end(number: int, frame: types.FrameType | None) -> None:
        del frame
        if progress.process_index == 0:
            print(_stopped_message(progress, f"interrupted ({signal.Signals(number).name})"), file=sys.stderr,
                  flush=True)
        sys.stdout.flush()
        os._exit(128 + number)  # pylint: disable=protected-access

    for number in (signal.SIGINT, signal.SIGTERM):
        signal.signal(number, end)


# What XLA's and JAX's errors say when a collective loses a process of the job.
_LOST_PROCESS_SIGNS = ("Gloo", "NCCL", "Connection closed by peer", "Connection reset by peer",
                       "coordination service", "heartbeat")


def _show_tracebacks() -> bool:
    """Whether a user error also shows its traceback: with `--verbosity=1` or more."""
    return flags.FLAGS["verbosity"].present and flags.FLAGS.verbosity >= 1


def _leave_job(progress: _Progress, error: Exception) -> None:
    """Ends this process of a multi-process job at once after an unexpected error.

    Every process reports (process 0 may be the one that died). The exit skips jax.distributed's
    orderly shutdown, which waits for every process of the job, a lost one included, until its
    heartbeat times out (100 s), and then aborts.
    """
    if any(sign in str(error) for sign in _LOST_PROCESS_SIGNS):
        first_line = str(error).strip().splitlines()[0]
        print(f"error: process {progress.process_index} of {progress.process_count}: an operation across the "
              f"job's processes failed, most likely because another process stopped ({first_line}). "
              "Run the same command on every host to resume from the last checkpoint", file=sys.stderr)
    else:
        traceback.print_exc()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(1)  # pylint: disable=protected-access


def _exit_with(progress: _Progress, message: str, code: int, at_once: bool = False,
               last_words: bool = False) -> None:
    """Prints `message` (process 0) and exits; `at_once` skips the wait for the job's other
    processes (see `_leave_job`), for an end they may not share, and Python's shutdown (see
    `_end_at_once_on_signals`). With `last_words` (a user error), a single process ends at once
    too: the message is all the user needs, and the threads of a failed checkpoint read (orbax,
    tensorstore) could still print their own tracebacks ("Event loop is closed") under it while
    the interpreter shuts down."""
    if progress.process_index == 0:
        print(message, file=sys.stderr, flush=True)
    if at_once or (last_words and progress.process_count == 1):
        sys.stdout.flush()
        os._exit(code)  # pylint: disable=protected-access
    sys.exit(code)


def _dispatch(progress: _Progress) -> None:
    reading = _MODE.value in _READING_MODES
    if reading and not _CHECKPOINT.value:
        raise ConfigError(f"--mode {_MODE.value} needs --checkpoint (a workdir, checkpoint directory or .pth)")
    if reading and not os.path.exists(_CHECKPOINT.value):
        raise MissingInputError(f"--checkpoint {_CHECKPOINT.value} does not exist; pass a workdir, checkpoint or "
                                "model directory, or a .pth")
    if not flags.FLAGS["config"].present:
        raise ConfigError("--config is needed: a config file such as configs/quickstart.py (eval, visualize and "
                          "linear_probe of a workdir use its recorded config.json without it)")
    config_path = config_flags.get_config_filename(flags.FLAGS["config"])
    config = _loaded_config(config_path)
    workdir = _WORKDIR.value or os.path.join("runs", pathlib.Path(config_path.split(":")[0]).stem)
    recorded = None
    if config_path.startswith(recorded_config.__file__ + ":"):
        recorded = pathlib.Path(config_path.split(":", 1)[1])
        workdir = _WORKDIR.value or str(recorded.parent)  # outputs go beside the run they describe
    if not reading:
        progress.workdir = pathlib.Path(workdir).absolute()

    # pylint: disable=import-outside-toplevel; the flags are checked (see the module docstring)
    import jax
    from catkd_jax import probe, quickstart, sharding, training, visualize
    from catkd_jax.console import report

    sharding.start_processes()
    # JAX's backends start (and print their start-up lines) where first used: after the config's
    # checks, whose errors then come first.
    if jax.distributed.is_initialized():
        progress.process_index, progress.process_count = jax.process_index(), jax.process_count()
    if logging.level_info():
        logging.info("JAX process %d of %d; %d local and %d global devices (%s).",
                     jax.process_index(), jax.process_count(), jax.local_device_count(),
                     jax.device_count(), jax.devices()[0].platform)
    if recorded is not None:
        report(f"Config: {recorded}, recorded by the run (pass --config to use another).")
    if _MODE.value == "eval":
        training.evaluate(config, _CHECKPOINT.value)
    elif _MODE.value == "visualize":
        visualize.visualize(config, _CHECKPOINT.value, workdir)
    elif _MODE.value == "linear_probe":
        probe.run(config, _CHECKPOINT.value, workdir)
    elif config.pipeline == "quickstart":
        quickstart.run(config, workdir, _ALLOW_CONFIG_CHANGE.value, _REPLACE_RESULTS.value)
    elif config.pipeline == "single":
        training.train_and_evaluate(config, workdir, _ALLOW_CONFIG_CHANGE.value)
    else:
        raise ConfigError(f"config.pipeline must be 'single' or 'quickstart', got {config.pipeline!r}")


def _loaded_config(path: str):
    """The config `--config` names, or a `ConfigError` saying why it could not be loaded."""
    try:
        config = _CONFIG.value
        config.pipeline  # pylint: disable=pointless-statement; ml_collections raises a deferred load error here
        return config
    except (OSError, AttributeError, KeyError) as error:
        raise _config_load_error(path, error) from error


def _config_load_error(path: str, error: Exception) -> ConfigError:
    file = path.split(":")[0]
    if not os.path.isfile(file):
        return ConfigError(f"--config {path}: no such config file; pass one of the files in configs/ "
                           "(e.g. configs/quickstart.py) or your own")
    if _lacks_get_config(error):
        return ConfigError(f"--config {path} has no get_config(); a config file defines get_config() returning "
                           "its ConfigDict (see configs/default.py)")
    reason = str(error).strip().splitlines()[-1]
    if _raised_in_file(error, file):  # the file's own code: where and what, as the traceback's last lines say
        if isinstance(error, SyntaxError):
            line, reason = error.lineno, error.msg
        else:
            line = [frame.lineno for frame in traceback.extract_tb(error.__traceback__)
                    if _same_file(frame.filename, file)][-1]
        return ConfigError(f"--config {path} could not be loaded: {type(error).__name__} at line {line}: {reason}")
    return ConfigError(f"--config {path} could not be loaded: {reason} (--verbosity=1 shows the traceback)")


def _lacks_get_config(error: BaseException) -> bool:
    """Whether `error` is ml_collections' way to say the config file has no `get_config`."""
    return isinstance(error, AttributeError) and str(error).endswith("has no attribute 'get_config'")


def _same_file(a: str | None, b: str) -> bool:
    return bool(a and b) and os.path.abspath(a) == os.path.abspath(b)


def _raised_in_file(error: BaseException, path: str) -> bool:
    """Whether `error` comes from the code of the Python file at `path` (a config file)."""
    file = path.split(":")[0]
    if isinstance(error, SyntaxError):
        return _same_file(error.filename, file)
    return any(_same_file(frame.filename, file) for frame in traceback.extract_tb(error.__traceback__))


def _parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, with a missing config file or a misspelt `--config.FIELD` told in one
    line instead of a traceback."""
    config_path = _flag_value(argv, "config")
    try:
        return flags.FLAGS(_with_recorded_config(argv))
    except flags.Error as error:
        message = f"{error}. Run with --helpshort to list the flags"
    except Exception as error:  # pylint: disable=broad-except; told in one line below, or raised again
        # The config file's own code (a syntax error, a misspelt name), or a file that could not be loaded.
        if _raised_in_file(error, config_path) or isinstance(error, OSError) or _lacks_get_config(error):
            message = str(_config_load_error(config_path, error))
        elif isinstance(error, (AttributeError, KeyError)):  # an override of a field the config does not have
            message = _unknown_field_message(argv, error)
        else:
            raise
    print(f"error: {message}", file=sys.stderr)
    sys.exit(ConfigError.exit_code)


def _with_recorded_config(argv: list[str]) -> list[str]:
    """`argv`, with `--config` set to the recorded config of a checkpoint that a reading mode
    (`--mode eval|visualize|linear_probe`) is given without `--config`."""
    mode, checkpoint = _flag_value(argv, "mode"), _flag_value(argv, "checkpoint")
    if _flag_value(argv, "config") or mode not in _READING_MODES or not checkpoint:
        return argv
    recorded = record.find(checkpoint)
    if recorded is None:
        return argv
    return [argv[0], "--config", f"{recorded_config.__file__}:{recorded}", *argv[1:]]


def _flag_value(argv: list[str], name: str) -> str:
    """The value of `--name` in `argv` ('' if absent); not of `--name.FIELD` overrides."""
    for index, arg in enumerate(argv):
        if arg == f"--{name}" and index + 1 < len(argv):
            return argv[index + 1]
        if arg.startswith(f"--{name}="):
            return arg.split("=", 1)[1]
    return ""


def _unknown_field_message(argv: list[str], error: Exception) -> str:
    text = str(error).strip("'\"").replace("\\n", "\n")
    name, _, suggestion = text.partition("\n")
    name = name.strip("'\"\\")
    overrides = [arg.split("=")[0] for arg in argv if arg.startswith("--config.")]
    flag = next((arg for arg in overrides if arg.split(".")[-1] == name), f"--config....{name}")
    hint = f"{suggestion.strip()} " if suggestion.strip() else ""
    return (f"{flag}: the config has no field {name!r}. {hint}"
            "Every field is listed, with its meaning, in catkd_jax/default_config.py")


def run() -> None:
    """The `catkd-jax` console script."""
    progress = _Progress()
    _end_at_once_on_signals(progress)
    for name in _KEY_FLAGS:  # listed by --help: absl lists the key flags of the main module only
        flags.FLAGS.register_key_flag_for_module(sys.argv[0], flags.FLAGS[name])
    app.run(functools.partial(main, progress=progress), flags_parser=_parse_flags)
