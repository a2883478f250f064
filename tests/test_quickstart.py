"""The quickstart: CAMs of a network trained on 'shapes' find the objects; the pipeline's outputs."""

from __future__ import annotations

import json

import pytest

from catkd_jax import config_files, quickstart
from conftest import REPO_ROOT


def shapes_config(**changes):
    return config_files.with_values(config_files.load_config(REPO_ROOT / "configs" / "quickstart.py"), changes)


def test_quickstart_table_summary_figure_and_a_teacher_whose_cams_find_the_objects(tmp_path, capsys):
    # The teacher trains long enough to learn the shapes; the students one epoch only (the rows'
    # plumbing). Chance is 20% for accuracy and about 20% for CAM localisation (an object box
    # covers a fifth of the image on average): a CAM that ignored the object, or a wrong
    # peak-to-pixel mapping, could not reach 70%.
    config = shapes_config(**{
        "teacher.arch": "resnet14", "teacher.num_epochs": 6, "student.arch": "resnet8", "num_epochs": 1,
        "data.synthetic_train_size": 1500, "data.synthetic_test_size": 300, "optim.decay_epochs": (5,),
    })
    result = quickstart.run(config, tmp_path)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert [row["network"] for row in summary["rows"]] == ["teacher", "vanilla student", "CAT-KD student"]
    assert [row["method"] for row in summary["rows"]] == ["vanilla", "vanilla", "cat_kd"]
    teacher, *students = summary["rows"]
    assert teacher["final_test_acc"] > 80.0 and teacher["cam_localization"] >= 70.0
    for row in students:
        assert 0.0 <= row["best_test_acc"] <= 100.0 and 0.0 <= row["cam_localization"] <= 100.0
    assert (tmp_path / "cams.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert summary["table"] in capsys.readouterr().out
    assert result["rows"] == summary["rows"]
    # The CAT-KD student distilled from the teacher trained first.
    cat_kd_config = json.loads((tmp_path / "cat_kd" / "config.json").read_text())
    assert cat_kd_config["teacher"]["checkpoint"] == str(tmp_path / "teacher")
    assert cat_kd_config["student"]["classifier_bias"] is False


def test_cam_localization_needs_boxes(tmp_path):
    config = shapes_config(**{"data.source": "synthetic", "data.name": "cifar10"})
    with pytest.raises(ValueError, match="needs object boxes"):
        quickstart.cam_localization(config, tmp_path, "resnet8")
