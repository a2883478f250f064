"""catkd-jax command line: train, evaluate, visualise, linear-probe.

    catkd-jax --config configs/cifar100_res32x4_res8x4.py [--config.a.b=value ...]
    catkd-jax --config configs/cifar100_res32x4_res8x4.py --mode eval --checkpoint runs/X
    catkd-jax --config configs/cifar100_res32x4_res8x4.py --mode linear_probe --checkpoint runs/X

(`python main.py ...` in the repository is the same.) All logic lives in `catkd_jax`; this
module only parses flags, joins a multi-process job and turns errors into exit codes.
"""

import os
import pathlib
import sys
import traceback

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from catkd_jax import interruption, probe, quickstart, record, recorded_config, sharding, training, visualize
from catkd_jax.console import report
from catkd_jax.errors import ConfigError, UserError

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
# Modes that read a trained network, and so may take its workdir's recorded config.
_READING_MODES = ("eval", "visualize", "linear_probe")


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        _exit_with(f"error: unexpected arguments: {' '.join(argv[1:])}. Flags take the form --name=value; "
                   "run with --helpshort to list them", ConfigError.exit_code)
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # the libraries' INFO logs drown the progress lines
    try:
        _dispatch()
    except UserError as error:
        if _show_tracebacks():
            traceback.print_exc()
        _exit_with(f"error: {error}", error.exit_code, last_words=True)
    except interruption.Interrupted as error:
        _exit_with(str(error), error.exit_code)
    except KeyboardInterrupt as error:  # a second Ctrl-C: no checkpoint of this moment
        _exit_with(f"{error or 'interrupted'}; the last checkpoint is kept, run the same command to resume", 130,
                   at_once=True)
    except Exception as error:  # pylint: disable=broad-except
        if jax.process_count() == 1:
            raise
        _leave_job(error)


# What XLA's and JAX's errors say when a collective loses a process of the job.
_LOST_PROCESS_SIGNS = ("Gloo", "NCCL", "Connection closed by peer", "Connection reset by peer",
                       "coordination service", "heartbeat")


def _show_tracebacks() -> bool:
    """Whether a user error also shows its traceback: with `--verbosity=1` or more."""
    return flags.FLAGS["verbosity"].present and flags.FLAGS.verbosity >= 1


def _leave_job(error: Exception) -> None:
    """Ends this process of a multi-process job at once after an unexpected error.

    Every process reports (process 0 may be the one that died). The exit skips jax.distributed's
    orderly shutdown, which waits for every process of the job, a lost one included, until its
    heartbeat times out (100 s), and then aborts.
    """
    if any(sign in str(error) for sign in _LOST_PROCESS_SIGNS):
        first_line = str(error).strip().splitlines()[0]
        print(f"error: process {jax.process_index()} of {jax.process_count()}: an operation across the "
              f"job's processes failed, most likely because another process stopped ({first_line}). "
              "Run the same command on every host to resume from the last checkpoint", file=sys.stderr)
    else:
        traceback.print_exc()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(1)  # pylint: disable=protected-access


def _exit_with(message: str, code: int, at_once: bool = False, last_words: bool = False) -> None:
    """Prints `message` (process 0) and exits; `at_once` skips the wait for the job's other
    processes (see `_leave_job`), for an end they may not share. With `last_words` (a user
    error), a single process ends at once too: the message is all the user needs, and the
    threads of a failed checkpoint read (orbax, tensorstore) could still print their own
    tracebacks ("Event loop is closed") under it while the interpreter shuts down."""
    if jax.process_index() == 0:
        print(message, file=sys.stderr, flush=True)
    if (at_once and jax.process_count() > 1) or (last_words and jax.process_count() == 1):
        sys.stdout.flush()
        os._exit(code)  # pylint: disable=protected-access
    sys.exit(code)


def _dispatch() -> None:
    sharding.start_processes()
    logging.info("JAX process %d of %d; %d local and %d global devices (%s).",
                 jax.process_index(), jax.process_count(), jax.local_device_count(),
                 jax.device_count(), jax.devices()[0].platform)
    if not flags.FLAGS["config"].present:
        raise ConfigError("--config is needed: a config file such as configs/quickstart.py (eval, visualize and "
                          "linear_probe of a workdir use its recorded config.json without it)")
    config_path = config_flags.get_config_filename(flags.FLAGS["config"])
    config = _loaded_config(config_path)
    workdir = _WORKDIR.value or os.path.join("runs", pathlib.Path(config_path.split(":")[0]).stem)
    if config_path.startswith(recorded_config.__file__ + ":"):
        recorded = pathlib.Path(config_path.split(":", 1)[1])
        report(f"Config: {recorded}, recorded by the run (pass --config to use another).")
        workdir = _WORKDIR.value or str(recorded.parent)  # outputs go beside the run they describe
    if _MODE.value in _READING_MODES and not _CHECKPOINT.value:
        raise ConfigError(f"--mode {_MODE.value} needs --checkpoint (a workdir, checkpoint directory or .pth)")
    if _MODE.value == "eval":
        training.evaluate(config, _CHECKPOINT.value)
    elif _MODE.value == "visualize":
        visualize.visualize(config, _CHECKPOINT.value, workdir)
    elif _MODE.value == "linear_probe":
        probe.run(config, _CHECKPOINT.value, workdir)
    elif config.pipeline == "quickstart":
        quickstart.run(config, workdir)
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
    if not os.path.isfile(path.split(":")[0]):
        return ConfigError(f"--config {path}: no such config file; pass one of the files in configs/ "
                           "(e.g. configs/quickstart.py) or your own")
    reason = str(error).strip().splitlines()[-1]
    return ConfigError(f"--config {path} could not be loaded: {reason} (--verbosity=1 shows the traceback)")


def _parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, with a missing config file or a misspelt `--config.FIELD` told in one
    line instead of a traceback."""
    try:
        return flags.FLAGS(_with_recorded_config(argv))
    except flags.Error as error:
        message = f"{error}. Run with --helpshort to list the flags"
    except OSError as error:  # a `--config.FIELD` override of a config that failed to load
        message = str(_config_load_error(_flag_value(argv, "config"), error))
    except (AttributeError, KeyError) as error:  # an override of a field the config does not have
        message = _unknown_field_message(argv, error)
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
    app.run(main, flags_parser=_parse_flags)
