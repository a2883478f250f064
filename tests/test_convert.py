"""Tests of catkd_jax.convert: published-layout import/export, parity, errors, the CLI."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from catkd_jax import checkpoints, convert
from catkd_jax.convert import cli as convert_cli
from catkd_jax.errors import ConfigError, InputError
from catkd_jax.models import create_model
from conftest import shared_path
from test_models import ARCHS


def _spec_rows(arch: str) -> list:
    with open(shared_path("reference/mdistiller_cifar_state_dicts.json")) as file:
        return json.load(file)[arch]["state_dict"]


def _random_state_dict(rows: list, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        name: (np.array(7, np.int64) if dtype == "int64" else rng.normal(size=shape).astype(np.float32))
        for name, shape, dtype in rows
    }


def _parity_files(arch: str):
    return shared_path(f"reference/parity/{arch}.pth"), np.load(shared_path(f"reference/parity/{arch}.npz"))


@pytest.mark.parametrize("arch", ARCHS)
def test_importer_consumes_the_published_layout_and_round_trips(arch):
    rows = _spec_rows(arch)
    state_dict = _random_state_dict(rows)
    variables = convert.from_torch_state_dict(state_dict, arch, num_classes=100)

    model = create_model(arch)
    expected = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False))
    assert jax.tree_util.tree_structure(variables) == jax.tree_util.tree_structure(expected)
    assert jax.tree_util.tree_map(np.shape, variables) == jax.tree_util.tree_map(lambda x: x.shape, expected)

    exported = convert.to_torch_state_dict(variables, arch)
    assert set(exported) == {name for name, _, _ in rows}
    for name, shape, dtype in rows:
        assert exported[name].shape == tuple(shape)
        if dtype == "float32":
            np.testing.assert_array_equal(exported[name], state_dict[name], err_msg=name)
    reimported = convert.from_torch_state_dict(exported, arch)
    jax.tree_util.tree_map(np.testing.assert_array_equal, reimported, variables)


@pytest.mark.parametrize("arch", ["resnet8", "resnet20"])
def test_parity_with_reference_outputs(arch):
    checkpoint, reference = _parity_files(arch)
    variables = convert.from_torch_state_dict(convert.load_torch_checkpoint(checkpoint), arch)
    logits, features = create_model(arch).apply(variables, jnp.asarray(reference["images_nhwc"]), train=False)
    for ours, theirs in ((logits, reference["logits"]), (features, reference["features_nhwc"])):
        scale = np.abs(theirs).max()
        np.testing.assert_allclose(np.asarray(ours) / scale, theirs / scale, rtol=0, atol=1e-4)


def test_cam_head_layout_imports_with_identical_logits():
    rows = _spec_rows("resnet20")
    plain = _random_state_dict(rows)
    cam_head = {key: value for key, value in plain.items() if not key.startswith("fc.")}
    cam_head["conv_test.weight"] = plain["fc.weight"][:, :, None, None]
    model = create_model("resnet20")
    images = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))

    from_cam_head = convert.from_torch_state_dict(cam_head, "resnet20")
    np.testing.assert_array_equal(from_cam_head["params"]["classifier"]["bias"], 0.0)
    np.testing.assert_array_equal(from_cam_head["params"]["classifier"]["kernel"], plain["fc.weight"].T)
    without_bias = convert.from_torch_state_dict(cam_head, "resnet20", classifier_bias=False)
    logits_no_bias, _ = create_model("resnet20", classifier_bias=False).apply(without_bias, images, train=False)
    logits_zero_bias, _ = model.apply(from_cam_head, images, train=False)
    np.testing.assert_allclose(logits_no_bias, logits_zero_bias, rtol=1e-6)


def test_torch_arrays_name_every_leaf_as_each_layout_does():
    plain = _random_state_dict(_spec_rows("resnet8"))
    cam_head = {key: value for key, value in plain.items() if not key.startswith("fc.")}
    cam_head["conv_test.weight"] = plain["fc.weight"][:, :, None, None]
    for state_dict, classifier_bias in ((plain, True), (cam_head, False)):
        variables = convert.from_torch_state_dict(state_dict, "resnet8", classifier_bias=classifier_bias)
        arrays = convert.torch_arrays(variables, "resnet8", cam_head=not classifier_bias)
        assert set(arrays) == {key for key in state_dict if not key.endswith(".num_batches_tracked")}
        for key, array in arrays.items():
            np.testing.assert_array_equal(array, state_dict[key], err_msg=key)


def test_module_prefix_and_wrapped_state_dict_are_accepted(tmp_path):
    torch = pytest.importorskip("torch")
    checkpoint, _ = _parity_files("resnet8")
    state_dict = torch.load(checkpoint, map_location="cpu", weights_only=True)["model"]
    prefixed = tmp_path / "prefixed.pth"
    torch.save({f"module.{key}": value for key, value in state_dict.items()}, prefixed)  # a bare state dict
    loaded = convert.load_torch_checkpoint(prefixed)
    assert set(loaded) == set(state_dict)
    np.testing.assert_array_equal(loaded["fc.weight"], state_dict["fc.weight"].numpy())


def test_untrusted_pickles_are_refused(tmp_path):
    torch = pytest.importorskip("torch")
    path = tmp_path / "evil.pth"
    torch.save({"model": {"w": torch.zeros(1)}, "payload": _Payload()}, path)
    with pytest.raises(InputError, match="holds Python objects besides tensors\\); nothing in it was executed") as error:
        convert.load_torch_checkpoint(path)
    assert "weights_only=False" not in str(error.value)  # PyTorch's advice would run the payload


class _Payload:
    """An arbitrary object: unpickling it would import and run code from this module."""


def test_wrong_architecture_is_refused_listing_the_problems():
    resnet8 = convert.load_torch_checkpoint(_parity_files("resnet8")[0])
    resnet20 = convert.load_torch_checkpoint(_parity_files("resnet20")[0])
    with pytest.raises(convert.CheckpointMismatchError, match=r"'resnet20'(.|\n)*60 missing keys"):
        convert.from_torch_state_dict(resnet8, "resnet20")
    with pytest.raises(convert.CheckpointMismatchError, match=r"'resnet8'(.|\n)*unexpected keys(.|\n)*layer1.1.conv1.weight"):
        convert.from_torch_state_dict(resnet20, "resnet8")
    with pytest.raises(convert.CheckpointMismatchError, match=r"mis-shaped keys(.|\n)*bn1.running_mean: checkpoint \(16,\), resnet8x4 expects \(32,\)"):
        convert.from_torch_state_dict(resnet8, "resnet8x4")


def test_missing_and_mis_shaped_keys_are_each_listed():
    state_dict = _random_state_dict(_spec_rows("resnet8"))
    del state_dict["layer2.0.bn1.running_var"]
    with pytest.raises(convert.CheckpointMismatchError, match=r"1 missing keys:\n  layer2.0.bn1.running_var"):
        convert.from_torch_state_dict(state_dict, "resnet8")
    with pytest.raises(convert.CheckpointMismatchError, match=r"fc.weight: checkpoint \(100, 64\), resnet8 expects \(10, 64\)"):
        convert.from_torch_state_dict(_random_state_dict(_spec_rows("resnet8")), "resnet8", num_classes=10)


def test_cli_writes_a_model_directory_that_loads_back(tmp_path):
    checkpoint, reference = _parity_files("resnet8")
    output = tmp_path / "teacher"
    convert_cli.main(["--arch", "res8", "--checkpoint", str(checkpoint), "--output", str(output)])
    variables, info = checkpoints.load_model(output)
    assert info["arch"] == "resnet8" and info["num_classes"] == 100
    logits, _ = create_model(info["arch"]).apply(variables, jnp.asarray(reference["images_nhwc"]), train=False)
    np.testing.assert_allclose(logits, reference["logits"], rtol=1e-4, atol=1e-4 * np.abs(reference["logits"]).max())
    # An existing --output is refused before the (slow) conversion: even a missing input is not read.
    with pytest.raises(ConfigError, match="already exists; choose a new output directory"):
        convert_cli.main(["--arch", "resnet8", "--checkpoint", str(tmp_path / "absent.pth"), "--output", str(output)])
    assert not list(tmp_path.glob(".teacher.partial-*")), "no staging directory left behind"
