"""Resuming from whatever a kill can leave, and the workdir's config.json as the run's record.

Each damaged state is built directly from a complete run's checkpoints, not by timing a kill.
"""

from __future__ import annotations

import hashlib
import json
import pathlib
import shutil

import jax
import numpy as np
import pytest

from catkd_jax import checkpoints, config_files, record, training
from catkd_jax.errors import UserError
from conftest import read_metrics, timeless_metrics, tiny_config

STEPS_PER_EPOCH = 4  # tiny_config: 64 training images, batches of 16


def _config(**overrides):
    """Three epochs, a checkpoint after each, all kept."""
    return tiny_config(**{"num_epochs": 3, "checkpoint__keep": 10, **overrides})


@pytest.fixture(scope="module")
def complete_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("complete")
    training.train_and_evaluate(_config(), workdir)
    assert _steps(workdir) == [4, 8, 12]
    return workdir


def _steps(workdir: pathlib.Path) -> list[int]:
    return sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())


def _killed_after(complete_run: pathlib.Path, step: int, target: pathlib.Path) -> pathlib.Path:
    """The workdir of the complete run as a kill right after saving `step` leaves it."""
    shutil.copytree(complete_run, target)
    for later in _steps(target):
        if later > step:
            shutil.rmtree(target / "checkpoints" / str(later))
    return target


def _assert_finishes_like(workdir: pathlib.Path, complete_run: pathlib.Path) -> None:
    training.train_and_evaluate(_config(), workdir)
    a, _ = checkpoints.load_variables(complete_run)
    b, _ = checkpoints.load_variables(workdir)
    jax.tree_util.tree_map(np.testing.assert_array_equal, a, b)
    assert timeless_metrics(workdir) == timeless_metrics(complete_run)
    assert not [p.name for p in (workdir / "checkpoints").iterdir() if "tmp" in p.name]


def _largest_file(directory: pathlib.Path) -> pathlib.Path:
    return max((p for p in directory.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)


def _snapshot(directory: pathlib.Path) -> dict[str, tuple[str, int]]:
    return {str(p.relative_to(directory)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(directory.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("step", [4, 8])
def test_a_kill_after_any_save_resumes_to_the_same_end(step, complete_run, tmp_path):
    _assert_finishes_like(_killed_after(complete_run, step, tmp_path / "run"), complete_run)


def test_a_kill_during_a_save_leaves_a_temporary_directory_that_is_cleared(complete_run, tmp_path):
    workdir = _killed_after(complete_run, 8, tmp_path / "run")
    partial = workdir / "checkpoints" / "12.orbax-checkpoint-tmp"
    shutil.copytree(complete_run / "checkpoints" / "12", partial)
    _largest_file(partial / "state").unlink()
    _assert_finishes_like(workdir, complete_run)


@pytest.mark.parametrize("damage", ["truncated", "deleted", "no meta"])
def test_an_unreadable_newest_step_is_set_aside_and_its_epoch_replayed(damage, complete_run, tmp_path, capsys):
    workdir = _killed_after(complete_run, 12, tmp_path / "run")
    step_dir = workdir / "checkpoints" / "12"
    if damage == "no meta":
        shutil.rmtree(step_dir / "meta")
    else:
        data = _largest_file(step_dir / "state")
        if damage == "deleted":
            data.unlink()
        else:
            data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
    _assert_finishes_like(workdir, complete_run)  # resumes from step 8 and writes step 12 again
    aside = list((workdir / "checkpoints.unreadable").iterdir())
    assert [p.name.split("-")[0] for p in aside] == ["12"]
    warning = capsys.readouterr().err
    assert f"warning: checkpoint steps 12 of {workdir / 'checkpoints'} could not be read; resuming from step 8" in warning
    assert str(aside[0]) in warning


def test_no_readable_step_is_one_error_naming_what_to_delete(complete_run, tmp_path):
    workdir = _killed_after(complete_run, 4, tmp_path / "run")
    _largest_file(workdir / "checkpoints" / "4" / "state").unlink()
    before = _snapshot(workdir)
    with pytest.raises(UserError) as error:
        training.train_and_evaluate(_config(), workdir)
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith(f"no checkpoint in {workdir / 'checkpoints'} can be read (step 4: ")
    assert message.endswith(f"delete {workdir / 'checkpoints'} to start the run over, or restore it from a copy")
    assert _snapshot(workdir) == before


def test_an_old_layout_is_refused_with_the_move_to_make(tmp_path):
    (tmp_path / "checkpoints" / "latest" / "4").mkdir(parents=True)
    with pytest.raises(UserError, match=r"old layout \(latest/ and best/\); move the step directories"):
        checkpoints.TrainCheckpoints(tmp_path, keep=2)


def test_a_resume_with_a_result_changing_field_is_refused_and_changes_nothing(complete_run, tmp_path):
    workdir = _killed_after(complete_run, 8, tmp_path / "run")
    before = _snapshot(workdir)
    with pytest.raises(UserError) as error:
        training.train_and_evaluate(_config(optim__lr=0.1, cat_kd__beta=5.0), workdir)
    assert str(error.value) == (
        f"{workdir} holds a run made with another config (cat_kd.beta 15.0 -> 5.0, optim.lr 0.05 -> 0.1); "
        "resume with the recorded values, start a new --workdir, or accept the change with "
        "--allow_config_change=cat_kd.beta,optim.lr"
    )
    assert _snapshot(workdir) == before


def test_an_allowed_change_is_applied_and_logged(complete_run, tmp_path):
    workdir = _killed_after(complete_run, 8, tmp_path / "run")
    training.train_and_evaluate(_config(optim__lr=0.1), workdir, allow_changes=("optim.lr",))
    changes = [json.loads(line) for line in (workdir / record.CHANGES_FILE).read_text().splitlines()]
    # Logged with the first checkpoint made with it (resumed after step 8, the next save is 12).
    assert [(c["field"], c["recorded"], c["now"], c["from_step"]) for c in changes] == [("optim.lr", 0.05, 0.1, 12)]
    assert json.loads((workdir / record.CONFIG_FILE).read_text())["optim"]["lr"] == 0.1
    assert read_metrics(workdir)[:2] == read_metrics(complete_run)[:2]
    assert read_metrics(workdir)[2]["lr"] == pytest.approx(0.1)


def test_fields_that_cannot_change_results_may_change(complete_run, tmp_path):
    workdir = _killed_after(complete_run, 12, tmp_path / "run")
    config = _config(num_epochs=4, eval_batch_size=8, checkpoint__every_epochs=2, checkpoint__keep=3)
    training.train_and_evaluate(config, workdir)
    assert [r["epoch"] for r in read_metrics(workdir)] == [1, 2, 3, 4]
    assert not (workdir / record.CHANGES_FILE).exists()
    assert json.loads((workdir / record.CONFIG_FILE).read_text())["num_epochs"] == 4


@pytest.mark.parametrize("overrides, message", [
    (dict(student__arch="resnet8x"), "resnet8x"),
    (dict(batch_size=1000), "fewer than one batch"),
    (dict(num_epochs=0), "num_epochs must be an integer >= 1"),
])
def test_a_start_that_fails_validation_never_touches_the_workdir(overrides, message, complete_run, tmp_path):
    workdir = _killed_after(complete_run, 8, tmp_path / "run")
    before = _snapshot(workdir)
    with pytest.raises((ValueError, KeyError, UserError), match=message):
        training.train_and_evaluate(_config(**overrides), workdir)
    assert _snapshot(workdir) == before
    with pytest.raises((ValueError, KeyError, UserError), match=message):
        training.train_and_evaluate(_config(**overrides), tmp_path / "new")
    assert not (tmp_path / "new").exists()


def test_a_checkpoint_made_with_another_epoch_length_is_refused(complete_run, tmp_path, capsys):
    workdir = _killed_after(complete_run, 8, tmp_path / "run")  # after epoch 2, 4 steps each
    with pytest.raises(UserError, match=r"the checkpoint of step 8 \(epoch 2\) was saved with another number of "
                                        "steps per epoch than this config's 5"):
        training.train_and_evaluate(_config(data__synthetic_train_size=88, data__drop_remainder=True), workdir,
                                    allow_changes=("data.synthetic_train_size", "data.drop_remainder"))
    # The log says once what each epoch leaves out.
    assert capsys.readouterr().out.count("8 of the 88 training images sit out each epoch (the last of its shuffled "
                                         "order, different ones each epoch): config.data.drop_remainder is set, so "
                                         "every batch holds 16.\n") == 1


def test_a_record_from_before_drop_remainder_existed_counts_as_dropping():
    """Runs recorded before `data.drop_remainder` existed dropped each epoch's last partial batch."""
    config = _config()
    recorded = record.as_json(config)
    del recorded["data"]["drop_remainder"]
    assert record.changed_fields(recorded, config) == {"data.drop_remainder": (True, False)}
    assert record.changed_fields(recorded, config_files.with_values(config, {"data.drop_remainder": True})) == {}


def test_a_field_the_record_lacks_counts_as_its_default():
    """A run recorded before a field existed resumes; giving that field another value is a change."""
    config = _config()
    recorded = record.as_json(config)
    del recorded["cat_kd"]["class_weighting"]
    assert record.changed_fields(recorded, config) == {}
    changed = config_files.with_values(config, {"cat_kd.class_weighting": "teacher_prob"})
    assert record.changed_fields(recorded, changed) == {"cat_kd.class_weighting": ("uniform", "teacher_prob")}


def test_checkpoint_paths_are_recorded_absolute_and_an_older_relative_record_still_matches(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = _config(teacher__checkpoint="runs/teacher", student__init_checkpoint="",
                     teacher__config="configs/cifar100_teacher_resnet32x4.py")
    absolute = record.with_absolute_paths(config)
    assert absolute.teacher.checkpoint == str(tmp_path / "runs" / "teacher")
    # Config files now name their teacher's config absolute (config_files.beside): a record that
    # named it from the checkout is the same file.
    assert absolute.teacher.config == str(tmp_path / "configs" / "cifar100_teacher_resnet32x4.py")
    assert absolute.student.init_checkpoint == ""  # none stays none
    # A record written before paths were made absolute meant them from the working directory.
    assert record.changed_fields(record.as_json(config), absolute) == {}

