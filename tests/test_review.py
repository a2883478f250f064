"""ReviewKD's parts that its parity test (test_method_parity.py) cannot see: its modules' initial
distributions (the parity test loads the original's weights), PyTorch's nearest resizing at
ratios the parity pair lacks, and settings that do not fit the networks."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from catkd_jax import config_files, methods
from catkd_jax.errors import ConfigError
from catkd_jax.methods import base, review
from catkd_jax.models import create_model
from conftest import tiny_config


def test_abf_weights_are_drawn_as_the_originals():
    """conv1/conv2: kaiming_uniform_(a=1), U(+-sqrt(3 / fan_in)); att_conv: PyTorch's default,
    U(+-1/sqrt(fan_in)) for weight and bias; BatchNorms at 1, 0 (statistics 0, 1). Uniform
    bounds are checked by the sample's max within the bound and std within 6 standard errors."""
    config = tiny_config(method="reviewkd", reviewkd__in_channels=(16, 32, 64, 64),
                         reviewkd__out_channels=(16, 32, 64, 64))
    variables = jax.jit(methods.create(config, None, None).init)(jax.random.key(0))  # jitted: 1 s sooner
    params = variables["params"]
    assert list(params) == ["0", "1", "2", "3"] and "att_conv.0" not in params["0"]  # abfs.0: no fusion
    draws = [(params["3"]["conv1.0"]["kernel"], 3 / 16), (params["1"]["conv2.0"]["kernel"], 3 / (9 * 64)),
             (params["1"]["att_conv.0"]["kernel"], 1 / 128), (params["1"]["att_conv.0"]["bias"], 1 / 128)]
    for values, bound_squared in draws:
        values, bound = np.asarray(values, np.float64), math.sqrt(bound_squared)
        assert np.abs(values).max() <= bound
        # A uniform's kurtosis is 1.8: the sample std's relative standard error is sqrt(0.8 / (4 n)).
        assert abs(values.std() / (bound / math.sqrt(3)) - 1) < 6 * math.sqrt(0.8 / (4 * values.size))
    assert params["3"]["conv1.0"]["kernel"].shape == (1, 1, 16, 64)  # mid channels: min(512, in_channels[-1])
    for abf in params.values():
        for batch_norm in ("conv1.1", "conv2.1"):
            np.testing.assert_array_equal(abf[batch_norm]["scale"], 1)
            np.testing.assert_array_equal(abf[batch_norm]["bias"], 0)
    for abf in variables["batch_stats"].values():
        np.testing.assert_array_equal(abf["conv2.1"]["mean"], 0)
        np.testing.assert_array_equal(abf["conv2.1"]["var"], 1)


# (26, 22): a ratio whose float32 scale floors some indices unlike the exact ratio (PyTorch's is float32).
@pytest.mark.parametrize("size, target", [(1, 4), (4, 8), (8, 4), (3, 7), (7, 3), (14, 4), (26, 22)])
def test_resize_nearest_is_pytorchs_nearest_interpolation(size, target):
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(0).standard_normal((2, size, size, 3)).astype(np.float32)
    expected = torch.nn.functional.interpolate(torch.from_numpy(x.transpose(0, 3, 1, 2)), (target, target),
                                               mode="nearest").numpy().transpose(0, 2, 3, 1)
    np.testing.assert_array_equal(review.resize_nearest(jnp.asarray(x), target), expected)


def _outputs(arch: str) -> methods.Outputs:
    """One 32x32 image's outputs of `arch`, as shapes (what tracing a step sees)."""
    stages = base.stage_shapes(create_model(arch, 10), (32, 32, 3))
    logits = jax.ShapeDtypeStruct((1, 10), jnp.float32)
    return methods.Outputs(logits, stages.feats[-1], jax.ShapeDtypeStruct((64, 10), jnp.float32), None, stages)


def test_settings_that_do_not_fit_the_networks_are_refused_in_one_line():
    """The defaults fit resnet32x4 -> ShuffleV1, not resnet8 -> resnet8: the message names every
    setting off and the values the networks need."""
    config = tiny_config(method="reviewkd")
    method = methods.create(config, None, None)
    variables = jax.eval_shape(method.init, jax.random.key(0))
    with pytest.raises(ConfigError) as refused:
        jax.eval_shape(lambda: method(variables, _outputs("resnet8"), _outputs("resnet8"),
                                      {"label": jnp.zeros(1, jnp.int32)}, jnp.float32(1)))
    assert str(refused.value) == (
        "config.reviewkd does not fit these networks' features: shapes=(1, 4, 8, 16) should be (1, 8, 16, 32); "
        "in_channels=(240, 480, 960, 960) should be (16, 32, 64, 64); "
        "out_channels=(64, 128, 256, 256) should be (16, 32, 64, 64)")
    with pytest.raises(ConfigError, match=r"^config.reviewkd.in_channels, out_channels, shapes and out_shapes "
                                          r"list one entry per ABF.*'shapes': 3"):
        methods.create(config_files.with_values(config, {"reviewkd.shapes": (1, 8, 16)}), None, None)
