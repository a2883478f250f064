"""catkd-jax command line: train, evaluate, visualise, linear-probe.

    python main.py --config configs/cifar100_res32x4_res8x4.py [--config.a.b=value ...]
    python main.py --config configs/cifar100_res32x4_res8x4.py --mode eval --checkpoint runs/X
    python main.py --config configs/cifar100_res32x4_res8x4.py --mode linear_probe --checkpoint runs/X

All logic lives in `catkd_jax`; this file only parses flags and reports the environment.
"""

import os
import pathlib

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from catkd_jax import probe, quickstart, train, visualize

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory (default: runs/<config file stem>).")
_MODE = flags.DEFINE_enum(
    "mode", "train", ["train", "eval", "visualize", "linear_probe"],
    "train; eval (prints top-1/top-5/loss); visualize (writes <workdir>/cams.png); linear_probe "
    "(a linear classifier on the frozen network's features of config.probe.data, "
    "writes <workdir>/linear_probe.json).",
)
_CHECKPOINT = flags.DEFINE_string(
    "checkpoint", None, "For eval, visualize and linear_probe: a workdir, checkpoint or model directory, or a .pth."
)
flags.mark_flags_as_required(["config"])

# Environment variables that mean "this is one process of a multi-host job".
_DISTRIBUTED_ENV = ("JAX_COORDINATOR_ADDRESS", "SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE")


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # the libraries' INFO logs drown the progress lines
    if any(name in os.environ for name in _DISTRIBUTED_ENV):
        jax.distributed.initialize()
    logging.info("JAX process %d of %d; %d local and %d global devices (%s).",
                 jax.process_index(), jax.process_count(), jax.local_device_count(),
                 jax.device_count(), jax.devices()[0].platform)
    config = _CONFIG.value
    config_path = config_flags.get_config_filename(flags.FLAGS["config"])
    workdir = _WORKDIR.value or os.path.join("runs", pathlib.Path(config_path.split(":")[0]).stem)
    if _MODE.value in ("eval", "visualize", "linear_probe") and not _CHECKPOINT.value:
        raise app.UsageError(f"--mode {_MODE.value} needs --checkpoint (a workdir, checkpoint directory or .pth)")
    if _MODE.value == "eval":
        train.evaluate(config, _CHECKPOINT.value)
    elif _MODE.value == "visualize":
        visualize.visualize(config, _CHECKPOINT.value, workdir)
    elif _MODE.value == "linear_probe":
        probe.run(config, _CHECKPOINT.value, workdir)
    elif config.pipeline == "quickstart":
        quickstart.run(config, workdir)
    elif config.pipeline == "single":
        train.train_and_evaluate(config, workdir)
    else:
        raise app.UsageError(f"config.pipeline must be 'single' or 'quickstart', got {config.pipeline!r}")


if __name__ == "__main__":
    app.run(main)
