"""The original CAT-KD code, as the reference scripts read it: its `mdistiller` package in a
folder given with `--code` (e.g. `git archive HEAD mdistiller` of the original repository)."""

from __future__ import annotations

import argparse
import pathlib
import sys


def add_code_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--code", type=pathlib.Path, required=True, help="the folder that holds `mdistiller`")


def use_code(parser: argparse.ArgumentParser, folder: pathlib.Path, required: str) -> None:
    """Makes `mdistiller` importable from `folder`, or ends the script in one line (argparse's
    error) when `folder/mdistiller/required` is not there."""
    if not (folder / "mdistiller" / required).is_file():
        parser.error(f"--code {folder}: no mdistiller/{required} there; give the folder that holds "
                     "the original CAT-KD code's mdistiller package")
    sys.path.insert(0, str(folder))


def reference_arguments(description: str, out_help: str, seed_help: str,
                        argv: list[str] | None = None) -> argparse.Namespace:
    """`--code DIR --out FILE [--seed N]` of a script that records facts of the original's networks
    (`--code` checked with `use_code`)."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_code_argument(parser)
    parser.add_argument("--out", type=pathlib.Path, required=True, help=out_help)
    parser.add_argument("--seed", type=int, default=0, help=seed_help)
    args = parser.parse_args(argv)
    use_code(parser, args.code, "models/cifar/resnet.py")
    return args


# This project's method names -> the original's `distiller_dict` keys.
DISTILLERS = {"vanilla": "NONE", "cat_kd": "CAT_KD", "kd": "KD", "dkd": "DKD", "fitnet": "FITNET", "at": "AT",
              "nst": "NST", "pkt": "PKT", "kdsvd": "KDSVD", "rkd": "RKD", "sp": "SP", "vid": "VID",
              "ofd": "OFD", "reviewkd": "REVIEWKD", "crd": "CRD"}


# Config fields whose CFG name is not their upper-cased dotted name.
_ORIGINAL_NAMES = {"crd.student_dim": "CRD.FEAT.STUDENT_DIM", "crd.teacher_dim": "CRD.FEAT.TEACHER_DIM",
                   "crd.num_negatives": "CRD.NCE.K"}


def original_cfg(settings: dict):
    """The original's default `CFG` (a clone) with `settings`, this project's config fields
    (dotted: "reviewkd.shapes"), under the original's names (REVIEWKD.SHAPES, CRD.NCE.K)."""
    from mdistiller.engine.cfg import CFG  # pylint: disable=import-outside-toplevel

    cfg = CFG.clone()
    for dotted, value in settings.items():
        *sections, name = _ORIGINAL_NAMES.get(dotted, dotted.upper()).split(".")
        node = cfg
        for section in sections:
            node = node[section]
        node[name] = list(value) if isinstance(value, (tuple, list)) else value
    return cfg
