"""The benchmark scripts keep working (tiny settings; the figures themselves live in docs)."""

from __future__ import annotations

import argparse
import importlib.util
import json
import pathlib
import re
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from catkd_jax import runs
from catkd_jax.data import save_npz
from catkd_jax.models import create_model
from conftest import REPO_ROOT


def _script(name: str):
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", REPO_ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # as an import would: dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_input_pipeline_benchmark_counts_images():
    args = argparse.Namespace(source="shapes", name="cifar100", dir="", size=256, batch_size=64, epochs=1)
    result = _script("input_pipeline").run(args)
    assert result["train_examples"] == 256 and result["images_per_sec"] > 0


def test_epoch_time_is_the_epochs_images_at_the_measured_rates(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO_ROOT / "benchmarks"))  # as `python benchmarks/epoch_time.py` has it
    script = _script("epoch_time")
    args = script.parse_args(["--teacher=resnet8", "--student=resnet8", "--methods=vanilla,cat_kd", "--batch-size=8",
                              "--steps=2", "--warmup=1", "--train-size=800", "--test-size=160"])
    result = script.run(args)
    assert [row["method"] for row in result["rows"]] == ["vanilla", "cat_kd"]
    vanilla, cat_kd = result["rows"]
    for row in result["rows"]:
        assert row["epoch_seconds"] == pytest.approx(800 / row["train_images_per_sec"] + 160 / row["eval_images_per_sec"])
        assert row["relative_to_vanilla"] == pytest.approx(row["epoch_seconds"] / vanilla["epoch_seconds"])
    lines = script.table(result).splitlines()
    assert lines[0].split() == ["method", "train", "img/s", "eval", "img/s", "epoch", "s", "x", "vanilla"]
    assert lines[3].split() == ["cat_kd", f"{cat_kd['train_images_per_sec']:.1f}", f"{cat_kd['eval_images_per_sec']:.1f}",
                                f"{cat_kd['epoch_seconds']:.1f}", f"{cat_kd['relative_to_vanilla']:.2f}"]
    with pytest.raises(SystemExit):
        script.parse_args(["--methods=vanilla,cat"])


def test_paper_tables_are_read_from_the_markdown():
    script = _script("paper_tables")
    title, cells = script.paper_numbers(script._read_paper_tables(), "A.4")
    assert title.startswith("Tables A.4 / A.5")
    assert cells[("ResNet50 → MobileNetV2", "normalised")] == 71.36  # bold in the file
    assert cells[("ResNet110 → ResNet32", "not normalised")] == 73.62
    _, cells = script.paper_numbers(script._read_paper_tables(), "A.3")
    assert len(cells) == 15 and cells[("600", "ResNet32x4")] == 78.26


def test_paper_table_a3_at_tiny_scale_sets_each_cells_mean_and_std_beside_the_paper(tmp_path, capsys):
    script = _script("paper_tables")
    args = script.parse_args(["--table=A3", "--scale=tiny", "--seeds=2", f"--workdir={tmp_path}"])
    markdown = script.run(args)
    assert (tmp_path / "table_A3.md").read_text() == markdown
    assert capsys.readouterr().err.endswith(f"Wrote {tmp_path / 'table_A3.md'} (the runs: {tmp_path})\n")
    rows = [line.strip("|").split("|") for line in markdown.splitlines() if re.match(r"\| \d", line)]
    assert len(rows) == 15  # 5 betas x 3 teachers
    _, paper = script.paper_numbers(script._read_paper_tables(), "A.3")
    teachers = {"ResNet56": "resnet56", "WRN-40-2": "wrn_40_2", "ResNet32x4": "resnet32x4"}
    for beta, column, paper_cell, ours, difference in (map(str.strip, row) for row in rows):
        assert float(paper_cell) == paper[(beta, column)]
        # Ours: the mean and sample std over the two seeds of the runs' best accuracies, as the
        # column's sweep program recorded them.
        summary = json.loads((tmp_path / f"shufflev1_from_{teachers[column]}" / "summary.json").read_text())
        best = [run["best_test_acc"] for run in summary["runs"] if run["cat_kd.beta"] == float(beta)]
        assert [run["seed"] for run in summary["runs"] if run["cat_kd.beta"] == float(beta)] == [0, 1]
        mean, std = sum(best) / 2, abs(best[0] - best[1]) / 2 ** 0.5
        assert ours == f"{mean:.2f} ± {std:.2f} (n=2)"
        assert difference == f"{mean - float(paper_cell):+.2f}"
    # One sweep program per teacher, each teacher trained once (none was given).
    assert sorted(path.name for path in (tmp_path / "teachers").iterdir()) == sorted(teachers.values())


# The original CAT-KD code's interface as benchmarks/reference_step.py uses it (the original is
# not in this repository): `_test` networks returning (logits, {"feats": [..., cams]}), and a
# CAT_KD distiller built from (student, teacher, cfg) that returns (logits, losses).
ORIGINAL_INTERFACE = {
    "mdistiller/__init__.py": "",
    "mdistiller/models/__init__.py": """
import torch

class CamNet(torch.nn.Module):
    def __init__(self, num_classes):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, stride=4)
        self.conv_test = torch.nn.Conv2d(4, num_classes, 1, bias=False)

    def forward(self, x):
        cams = self.conv_test(torch.relu(self.conv(x)))
        return cams.mean((2, 3)), {"feats": [cams]}

cifar_model_dict = {"resnet20_test": (CamNet, None)}
""",
    "mdistiller/distillers/__init__.py": """
import torch
import torch.nn.functional as F

class CAT_KD(torch.nn.Module):
    def __init__(self, student, teacher, cfg):
        super().__init__()
        self.student, self.teacher, self.beta = student, teacher, cfg.CAT_KD.LOSS.CAT_loss_weight

    def get_learnable_parameters(self):
        return list(self.student.parameters())

    def forward(self, image, target, **kwargs):
        logits, features = self.student(image)
        with torch.no_grad():
            _, teacher_features = self.teacher(image)
        cams = [F.adaptive_avg_pool2d(f["feats"][-1], 2) for f in (features, teacher_features)]
        return logits, {"loss_CE": F.cross_entropy(logits, target), "loss_CAT": self.beta * F.mse_loss(*cams)}
""",
}


def test_device_suite_runs_each_part_at_tiny_size_and_writes_its_json(tmp_path, monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(REPO_ROOT / "benchmarks"))
    rng = np.random.default_rng(0)
    save_npz(tmp_path / "data.npz", (rng.integers(0, 256, (32, 32, 32, 3), np.uint8), np.arange(32) % 10,
                                     rng.integers(0, 256, (16, 32, 32, 3), np.uint8), np.arange(16) % 10),
             [f"class_{k}" for k in range(10)])
    for name, text in ORIGINAL_INTERFACE.items():
        (tmp_path / "original" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "original" / name).write_text(text)
    (tmp_path / "original/mdistiller/distillers/CAT_KD.py").touch()  # where reference_step.py looks for the code
    script = _script("device_suite")
    monkeypatch.setattr(sys, "argv", ["device_suite.py", "--tiny", f"--data={tmp_path / 'data.npz'}",
                                      f"--reference-code={tmp_path / 'original'}", f"--out={tmp_path / 'suite.json'}"])
    script.main()
    result = json.loads((tmp_path / "suite.json").read_text())
    assert result["skipped"] == [] and result["errors"] == [] and result["backend"] == "cpu"
    (original,) = result["reference"]
    assert (original["teacher"], original["student"], original["batch_size"], original["device"]) == (
        "resnet20", "resnet20", 8, "cpu")
    assert original["trainer_images_per_sec"] > 0 and original["step_images_per_sec"] > 0
    settings = [(r["batch_size"], r["dtype"], r["teacher_batch_norm_folded"], r["compiler_options"])
                for r in result["throughput"]]
    assert settings == [(8, "float32", True, {}), (8, "float32", True, {"xla_cpu_use_fusion_emitters": False}),
                        (16, "bfloat16", False, {})]
    for r in result["throughput"] + result["runs"] + result["methods"]:  # throughput.py's figures
        assert r["train_images_per_sec"] > 0 and r["train_step_flops"] > 0 and r["train_step_memory_mib"] > 0
        # Consistent figures: an eval step (the student's forward pass) is faster than a train
        # step (the teacher's forward pass, the student's forward and backward passes, the
        # update), and compiling the train step takes longer than running it once.
        assert r["eval_images_per_sec"] > r["train_images_per_sec"]
        assert r["compile_seconds"] > r["batch_size"] * r["runs"] / r["train_images_per_sec"]
        assert r["peak_host_memory_mib"] > 100  # JAX alone takes more
        steps_per_second = r["train_images_per_sec"] / (r["batch_size"] * r["runs"])
        assert r["achieved_tflops"] == pytest.approx(r["train_step_flops"] * steps_per_second / 1e12)
        assert r["fraction_of_peak"] is None  # a CPU's peak is not in the table
        assert r["process_peak_device_mib"] is None  # nor does a CPU report its allocator's peak
    assert [(r["runs"], r["vectorized"]) for r in result["runs"]] == [(1, False), (2, True)]
    (crd,) = result["methods"]  # part 5 at tiny size: CRD, whose batches carry contrastive rows
    assert (crd["method"], crd["batch_size"], crd["teacher_batch_norm_folded"]) == ("crd", 8, True)
    # Two runs of the same step compile to more work than one: XLA's FLOPs double with the runs.
    assert result["runs"][1]["train_step_flops"] == pytest.approx(2 * result["runs"][0]["train_step_flops"], rel=0.01)
    real = result["real_data"]
    assert real["bit_identical"] and real["epochs"] == 1 and real["steps"] == 32 // 8
    assert len(real["train_loss_by_epoch"]) == 1 and 0.0 <= real["best_test_acc"] <= 100.0
    assert real["loop_images_per_sec"] > 0 and real["step_images_per_sec"] > 0
    printed = capsys.readouterr().out
    assert "resnet8 -> resnet8" in printed and "two runs bit-identical: True" in printed
    assert "the original PyTorch code" in printed and "resnet20 -> resnet20" in printed
    assert re.search(r"\ncrd +resnet8 -> resnet8 +8 +folded +\d+ +- +- ", printed), printed
    assert printed.endswith(f"Wrote {tmp_path / 'suite.json'}\n")
    # A throughput row is divided by the original's rate for its pair and batch, where measured.
    faster = dict(original, teacher="resnet8", student="resnet8", trainer_images_per_sec=100.0)
    rows = script.tables(dict(result, reference=[faster])).splitlines()
    first = result["throughput"][0]
    assert rows[4].split()[:7] == ["resnet8", "->", "resnet8", "8", "float32", "folded",
                                   f"{first['train_images_per_sec']:.0f}"]
    assert rows[4].split()[7] == f"{first['train_images_per_sec'] / 100.0:.2f}"
    assert "folded, xla_cpu_use_fusion_emitters=False" in rows[5]  # a row compiled with an XLA option
    assert rows[6].split()[7] == "-"  # batch 16: the original was not measured there


def test_throughput_compiles_the_step_with_the_xla_options_given(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO_ROOT / "benchmarks"))
    script = _script("throughput")
    args = script.parse_args(["--xla-option=xla_gpu_autotune_level=0", "--xla-option=xla_gpu_deterministic_ops=true",
                              "--xla-option=xla_dump_to=/tmp/x", "--xla-option=ratio=0.5"])
    assert args.xla_option == [("xla_gpu_autotune_level", 0), ("xla_gpu_deterministic_ops", True),
                               ("xla_dump_to", "/tmp/x"), ("ratio", 0.5)]
    with pytest.raises(SystemExit):
        script.parse_args(["--xla-option=xla_gpu_autotune_level"])
    # The options reach XLA's compile of the train step: an unknown one is refused there.
    args = script.parse_args(["--student=resnet8", "--method=vanilla", "--batch-size=8",
                              "--xla-option=xla_no_such_option=1"])
    with pytest.raises(Exception, match="xla_no_such_option"):
        script.run(args)


def test_device_suite_can_leave_the_cpus_grouped_convolutions_to_xla(monkeypatch):
    """The suite measures a GPU with the CPU's decomposition by patching where the models look;
    on a CPU, decomposing on no platform shows that the patch reaches the models."""
    monkeypatch.syspath_prepend(str(REPO_ROOT / "benchmarks"))
    script = _script("device_suite")
    model = create_model("ShuffleV1")
    images = jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32)
    variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), images)

    def grouped_convolutions_in_program() -> set[str]:
        program = jax.jit(lambda v, x: model.apply(v, x, train=False)).lower(variables, images).as_text()
        return set(re.findall(r"feature_group_count = (\d+)", program)) - {"1"}

    with script.grouped_convolutions_decomposed_on(()):
        # ShuffleV1's grouped 1x1 convolutions (3 groups) and depthwise ones: a quarter of each
        # block's new channels, (240 - 24) / 4 in the first block.
        assert grouped_convolutions_in_program() == {"3", "54", "60", "120", "240"}
    assert grouped_convolutions_in_program() == set()  # as before: decomposed on this CPU


def test_device_suite_reports_why_the_original_code_could_not_run(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(REPO_ROOT / "benchmarks"))
    script = _script("device_suite")
    args = script.parse_args(["--tiny", f"--reference-code={tmp_path}"])  # a folder without the code
    with pytest.raises(RuntimeError, match=r"reference_step.py exited with 2: .*no mdistiller/distillers/CAT_KD.py "
                                           r"there; give the folder that holds the original CAT-KD code"):
        script.reference(args)


def test_device_suite_keeps_going_past_a_failure_and_stops_starting_when_the_budget_is_spent(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(REPO_ROOT / "benchmarks"))
    script = _script("device_suite")
    result = {"kept": [], "skipped": [], "errors": []}
    recorder = script.Recorder(result, 60.0, tmp_path / "suite.json")

    def fails():
        raise ValueError("out of memory\nallocating 3 GiB")

    recorder.measure("first", fails, result["kept"].append)
    assert result["errors"] == ["first: ValueError: out of memory"]
    assert json.loads((tmp_path / "suite.json").read_text()) == result  # written after each measurement
    recorder.measure("second", lambda: {"value": 1}, result["kept"].append)
    assert [kept["value"] for kept in result["kept"]] == [1] and result["kept"][0]["seconds"] >= 0
    recorder.deadline = 0.0
    recorder.measure("third", lambda: {"value": 2}, result["kept"].append)
    assert result["skipped"] == ["third"] and len(result["kept"]) == 1
    assert json.loads((tmp_path / "suite.json").read_text())["skipped"] == ["third"]


def test_device_suite_finds_a_peak_by_device_kind(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO_ROOT / "benchmarks"))
    script = _script("device_suite")
    assert script.peak_tflops("NVIDIA H200", "bfloat16") == 989.4
    assert script.peak_tflops("NVIDIA A100-SXM4-80GB", "float32") == 156.0
    assert script.peak_tflops("cpu", "float32") is None


def test_every_paper_table_names_loadable_configs_teachers_and_the_papers_cells():
    script = _script("paper_tables")
    text = script._read_paper_tables()
    for table, (number, programs) in script.TABLES.items():
        _, paper = script.paper_numbers(text, number)
        cells = {cell for program in programs for filled in program.cells.values() for cell in filled}
        assert cells <= set(paper), (table, sorted(cells - set(paper)))
        assert len(cells) == (6 if table in ("A4", "A5") else len(paper)), table  # A.4/A.5: half each
        for program in programs:
            config = script.scaled_config(program.config_file, dict(program.changes, **{"runs.sweep": program.sweep}), "full")
            plan = runs.plan_runs(config)  # a sweep that parses, over values the cells name
            assert set(program.cells) == set(plan.values() if plan.field else [None]), (table, program.name)
            if program.teacher is not None:
                assert config.teacher.arch == program.teacher, (table, program.name)
                assert (REPO_ROOT / "configs" / f"cifar100_teacher_{program.teacher}.py").is_file(), program.teacher
            else:
                assert config.method == "vanilla", (table, program.name)


def test_benchmark_outputs_go_under_runs_which_git_ignores(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO_ROOT / "benchmarks"))
    assert _script("paper_tables").parse_args(["--table=A1"]).workdir == pathlib.Path("runs/paper_tables/A1")
    assert _script("device_suite").parse_args([]).out == pathlib.Path("runs/device_suite.json")
    assert _script("method_table").parse_args(["--table=4"]).workdir == pathlib.Path("runs/method_table")
    assert "runs/" in (REPO_ROOT / ".gitignore").read_text().splitlines()


def test_method_table_at_tiny_scale_prints_each_cell_from_its_runs_summary(tmp_path, monkeypatch, capsys, teacher_dir):
    monkeypatch.syspath_prepend(str(REPO_ROOT / "benchmarks"))
    script = _script("method_table")
    # Ten classes, not a hundred: eight test images then score accuracies that differ by seed;
    # and the tests' tiny CIFAR-10 teacher serves as both teachers.
    monkeypatch.setitem(script.paper_tables.TINY, "data.name", "cifar10")
    args = script.parse_args(["--pairs", "res32x4_res8x4", "res32x4_res8x4_strong", "--methods", "vanilla", "kd",
                              "--seeds=2", "--scale=tiny", f"--workdir={tmp_path}", f"--teacher=resnet32x4={teacher_dir}",
                              f"--teacher=resnet32x4_trivial_augment={teacher_dir}"])
    markdown = script.run(args)
    assert (tmp_path / "method_table.md").read_text() == markdown
    assert capsys.readouterr().err.endswith(f"Wrote {tmp_path / 'method_table.md'} (the runs: {tmp_path})\n")
    split = lambda line: [cell.strip() for cell in line.strip().strip("|").split("|")]
    lines = [split(line) for line in markdown.splitlines() if line.startswith("|")]
    assert lines[0] == ["Teacher <br> Student", "ResNet32x4 <br> ResNet8x4",
                        "ResNet32x4 (strong, TrivialAugment) <br> ResNet8x4"]
    assert [line[0] for line in lines[2:]] == ["Student (vanilla)", "KD"]
    (vanilla, vanilla_strong), (kd, kd_strong) = (line[1:] for line in lines[2:])

    def ours(program: str) -> str:
        """The mean and sample std, over its two seeds, of the best accuracies the program recorded."""
        summary = json.loads((tmp_path / program / "summary.json").read_text())
        assert [run["seed"] for run in summary["runs"]] == [0, 1]
        best = [run["best_test_acc"] for run in summary["runs"]]
        return f"{sum(best) / 2:.2f} ± {abs(best[0] - best[1]) / 2 ** 0.5:.2f}"

    # Published: RepDistiller's student alone (72.50), mdistiller's KD (73.33); none for the
    # strong teacher. The student alone is one program for both columns.
    assert (vanilla, vanilla_strong) == (f"{ours('vanilla_resnet8x4')} (72.50)", ours("vanilla_resnet8x4"))
    assert (kd, kd_strong) == (f"{ours('kd_res32x4_res8x4')} (73.33)", ours("kd_res32x4_res8x4_strong"))
    assert sorted(path.name for path in tmp_path.iterdir()) == [
        "kd_res32x4_res8x4", "kd_res32x4_res8x4_strong", "method_table.md", "vanilla_resnet8x4"]


def test_method_table_full_scale_plan_loads_every_cell_with_a_config(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO_ROOT / "benchmarks"))
    script = _script("method_table")
    configs = 0
    for method in script.METHODS:
        for pair_name, pair in script.PAIRS.items():
            cell = script.cell(method, pair_name)
            if cell.config_file is None:
                continue
            configs += 1
            config = script.paper_tables.scaled_config(cell.config_file, {**cell.changes, "runs.seeds": (0, 1, 2)}, "full")
            assert (config.method, config.student.arch) == (method, pair.student_arch), (method, pair_name)
            assert len(runs.plan_runs(config).runs) == 3
            teacher = script.teacher_name(config)
            if method == "vanilla":
                assert teacher is None
            else:
                assert (REPO_ROOT / "configs" / f"cifar100_teacher_{teacher}.py").is_file(), (method, pair_name)
                assert (teacher == "resnet32x4_trivial_augment") == (pair_name == "res32x4_res8x4_strong")
    assert configs >= 40
    # Table 4's CAT-KD cell is the repository's strong-teacher config.
    strong = script.cell("cat_kd", "res32x4_res8x4_strong")
    assert script.paper_tables.scaled_config(strong.config_file, strong.changes, "full").to_dict() == \
        script.paper_tables.scaled_config("cifar100_res32x4_res8x4_strong_teacher.py", {}, "full").to_dict()
    cells, programs = script.plan(["vanilla", "dkd", "cat_kd"], ["res32x4_shuv1", "wrn40_2_shuv1"])
    assert len(cells) == 6 and [p.name for p in programs][0] == "vanilla_ShuffleV1"  # one student alone for both
    assert programs[0].cells[None] == (("vanilla", "res32x4_shuv1"), ("vanilla", "wrn40_2_shuv1"))
    with pytest.raises(script.ConfigError, match="method ofd has no config for any pair asked"):
        script.plan(["ofd", "dkd"], ["vgg13_mv2"])
    # A cell without a config: "no config" in the plan and in the table, beside the published number.
    args = script.parse_args(["--pairs", "res32x4_res8x4", "vgg13_mv2", "--methods", "ofd", "dkd", "--dry-run",
                              f"--workdir={REPO_ROOT / 'runs' / 'not_made'}"])
    plan = script.run(args)
    assert "ofd x vgg13_mv2: no config\n" in plan and "3 programs of 3 seeds" in plan
    assert "teacher vgg13: trained from configs/cifar100_teacher_vgg13.py" in plan
    assert not (REPO_ROOT / "runs" / "not_made").exists()
    cells, _ = script.plan(args.methods, args.pairs)
    ours = {(c.method, c.pair): {"mean": 70.0 + index, "std": 0.25} for index, c in enumerate(cells) if c.config_file}
    assert script.table(cells, ours, args).splitlines()[-2:] == [
        "| OFD | 70.00 ± 0.25 | no config |", "| DKD | 72.00 ± 0.25 (76.32) | 73.00 ± 0.25 (69.71) |"]
    table_4 = script.parse_args(["--table=4"])
    assert table_4.methods == ["cat_kd", "dkd", "reviewkd"] and not table_4.probe
    assert script.parse_args(["--table=9"]).probe


def test_published_results_doc_is_written_from_the_json_and_cat_kd_rows_are_the_papers(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO_ROOT / "benchmarks"))
    script = _script("method_table")
    tables = script.read_published()
    assert (REPO_ROOT / "docs" / "published_results.md").read_text() == script.published_doc(tables)
    _, paper = script.paper_tables.paper_numbers(script.paper_tables._read_paper_tables(), "A.4")
    rows = {"res110_res32": "ResNet110 → ResNet32", "wrn40_2_wrn16_2": "WRN-40-2 → WRN-16-2",
            "res32x4_res8x4": "ResNet32x4 → ResNet8x4", "res50_mv2": "ResNet50 → MobileNetV2",
            "wrn40_2_shuv1": "WRN-40-2 → ShuffleNetV1", "res32x4_shuv1": "ResNet32x4 → ShuffleNetV1"}
    for pair, row in rows.items():  # the appendix's column of the setting the pair's config uses
        normalize = script.paper_tables.scaled_config(f"cifar100_{pair}.py", {}, "full").cat_kd.normalize
        column = "normalised" if normalize else "not normalised"
        assert script.published_number(tables, "cat_kd", pair) == paper[(row, column)], pair
    # Sources agree where they overlap: mdistiller's and RepDistiller's KD.
    assert script.published_number(tables[3:], "kd", "res32x4_res8x4") == script.published_number(tables, "kd",
                                                                                                  "res32x4_res8x4")
