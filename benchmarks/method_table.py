"""Trains each method on each teacher -> student pair and prints mdistiller's comparison table.

    python benchmarks/method_table.py --pairs res32x4_res8x4 vgg13_mv2 ... --methods kd dkd at ... \
        [--seeds 3] [--scale full|tiny] [--teacher NAME=CHECKPOINT ...] [--workdir DIR] [--out FILE] \
        [--probe] [--dry-run]
    python benchmarks/method_table.py --table 4|9 [...]    # the paper's Tables 4 and 9
    python benchmarks/method_table.py --published-doc      # writes docs/published_results.md

The table has mdistiller's README layout: a row per method, a column per teacher -> student
pair, each cell "ours (published)": ours the mean ± sample std over the seeds of each run's best
CIFAR-100 test top-1 (%), the published number from benchmarks/published_results.json (its
sources: docs/published_results.md); no parentheses where no source has one.

A cell's config: configs/cifar100_<pair>.py for cat_kd, configs/cifar100_vanilla_<student>.py
for vanilla (the student trained alone), configs/cifar100_<method>_<pair>.py for the others.
A cell without one reads "no config" (and the published number, if any); a method or a pair
with no config among all the cells asked is an error, so is an unknown method or pair.

The seeds of a cell train together as one multi-run program (`config.runs.seeds`); a student
trained alone is trained once for every pair that shares it. A teacher not given with --teacher
NAME=CHECKPOINT (NAME as in configs/cifar100_teacher_<NAME>.py, e.g. resnet32x4 or
resnet32x4_trivial_augment) is first trained once, with its config, into DIR/teachers/<NAME>.
DIR is runs/method_table by default (runs/ is ignored by git); FILE DIR/method_table.md.
Re-running the same command resumes every program where it stopped.

--scale full trains the configs as they are (CIFAR-100 from TFDS, 240 epochs: accelerators).
--scale tiny replaces every network by resnet8 and the data by 8 synthetic images for one
epoch (paper_tables.py's TINY; the probe: 8 synthetic images, one epoch): it checks the harness
in seconds on a CPU, and its numbers mean nothing. --dry-run loads every cell's full-scale
config and prints the plan (configs, teachers, programs) without training.

--probe: each cell is instead the linear-probe top-1 (catkd_jax/probe.py, config.probe: STL-10
from TFDS by default) of each seed's trained student, mean ± std; no published numbers.
--table 4: the paper's Table 4, CAT-KD, DKD and ReviewKD from the strong ResNet32x4 teacher
(TrivialAugment) to ResNet8x4 (pair res32x4_res8x4_strong: each method's res32x4_res8x4 config
with the strong teacher's config). --table 9: linear probes of the students of WRN-40-2 ->
WRN-16-2 (CRD's and DKD's transfer pair; the CAT-KD paper's own Table 9 pair is not
transcribed here) for every method with a config there. A --table leaves out, on stderr, its
methods that have no config for its pairs (Table 9: those without a WRN-40-2 -> WRN-16-2 config);
--pairs / --methods given with it replace its own.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import sys
from typing import Any, Optional

import paper_tables  # beside this file: the training programs and teachers of a table
from catkd_jax import config_files, probe, runs
from catkd_jax.errors import ConfigError, UserError

REPO_ROOT = paper_tables.REPO_ROOT
PUBLISHED = REPO_ROOT / "benchmarks" / "published_results.json"
PUBLISHED_DOC = REPO_ROOT / "docs" / "published_results.md"


@dataclasses.dataclass(frozen=True)
class Pair:
    """A teacher -> student column: its labels, the student's architecture (its vanilla config),
    and, for a variant of another pair, that pair and the teacher config that replaces its own."""

    teacher: str
    student: str
    student_arch: str
    base: Optional[str] = None
    teacher_config: Optional[str] = None  # under configs/


PAIRS: dict[str, Pair] = {
    "res56_res20": Pair("ResNet56", "ResNet20", "resnet20"),
    "res110_res32": Pair("ResNet110", "ResNet32", "resnet32"),
    "res110_res20": Pair("ResNet110", "ResNet20", "resnet20"),
    "res32x4_res8x4": Pair("ResNet32x4", "ResNet8x4", "resnet8x4"),
    "wrn40_2_wrn16_2": Pair("WRN-40-2", "WRN-16-2", "wrn_16_2"),
    "wrn40_2_wrn40_1": Pair("WRN-40-2", "WRN-40-1", "wrn_40_1"),
    "vgg13_vgg8": Pair("VGG13", "VGG8", "vgg8"),
    "res32x4_shuv1": Pair("ResNet32x4", "ShuffleNet-V1", "ShuffleV1"),
    "res32x4_shuv2": Pair("ResNet32x4", "ShuffleNet-V2", "ShuffleV2"),
    "wrn40_2_shuv1": Pair("WRN-40-2", "ShuffleNet-V1", "ShuffleV1"),
    "vgg13_mv2": Pair("VGG13", "MobileNet-V2", "MobileNetV2"),
    "res50_mv2": Pair("ResNet50", "MobileNet-V2", "MobileNetV2"),
    "res50_vgg8": Pair("ResNet50", "VGG8", "vgg8"),
    "res32x4_mv2": Pair("ResNet32x4", "MobileNet-V2", "MobileNetV2"),
    "wrn40_2_res8x4": Pair("WRN-40-2", "ResNet8x4", "resnet8x4"),
    "res32x4_res8x4_strong": Pair("ResNet32x4 (strong, TrivialAugment)", "ResNet8x4", "resnet8x4",
                                  base="res32x4_res8x4",
                                  teacher_config="cifar100_teacher_resnet32x4_trivial_augment.py"),
}

# Row labels, in mdistiller's order: the student alone, then the methods by year.
METHODS: dict[str, str] = {
    "vanilla": "Student (vanilla)", "kd": "KD", "fitnet": "FitNet", "at": "AT", "nst": "NST", "pkt": "PKT",
    "kdsvd": "KDSVD", "ofd": "OFD", "rkd": "RKD", "vid": "VID", "sp": "SP", "crd": "CRD", "reviewkd": "ReviewKD",
    "dkd": "DKD", "cat_kd": "CAT-KD",
}

TABLES: dict[str, dict[str, Any]] = {
    "4": {"pairs": ["res32x4_res8x4_strong"], "methods": ["cat_kd", "dkd", "reviewkd"], "probe": False},
    "9": {"pairs": ["wrn40_2_wrn16_2"], "methods": list(METHODS), "probe": True},
}

# --scale tiny for the probe: 8 synthetic images of each split, one epoch of one step.
TINY_PROBE = {"probe.data.source": "synthetic", "probe.data.synthetic_train_size": 8,
              "probe.data.synthetic_test_size": 8, "probe.batch_size": 8, "probe.epochs": 1,
              "probe.decay_epochs": ()}


@dataclasses.dataclass(frozen=True)
class Cell:
    """One (method, pair) cell: its config file under configs/ (None: no config), the changes
    its pair makes to it, and the training program (workdir name) that fills it."""

    method: str
    pair: str
    config_file: Optional[str]
    changes: dict[str, Any]
    program: str


def cell(method: str, pair_name: str) -> Cell:
    """The config of `method` for `pair_name` (the naming of the module docstring)."""
    pair = PAIRS[pair_name]
    base = pair.base or pair_name
    changes: dict[str, Any] = {}
    if method == "vanilla":  # the same student alone for every pair, whatever its teacher
        config_file, program = f"cifar100_vanilla_{pair.student_arch}.py", f"vanilla_{pair.student_arch}"
    else:
        config_file = f"cifar100_{base}.py" if method == "cat_kd" else f"cifar100_{method}_{base}.py"
        program = f"{method}_{pair_name}"
        if pair.teacher_config:
            changes["teacher.config"] = str(REPO_ROOT / "configs" / pair.teacher_config)
    exists = (REPO_ROOT / "configs" / config_file).is_file()
    return Cell(method, pair_name, config_file if exists else None, changes, program)


def teacher_name(config: Any) -> Optional[str]:
    """The NAME of configs/cifar100_teacher_<NAME>.py that `config` distils from (None: no teacher)."""
    if config.method == "vanilla":
        return None
    stem = pathlib.Path(config.teacher.config).stem
    prefix = "cifar100_teacher_"
    if not stem.startswith(prefix):
        raise ConfigError(f"teacher.config {config.teacher.config!r}: this table trains teachers from "
                          f"configs/{prefix}<NAME>.py only")
    return stem[len(prefix):]


def plan(methods: list[str], pairs: list[str]) -> tuple[list[Cell], list[paper_tables.Program]]:
    """Every cell of the table (row by row) and the programs that fill those with a config, each
    config loaded at full scale to find its teacher; a student alone shared by several pairs is
    one program. Raises ConfigError for a method or pair with no config among the cells."""
    cells = [cell(method, pair) for method in methods for pair in pairs]
    for method in methods:
        if not any(c.config_file for c in cells if c.method == method):
            raise ConfigError(f"method {method} has no config for any pair asked ({' '.join(pairs)}); "
                              "leave it out or add its configs/cifar100_<method>_<pair>.py")
    for pair in pairs:
        if not any(c.config_file for c in cells if c.pair == pair):
            raise ConfigError(f"pair {pair} has no config for any method asked ({' '.join(methods)}); "
                              "leave it out or add its configs")
    programs: dict[str, paper_tables.Program] = {}
    for c in cells:
        if c.config_file is None:
            continue
        if c.program in programs:
            filled = programs[c.program].cells[None] + ((c.method, c.pair),)
            programs[c.program] = dataclasses.replace(programs[c.program], cells={None: filled})
            continue
        config = paper_tables.scaled_config(c.config_file, c.changes, "full")
        programs[c.program] = paper_tables.Program(c.program, c.config_file, c.changes, teacher_name(config),
                                                   {None: ((c.method, c.pair),)})
    return cells, list(programs.values())


def read_published() -> list[dict[str, Any]]:
    return json.loads(PUBLISHED.read_text())["tables"]


def published_number(tables: list[dict[str, Any]], method: str, pair: str, dataset: str = "cifar100") -> Optional[float]:
    """The first number the published tables give for (method, pair), or None."""
    for table in tables:
        if table["dataset"] != dataset or pair not in table["pairs"]:
            continue
        for row in table["rows"]:
            value = row["values"][table["pairs"].index(pair)]
            if row["method"] == method and value is not None:
                return value
    return None


def published_doc(tables: list[dict[str, Any]]) -> str:
    """docs/published_results.md: each table of published_results.json in its source's layout."""
    lines = ["# Published results", "",
             "Top-1 accuracy (%) as published, copied exactly from each source; blank where the source has "
             "no number. Generated from `benchmarks/published_results.json` by "
             "`python benchmarks/method_table.py --published-doc`: edit the JSON, not this file. "
             "`benchmarks/method_table.py` sets these beside ours (the first table that has a cell wins). "
             "Pair names are this project's config names (`configs/cifar100_<method>_<pair>.py`).", "",
             "Not here, as no copy was reachable: the CAT-KD paper's main tables (Tables 1-4 and 9; only its "
             "appendix is transcribed, docs/paper_tables.md), so Table 4's and the probes' cells have no "
             "published number; the ReviewKD paper's own tables (only what Papers with Code records of them). "
             "mdistiller's DOT tables (KD+DOT) are left out: no config here trains DOT.", ""]
    for table in tables:
        lines += [f"## {table['title']}", "", f"Source: {table['url']}, {table['section']}. Data set: {table['dataset']}.",
                  "", "| Teacher <br> Student | " + " | ".join(table["pairs"]) + " |",
                  "|:---|" + ":---:|" * len(table["pairs"])]
        for row in table["rows"]:
            values = ["" if value is None else f"{value:.2f}" for value in row["values"]]
            lines.append(f"| {row['label']} ({row['method']}) | " + " | ".join(values) + " |")
        lines.append("")
    return "\n".join(lines)


def probe_accuracies(program: paper_tables.Program, args: argparse.Namespace) -> list[float]:
    """The linear-probe top-1 of each seed's student of the trained `program`, probed once
    (a run's linear_probe.json is reused when the command is re-run)."""
    workdir = args.workdir / program.name
    config = paper_tables.scaled_config(program.config_file, program.changes, args.scale)
    if args.scale == "tiny":
        config = config_files.with_values(config, TINY_PROBE)
    accuracies = []
    for run_dir in runs.run_directories(workdir) or [workdir]:
        result = run_dir / probe.RESULT_FILE
        if result.is_file():
            accuracies.append(json.loads(result.read_text())["top1"])
        else:
            accuracies.append(probe.run(config, run_dir, run_dir)["top1"])
    return accuracies


def describe_plan(cells: list[Cell], programs: list[paper_tables.Program], args: argparse.Namespace) -> str:
    """--dry-run: each cell's config and program, each program's teacher and where it comes from."""
    changes = lambda c: " with " + ", ".join(f"{name}={str(value).replace(f'{REPO_ROOT}/', '')}"
                                             for name, value in c.changes.items()) if c.changes else ""
    lines = [f"{c.method} x {c.pair}: " + (f"configs/{c.config_file}" + changes(c)
                                           + f" -> {args.workdir / c.program}" if c.config_file else "no config")
             for c in cells]
    for name in sorted({p.teacher for p in programs if p.teacher}):
        lines.append(f"teacher {name}: " + (args.teacher[name] if name in args.teacher else
                                            f"trained from configs/cifar100_teacher_{name}.py into "
                                            f"{args.workdir / 'teachers' / name}"))
    lines.append(f"{len(programs)} programs of {args.seeds} seeds, {'linear probes' if args.probe else 'test top-1'}")
    return "\n".join(lines) + "\n"


def table(cells: list[Cell], ours: dict[tuple[str, str], dict[str, float]], args: argparse.Namespace) -> str:
    """The markdown table: a row per method, a column per pair, "ours (published)" cells."""
    published = [] if args.probe else read_published()
    pairs = list(dict.fromkeys(c.pair for c in cells))
    what = ("the linear-probe top-1 of each seed's student (%)" if args.probe else
            "each run's best test top-1 (%), (published: docs/published_results.md)")
    lines = [f"`python benchmarks/method_table.py {' '.join(args.argv)}`: ours, the mean ± sample std over "
             f"{args.seeds} seeds of {what}.", "",
             "| Teacher <br> Student | " + " | ".join(f"{PAIRS[p].teacher} <br> {PAIRS[p].student}" for p in pairs) + " |",
             "|:---:|" + ":---:|" * len(pairs)]
    for method in dict.fromkeys(c.method for c in cells):
        row = []
        for c in (c for c in cells if c.method == method):
            number = published_number(published, method, c.pair)
            text = f"{ours[(method, c.pair)]['mean']:.2f} ± {ours[(method, c.pair)]['std']:.2f}" if c.config_file \
                else "no config"
            row.append(text + (f" ({number:.2f})" if number is not None else ""))
        lines.append(f"| {METHODS[method]} | " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace) -> str:
    """Trains (or resumes) the table's programs and returns its markdown (also written to args.out);
    with args.dry_run, the plan instead, training nothing."""
    cells, programs = plan(args.methods, args.pairs)
    if args.dry_run:
        return describe_plan(cells, programs, args)
    ours: dict[tuple[str, str], dict[str, float]] = {}
    for program in programs:
        accuracies = paper_tables.run_program(program, args)[None]
        if args.probe:
            accuracies = probe_accuracies(program, args)
        for filled in program.cells[None]:
            ours[filled] = runs.mean_and_std(accuracies)
    markdown = table(cells, ours, args)
    out = args.out or args.workdir / "method_table.md"
    pathlib.Path(out).parent.mkdir(parents=True, exist_ok=True)
    pathlib.Path(out).write_text(markdown)
    print(f"Wrote {out} (the runs: {args.workdir})", file=sys.stderr)
    return markdown


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", nargs="+", choices=list(PAIRS), metavar="PAIR",
                        help="teacher_student columns: " + " ".join(PAIRS))
    parser.add_argument("--methods", nargs="+", choices=list(METHODS), metavar="METHOD",
                        help="rows: " + " ".join(METHODS))
    parser.add_argument("--table", choices=sorted(TABLES), help="the paper's Table 4 or 9 (see above)")
    parser.add_argument("--probe", action="store_true", help="cells: each student's linear-probe top-1")
    parser.add_argument("--seeds", type=int, default=3, help="seeds per cell (0, 1, ...), trained as one program")
    parser.add_argument("--scale", default="full", choices=["full", "tiny"])
    parser.add_argument("--teacher", type=paper_tables.teacher_argument, action="append", default=[],
                        help="NAME=CHECKPOINT of a teacher (repeatable); others are trained first")
    parser.add_argument("--workdir", type=pathlib.Path, default=pathlib.Path("runs") / "method_table")
    parser.add_argument("--out", type=pathlib.Path, default=None, help="default: <workdir>/method_table.md")
    parser.add_argument("--dry-run", action="store_true", help="print the plan; train nothing")
    parser.add_argument("--published-doc", action="store_true", help=f"write {PUBLISHED_DOC.relative_to(REPO_ROOT)}")
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if args.published_doc:
        return args
    if args.seeds < 1:
        parser.error(f"--seeds must be >= 1, got {args.seeds}")
    if args.table:
        preset = TABLES[args.table]
        args.probe = args.probe or preset["probe"]
        args.pairs = args.pairs or preset["pairs"]
        if not args.methods:  # the table's methods that have a config for its pairs, today
            args.methods = [m for m in preset["methods"] if any(cell(m, p).config_file for p in args.pairs)]
            left_out = [m for m in preset["methods"] if m not in args.methods]
            if left_out:
                print(f"Table {args.table}: no config yet for {', '.join(left_out)}; left out", file=sys.stderr)
    if not args.pairs or not args.methods:
        parser.error("give --pairs and --methods, or --table")
    args.teacher = dict(args.teacher)
    return args


def main() -> None:
    args = parse_args()
    if args.published_doc:
        PUBLISHED_DOC.write_text(published_doc(read_published()))
        print(f"Wrote {PUBLISHED_DOC}", file=sys.stderr)
        return
    try:
        print(run(args), end="")
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(error.exit_code)


if __name__ == "__main__":
    main()
