"""`python -m catkd_jax.convert` (or `catkd-jax-convert`): a PyTorch `.pth` -> a model directory.

    python -m catkd_jax.convert --arch resnet32x4 --checkpoint in.pth --output DIR

writes DIR in this project's model format (`catkd_jax.checkpoints.save_model`); the class
count is read from the checkpoint's classifier unless `--num-classes` is given.
"""

from __future__ import annotations

import argparse
import os
import sys

from catkd_jax import checkpoints
from catkd_jax.convert import checkpoint_num_classes, from_torch_state_dict, load_torch_checkpoint
from catkd_jax.errors import ConfigError, UserError
from catkd_jax.models import canonical_name, create_model


def main(argv: list[str] | None = None) -> None:
    """CLI: convert a published `.pth` into this project's model format."""
    parser = argparse.ArgumentParser(
        prog="python -m catkd_jax.convert",
        description="Convert a PyTorch (mdistiller or torchvision layout) checkpoint into a "
        "catkd-jax model.",
    )
    parser.add_argument("--arch", required=True, help="architecture, e.g. resnet32x4")
    parser.add_argument("--checkpoint", required=True, help="the .pth file")
    parser.add_argument("--output", required=True, help="directory to write (must not exist)")
    parser.add_argument(
        "--num-classes",
        type=int,
        default=None,
        help="class count (default: the rows of the checkpoint's classifier)",
    )
    args = parser.parse_args(argv)
    if os.path.lexists(args.output):  # before the conversion, which reads and checks the whole file
        raise ConfigError(f"--output {args.output} already exists; choose a new output directory "
                          "(nothing was converted)")

    arch = canonical_name(args.arch)
    state_dict = load_torch_checkpoint(args.checkpoint)
    # Without a classifier in the file, the architecture's default, and the importer says so.
    num_classes = args.num_classes or checkpoint_num_classes(state_dict, arch)
    num_classes = create_model(arch, num_classes).num_classes
    variables = from_torch_state_dict(state_dict, arch, num_classes)
    checkpoints.save_model(args.output, variables, arch=arch, num_classes=num_classes)
    print(f"wrote {arch} ({num_classes} classes) to {args.output}")



def run() -> None:
    """The command (`python -m catkd_jax.convert`, `catkd-jax-convert`): a user error is one line."""
    try:
        main()
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(error.exit_code)
