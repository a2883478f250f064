"""The distillation methods' loss terms, from given network outputs."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest

from catkd_jax import default_config, losses, methods
from catkd_jax.errors import ConfigError


def _outputs(seed: int, classes: int = 5) -> methods.Outputs:
    features_key, kernel_key, logits_key = jax.random.split(jax.random.key(seed), 3)
    return methods.Outputs(logits=jax.random.normal(logits_key, (4, classes)),
                           features=jax.random.normal(features_key, (4, 4, 4, 8)),
                           kernel=jax.random.normal(kernel_key, (8, classes)), bias=None)


def _cat_kd_terms(**settings):
    config = default_config.get_config()
    config.cat_kd.update(settings)
    return methods.cat_kd(config, _outputs(0), _outputs(1), jnp.arange(4) % 5, jnp.asarray(1))


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
