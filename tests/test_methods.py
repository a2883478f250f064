"""The distillation methods' loss terms, from given network outputs."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from catkd_jax import config_files, default_config, losses, methods, training
from catkd_jax.errors import ConfigError
from conftest import REPO_ROOT, read_metrics, tiny_config


def _outputs(seed: int, classes: int = 5) -> methods.Outputs:
    features_key, kernel_key, logits_key = jax.random.split(jax.random.key(seed), 3)
    return methods.Outputs(logits=jax.random.normal(logits_key, (4, classes)),
                           features=jax.random.normal(features_key, (4, 4, 4, 8)),
                           kernel=jax.random.normal(kernel_key, (8, classes)), bias=None)


def _cat_kd_terms(**settings):
    config = default_config.get_config()
    config.cat_kd.update(settings)
    return methods.create(config, None, None).loss_terms(_outputs(0), _outputs(1), jnp.arange(4) % 5, jnp.asarray(1))


def test_teacher_prob_weighting_weighs_the_cams_by_the_teachers_softmax():
    student, teacher = _outputs(0), _outputs(1)
    weighted = _cat_kd_terms(class_weighting="teacher_prob")["loss_cat"]
    expected = 15.0 * losses.cat_loss(student.features, student.kernel, teacher.features, teacher.kernel,
                                      class_weights=jax.nn.softmax(teacher.logits))
    assert float(weighted) == pytest.approx(float(expected), rel=1e-6)
    uniform = _cat_kd_terms(class_weighting="uniform")["loss_cat"]
    assert float(uniform) == pytest.approx(
        15.0 * float(losses.cat_loss(student.features, student.kernel, teacher.features, teacher.kernel)), rel=1e-6)
    assert abs(float(weighted) - float(uniform)) > 1e-3 * float(uniform)


def test_an_unknown_class_weighting_is_refused_naming_the_choices():
    with pytest.raises(ConfigError, match="class_weighting must be 'uniform' or 'teacher_prob', got 'softmax'"):
        _cat_kd_terms(class_weighting="softmax")


def test_gradcam_teacher_maps_are_the_teachers_rectified_cams_over_its_positions():
    student, teacher = _outputs(0), _outputs(1)
    got = _cat_kd_terms(teacher_cams="gradcam", normalize=True)["loss_cat"]
    # For a pooled linear classifier, Grad-CAM is relu(CAM) / (h * w) (independent arithmetic).
    teacher_maps = np.maximum(np.einsum("nhwk,kc->nhwc", teacher.features, teacher.kernel), 0.0) / 16
    student_maps = losses.class_activation_maps(student.features, student.kernel)
    expected = 15.0 * losses.cam_transfer_loss(student_maps, jnp.asarray(teacher_maps), normalize=True)
    assert float(got) == pytest.approx(float(expected), rel=1e-5)
    classifier = _cat_kd_terms(teacher_cams="classifier", normalize=True)["loss_cat"]
    assert abs(float(got) - float(classifier)) > 1e-3 * float(classifier)


def test_an_unknown_teacher_cams_choice_is_refused_naming_the_choices():
    with pytest.raises(ConfigError, match="teacher_cams must be 'classifier' or 'gradcam', got 'grad-cam'"):
        _cat_kd_terms(teacher_cams="grad-cam")


def test_the_gradcam_config_trains_one_epoch(teacher_dir, tmp_path):
    """configs/cifar10_cat_gradcam_res32x4_res32x4.py with resnet8 networks (the session's teacher;
    its own would be trained first, for hours) on tiny synthetic CIFAR-10-sized data: the config's
    data set and CAT settings, not its architectures (the model tests cover those)."""
    config = config_files.load_config(REPO_ROOT / "configs" / "cifar10_cat_gradcam_res32x4_res32x4.py")
    assert (config.data.name, config.cat_kd.teacher_cams, config.cat_kd.ce_weight) == ("cifar10", "gradcam", 0.0)
    tiny = tiny_config()
    config = config_files.with_values(config, {
        "data.source": "synthetic", "data.synthetic_train_size": 64, "data.synthetic_test_size": 40,
        "batch_size": 16, "eval_batch_size": 16, "num_epochs": 1, "teacher.arch": tiny.teacher.arch,
        "student.arch": tiny.student.arch, "teacher.checkpoint": str(teacher_dir)})
    training.train_and_evaluate(config, tmp_path)
    (record,) = read_metrics(tmp_path)
    assert "train_loss_ce" not in record and np.isfinite(record["train_loss_cat"]) and record["train_loss_cat"] > 0
