"""The quickstart: CAMs of a network trained on 'shapes' find the objects; the pipeline's outputs."""

from __future__ import annotations

import json

import pytest

from catkd_jax import config_files, quickstart, training
from conftest import REPO_ROOT


def shapes_config(**changes):
    return config_files.with_values(config_files.load_config(REPO_ROOT / "configs" / "quickstart.py"), changes)


def test_cams_of_a_network_trained_on_shapes_find_the_objects(tmp_path):
    # Chance is about 20% (an object box covers a fifth of the image on average); a CAM that
    # ignored the object, or a wrong peak-to-pixel mapping, could not reach 70%.
    config = shapes_config(**{
        "pipeline": "single", "method": "vanilla", "student.arch": "resnet14", "student.classifier_bias": True,
        "data.synthetic_train_size": 1500, "data.synthetic_test_size": 300, "num_epochs": 6,
        "optim.decay_epochs": (5,),
    })
    summary = training.train_and_evaluate(config, tmp_path)
    assert summary["final_test_acc"] > 80.0
    assert quickstart.cam_localization(config, tmp_path, "resnet14") >= 70.0


def test_quickstart_writes_table_summary_and_figure(tmp_path, capsys):
    config = shapes_config(**{
        "teacher.arch": "resnet8", "student.arch": "resnet8", "num_epochs": 1,
        "data.synthetic_train_size": 128, "data.synthetic_test_size": 40, "eval_batch_size": 20,
    })
    result = quickstart.run(config, tmp_path)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert [row["network"] for row in summary["rows"]] == ["teacher", "vanilla student", "CAT-KD student"]
    assert [row["method"] for row in summary["rows"]] == ["vanilla", "vanilla", "cat_kd"]
    for row in summary["rows"]:  # one epoch on 128 images: the rows' plumbing, not their quality
        assert 0.0 <= row["cam_localization"] <= 100.0 and 0.0 <= row["best_test_acc"] <= 100.0
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
