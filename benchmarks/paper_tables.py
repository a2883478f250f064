"""Runs the rows of one of the paper's appendix tables and sets the results beside the paper's.

    python benchmarks/paper_tables.py --table A1|A2|A3|A4|A5 [--seeds 3] [--scale full|tiny] \
        [--teacher resnet56=PATH ...] [--workdir DIR] [--out FILE]

Each table is a few training programs built from the configs in configs/: the seeds of a cell
train together as one multi-run program (`config.runs.seeds`), and a beta table's rows as one
sweep (`config.runs.sweep`), per column. A teacher not given with --teacher ARCH=CHECKPOINT (a
workdir, model directory or published .pth) is first trained once, with
configs/cifar100_teacher_<ARCH>.py, into DIR/teachers/<ARCH>. DIR is runs/paper_tables/<TABLE>
by default (runs/ is ignored by git). Re-running the same command resumes every program where
it stopped.

The paper's numbers come from ../shared/reference/paper_tables.md beside the repository, or
from its copy docs/paper_tables.md. The output is a markdown table (printed, and written to
FILE, default DIR/table_<TABLE>.md, named on stderr): for each cell, the paper's top-1 accuracy, ours as the
mean ± sample std over the seeds of each run's best test accuracy, and their difference.

--scale full trains the configs as they are: CIFAR-100 from TFDS (prepared), 240 epochs; that
is for accelerators. --scale tiny replaces every network by resnet8 and the data by 8
synthetic images (one step) for one epoch: it checks the harness, and its numbers mean nothing.
Tables A.4 / A.5 share one table in the appendix: A4 is its three same-family pairs, A5 its
three pairs across families.
"""

from __future__ import annotations

import argparse
import dataclasses
import pathlib
import re
import sys
from typing import Any, Optional

from catkd_jax import config_files, runs, training

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
PAPER_TABLES = (REPO_ROOT.parent / "shared" / "reference" / "paper_tables.md", REPO_ROOT / "docs" / "paper_tables.md")

# --scale tiny: every network resnet8, 8 synthetic training images (one step of 8), one epoch. So
# few, because a CPU runs the runs' vmapped convolutions (grouped ones) slowly: the tests' cost.
TINY = {"data.source": "synthetic", "data.synthetic_train_size": 8, "data.synthetic_test_size": 8,
        "batch_size": 8, "eval_batch_size": 8, "num_epochs": 1, "student.arch": "resnet8", "teacher.arch": "resnet8",
        "runs.vectorize": "vmap",  # the many runs of a table share one traced step
        "data.augment": "crop_flip"}  # synthetic images refuse TrivialAugment (Table 4's strong teacher)

BETAS = (10.0, 50.0, 100.0, 300.0, 600.0)


@dataclasses.dataclass(frozen=True)
class Program:
    """One training program of a table and the cells its runs fill.

    `cells` maps a run's swept value (None without a sweep) to the `(row, column)` cells that
    its seeds' mean fills; several cells may share one program (a student trained alone is every
    column's baseline).
    """

    name: str  # its workdir under --workdir
    config_file: str  # under configs/
    changes: dict[str, Any]
    # The teacher's name NAME, of configs/cifar100_teacher_<NAME>.py (in the paper's tables its
    # architecture); None for a student trained alone.
    teacher: Optional[str]
    cells: dict[Optional[float], tuple[tuple[str, str], ...]]
    sweep: str = ""  # config.runs.sweep


def _alone_and_cat(student: str, alone_config: str, row: str, teachers: dict[str, str]) -> list[Program]:
    """Tables A.1 and A.2: `student` trained alone (every column's baseline), and trained with CAT
    alone (CE weight 0) from each teacher of `teachers` (column label -> architecture)."""
    alone = Program("alone", alone_config, {}, None, {None: tuple((f"{row} alone", column) for column in teachers)})
    return [alone] + [
        Program(f"cat_from_{arch}", "cifar100_cat_res32x4_res32x4.py", {"student.arch": student, "teacher.arch": arch},
                arch, {None: ((f"{row} with CAT", column),)})
        for column, arch in teachers.items()]


def _beta_sweep(teachers: dict[str, str]) -> list[Program]:
    """Table A.3: a ShuffleNetV1 student, CAT-KD with each beta of `BETAS`, one sweep per teacher."""
    return [Program(f"shufflev1_from_{arch}", "cifar100_res32x4_shuv1.py", {"teacher.arch": arch}, arch,
                    {beta: ((f"{beta:g}", column),) for beta in BETAS},
                    sweep="cat_kd.beta=" + ",".join(f"{beta:g}" for beta in BETAS))
            for column, arch in teachers.items()]


def _normalised_or_not(pairs: dict[str, tuple[str, str]]) -> list[Program]:
    """Tables A.4 / A.5: each pair's CAT-KD config (row label -> (config, teacher)), with the
    transferred CAMs l2-normalised and not."""
    return [Program(f"{pathlib.Path(config).stem}_{'normalised' if normalize else 'not_normalised'}", config,
                    {"cat_kd.normalize": normalize}, teacher,
                    {None: ((row, "normalised" if normalize else "not normalised"),)})
            for row, (config, teacher) in pairs.items() for normalize in (True, False)]


TABLES: dict[str, tuple[str, list[Program]]] = {
    "A1": ("A.1", _alone_and_cat("resnet110", "cifar100_teacher_resnet110.py", "ResNet110",
                                 {"ResNet56": "resnet56", "ResNet110": "resnet110", "ResNet32x4": "resnet32x4"})),
    "A2": ("A.2", _alone_and_cat("resnet32x4", "cifar100_teacher_resnet32x4.py", "ResNet32x4",
                                 {"ResNet56": "resnet56", "ResNet50": "ResNet50", "ResNet32x4": "resnet32x4"})),
    "A3": ("A.3", _beta_sweep({"ResNet56": "resnet56", "WRN-40-2": "wrn_40_2", "ResNet32x4": "resnet32x4"})),
    "A4": ("A.4", _normalised_or_not({
        "ResNet110 → ResNet32": ("cifar100_res110_res32.py", "resnet110"),
        "WRN-40-2 → WRN-16-2": ("cifar100_wrn40_2_wrn16_2.py", "wrn_40_2"),
        "ResNet32x4 → ResNet8x4": ("cifar100_res32x4_res8x4.py", "resnet32x4")})),
    "A5": ("A.5", _normalised_or_not({
        "ResNet50 → MobileNetV2": ("cifar100_res50_mv2.py", "ResNet50"),
        "WRN-40-2 → ShuffleNetV1": ("cifar100_wrn40_2_shuv1.py", "wrn_40_2"),
        "ResNet32x4 → ShuffleNetV1": ("cifar100_res32x4_shuv1.py", "resnet32x4")})),
}


def _label(cell: str) -> str:
    """A table label without emphasis or parenthesised accuracies: "ResNet56 (72.34)" -> "ResNet56"."""
    return re.sub(r"\s*\(\d+(\.\d+)?\)", "", cell.replace("**", "")).strip()


def paper_numbers(text: str, number: str) -> tuple[str, dict[tuple[str, str], float]]:
    """The title and the cells `{(row, column): accuracy}` of table `number` ("A.3") of the
    markdown `text` (paper_tables.md), labels as `_label` gives them."""
    heading = re.search(rf"^## Tables? [^\n]*\b{re.escape(number)}\b[^\n]*$", text, re.M)
    if heading is None:
        raise ValueError(f"no section for table {number} in the paper's tables")
    lines = text[heading.end():].splitlines()
    start = next(index for index, line in enumerate(lines) if line.startswith("|"))
    end = next((index for index in range(start, len(lines)) if not lines[index].startswith("|")), len(lines))
    table = lines[start:end]  # the section's first table: header, rule, rows
    split = lambda line: [cell.strip() for cell in line.strip().strip("|").split("|")]
    columns = [_label(cell) for cell in split(table[0])[1:]]
    cells = {}
    for line in table[2:]:
        row, *values = split(line)
        for column, value in zip(columns, values):
            cells[(_label(row), column)] = float(value.replace("**", ""))
    return heading.group(0).lstrip("# ").strip(), cells


def _read_paper_tables() -> str:
    for path in PAPER_TABLES:
        if path.is_file():
            return path.read_text()
    raise FileNotFoundError(f"the paper's tables are in neither {' nor '.join(map(str, PAPER_TABLES))}")


def scaled_config(config_file: str, changes: dict[str, Any], scale: str) -> Any:
    """configs/`config_file` with `changes`, and at --scale tiny the `TINY` settings over them."""
    config = config_files.load_config(REPO_ROOT / "configs" / config_file)
    return config_files.with_values(config, {**changes, **(TINY if scale == "tiny" else {})})


def teacher_checkpoint(name: str, args: argparse.Namespace) -> str:
    """The checkpoint of teacher `name` (configs/cifar100_teacher_<name>.py): given on the
    command line (--teacher NAME=CHECKPOINT), or trained here once into DIR/teachers/<name>."""
    if name in args.teacher:
        return args.teacher[name]
    workdir = args.workdir / "teachers" / name
    training.train_and_evaluate(scaled_config(f"cifar100_teacher_{name}.py", {}, args.scale), workdir)
    return str(workdir)


def run_program(program: Program, args: argparse.Namespace) -> dict[Optional[float], list[float]]:
    """Trains `program` into args.workdir/<name> (or resumes it) with args.seeds seeds and returns
    each swept value's best test accuracies, one per seed."""
    changes = dict(program.changes, **{"runs.seeds": tuple(range(args.seeds)) if args.seeds > 1 else (), "seed": 0,
                                       "runs.sweep": program.sweep})
    if program.teacher is not None:
        changes["teacher.checkpoint"] = teacher_checkpoint(program.teacher, args)
    summary = training.train_and_evaluate(scaled_config(program.config_file, changes, args.scale),
                                          args.workdir / program.name)
    field = summary.get("field")
    rows = summary["runs"] if "runs" in summary else [summary]
    accuracies: dict[Optional[float], list[float]] = {}
    for row in rows:
        accuracies.setdefault(row[field] if field else None, []).append(row["best_test_acc"])
    return accuracies


def run(args: argparse.Namespace) -> str:
    """Trains the table's programs and returns its markdown (also written to args.out)."""
    number, programs = TABLES[args.table]
    title, paper = paper_numbers(_read_paper_tables(), number)
    ours: dict[tuple[str, str], dict[str, float]] = {}
    for program in programs:
        for value, accuracies in run_program(program, args).items():
            for cell in program.cells[value]:
                ours[cell] = runs.mean_and_std(accuracies)
    missing = sorted(set(ours) - set(paper))
    if missing:
        raise ValueError(f"cells {missing} are not in the paper's table {number}")
    lines = [f"# {title}", "",
             f"`python benchmarks/paper_tables.py --table {args.table} --seeds {args.seeds} --scale {args.scale}`: "
             "top-1 test accuracy (%), ours the mean ± sample std over seeds of each run's best epoch.", "",
             "| row | column | paper | ours | ours − paper |", "|---|---|---|---|---|"]
    for (row, column), result in ours.items():
        lines.append(f"| {row} | {column} | {paper[(row, column)]:.2f} | {result['mean']:.2f} ± {result['std']:.2f} "
                     f"(n={result['runs']}) | {result['mean'] - paper[(row, column)]:+.2f} |")
    markdown = "\n".join(lines) + "\n"
    out = args.out or args.workdir / f"table_{args.table}.md"
    pathlib.Path(out).parent.mkdir(parents=True, exist_ok=True)
    pathlib.Path(out).write_text(markdown)
    print(f"Wrote {out} (the runs: {args.workdir})", file=sys.stderr)
    return markdown


def teacher_argument(text: str) -> tuple[str, str]:
    """--teacher NAME=CHECKPOINT -> (NAME, CHECKPOINT)."""
    name, separator, path = text.partition("=")
    if not separator or not name or not path:
        raise argparse.ArgumentTypeError(f"--teacher takes NAME=CHECKPOINT (configs/cifar100_teacher_<NAME>.py's "
                                         f"checkpoint), got {text!r}")
    return name, path


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--table", required=True, choices=sorted(TABLES))
    parser.add_argument("--seeds", type=int, default=3, help="seeds per cell (0, 1, ...), trained as one program")
    parser.add_argument("--scale", default="full", choices=["full", "tiny"])
    parser.add_argument("--teacher", type=teacher_argument, action="append", default=[],
                        help="ARCH=CHECKPOINT of a teacher (repeatable); others are trained first")
    parser.add_argument("--workdir", type=pathlib.Path, default=None, help="default: runs/paper_tables/<TABLE>")
    parser.add_argument("--out", type=pathlib.Path, default=None, help="default: <workdir>/table_<TABLE>.md")
    args = parser.parse_args(argv)
    if args.seeds < 1:
        parser.error(f"--seeds must be >= 1, got {args.seeds}")
    args.teacher = dict(args.teacher)
    args.workdir = args.workdir or pathlib.Path("runs") / "paper_tables" / args.table
    return args


def main() -> None:
    print(run(parse_args()), end="")


if __name__ == "__main__":
    main()
