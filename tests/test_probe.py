"""Linear probing of frozen features (catkd_jax/probe.py, `main.py --mode linear_probe`)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from catkd_jax import probe, training
from catkd_jax.data import ArraySource, create_source, reduce_training_set
from catkd_jax.models import create_model
from catkd_jax.models.layers import global_avg_pool
from conftest import REPO_ROOT, tiny_config
from catkd_jax import default_config as default

PROBE_LINE = re.compile(r"^linear probe top1 (\d+\.\d\d) \((\d+) test images, (\d+) features\) -> (\S+)$", re.M)


def gaussian_clusters(rng, size, means, scale=1.0):
    """`size` points around class `means [C, K]` (isotropic noise of `scale`), uniform labels."""
    labels = rng.integers(0, len(means), size)
    points = means[labels] + scale * rng.standard_normal((size, means.shape[1]))
    return points.astype(np.float32), labels.astype(np.int32)


def lda_predictions(train_x, train_y, test_x, num_classes):
    """Fisher's linear discriminant (pooled covariance, class priors), closed form in numpy."""
    means = np.stack([train_x[train_y == c].mean(axis=0) for c in range(num_classes)])
    centred = train_x - means[train_y]
    precision = np.linalg.inv(centred.T @ centred / (len(train_x) - num_classes))
    weights = means @ precision
    priors = np.log(np.bincount(train_y, minlength=num_classes) / len(train_y))
    bias = -0.5 * np.sum(weights * means, axis=1) + priors
    return np.argmax(test_x @ weights.T + bias, axis=1)


def probe_config(**probe_overrides):
    config = default.get_config()
    for name, value in probe_overrides.items():
        config.probe[name] = value
    return config


def test_default_recipe():
    config = default.get_config()
    assert (config.probe.epochs, config.probe.batch_size, config.probe.lr) == (40, 128, 0.1)
    assert tuple(config.probe.decay_epochs) == (10, 20, 30) and config.probe.decay_rate == 0.1
    assert (config.probe.momentum, config.probe.weight_decay) == (0.9, 0.0)
    assert (config.probe.data.source, config.probe.data.name, config.probe.data.image_size) == ("tfds", "stl10", 32)


def test_learning_rate_is_divided_by_ten_after_epochs_10_20_30():
    steps_per_epoch = 7
    schedule = probe.learning_rate_schedule(default.get_config().probe, steps_per_epoch)
    for epoch in range(1, 41):
        expected = 0.1 * 0.1 ** ((epoch - 1) // 10)  # 0.1, 0.01, 0.001, 0.0001
        for step in ((epoch - 1) * steps_per_epoch, epoch * steps_per_epoch - 1):
            assert float(schedule(step)) == pytest.approx(expected, rel=1e-6), (epoch, step)


def test_probe_matches_the_closed_form_classifier_on_gaussian_clusters():
    """Overlapping classes: SGD on the cross-entropy reaches what Fisher's LDA (near the Bayes
    rule for shared-covariance Gaussians) reaches; measured within 0.5 points on 4 seeds."""
    rng = np.random.default_rng(0)
    means = 0.5 * rng.standard_normal((5, 16))
    train_x, train_y = gaussian_clusters(rng, 2000, means)
    test_x, test_y = gaussian_clusters(rng, 4000, means)
    result = probe.fit_linear_probe(train_x, train_y, test_x, test_y, 5, default.get_config())
    reference = 100.0 * np.mean(lda_predictions(train_x, train_y, test_x, 5) == test_y)
    assert 60.0 < reference < 90.0  # neither trivial nor hopeless
    assert result["top1"] == pytest.approx(reference, abs=1.5)
    assert [record["lr"] for record in result["per_epoch"]] == pytest.approx(
        [0.1] * 10 + [0.01] * 10 + [0.001] * 10 + [0.0001] * 10, rel=1e-6
    )
    sizes = tuple(result[key] for key in ("num_train", "num_test", "num_features", "num_classes"))
    assert sizes == (2000, 4000, 16, 5)
    assert result["top1"] == result["per_epoch"][-1]["test_acc"]


def test_probe_separates_separable_clusters_completely():
    rng = np.random.default_rng(1)
    means = 5.0 * rng.standard_normal((4, 8))
    # 300 rows at batch 128: the last batch of each epoch holds 44.
    train_x, train_y = gaussian_clusters(rng, 300, means)
    test_x, test_y = gaussian_clusters(rng, 500, means)
    result = probe.fit_linear_probe(train_x, train_y, test_x, test_y, 4, probe_config(epochs=12))
    assert result["top1"] == 100.0
    assert result["per_epoch"][-1]["train_acc"] == 100.0


def test_probe_of_random_labels_is_at_chance():
    rng = np.random.default_rng(2)
    features = rng.standard_normal((5000, 32)).astype(np.float32)
    labels = rng.integers(0, 4, 5000).astype(np.int32)
    result = probe.fit_linear_probe(features[:1000], labels[:1000], features[1000:], labels[1000:], 4,
                                    probe_config(epochs=10))
    assert 21.0 < result["top1"] < 29.0  # chance is 25%; 4000 test labels: std 0.7 points


def test_probe_refuses_labels_outside_the_classes():
    features = np.zeros((4, 3), np.float32)
    with pytest.raises(ValueError, match="outside 0..1"):
        probe.fit_linear_probe(features, np.array([0, 1, 2, 0]), features, np.zeros(4, int), 2, default.get_config())


def test_extract_features_are_the_pooled_features_the_classifier_sees():
    model = create_model("resnet8", 10, jnp.float32, True)
    variables = training.initialize(model, jax.random.key(0), (32, 32, 3))
    # Running statistics away from (0, 1), so inference mode differs from training mode.
    variables = jax.tree_util.tree_map_with_path(
        lambda path, x: x + 0.3 if "mean" in jax.tree_util.keystr(path) else x, variables)
    images = np.random.default_rng(0).standard_normal((5, 32, 32, 3)).astype(np.float32)
    labels = np.arange(5, dtype=np.int32)
    padded = np.concatenate([images, np.zeros((3, 32, 32, 3), np.float32)])
    batches = [
        {"image": padded[:4], "label": labels[:4], "mask": np.ones(4, bool)},
        {"image": padded[4:], "label": np.array([4, 0, 0, 0], np.int32), "mask": np.array([True, False, False, False])},
    ]
    features, got_labels = probe.extract_features(model, variables, batches)
    assert features.shape == (5, 64) and features.dtype == np.float32
    np.testing.assert_array_equal(got_labels, labels)
    logits, feature_map = model.apply(variables, images, train=False)
    np.testing.assert_allclose(features, global_avg_pool(feature_map), rtol=1e-5, atol=1e-6)
    classifier = variables["params"]["classifier"]
    np.testing.assert_allclose(features @ classifier["kernel"] + classifier["bias"], logits, rtol=1e-4, atol=1e-5)
    # Batches without a mask are all examples; image_size resizes first.
    unmasked, _ = probe.extract_features(model, variables, [{"image": images, "label": labels}], image_size=16)
    small = jax.image.resize(images, (5, 16, 16, 3), "linear", antialias=True)
    np.testing.assert_allclose(unmasked, global_avg_pool(model.apply(variables, small, train=False)[1]),
                               rtol=1e-5, atol=1e-6)


def _train_split(source):
    batches = list(source.train_eval_batches())
    images = np.concatenate([batch["image"][batch["mask"]] for batch in batches])
    labels = np.concatenate([batch["label"][batch["mask"]] for batch in batches])
    return images, labels


def _by_content(images, labels):
    """Examples sorted by (label, pixel sum): an order that ignores batching and flips."""
    order = np.lexsort((images.sum(axis=(1, 2, 3)), labels))
    return images[order], labels[order]


@pytest.mark.parametrize("source_name", ["synthetic", "shapes"])
def test_train_eval_batches_are_the_training_examples_unaugmented(source_name):
    config = tiny_config(data__source=source_name, data__synthetic_train_size=48, eval_batch_size=32)
    source = create_source(config)
    images, labels = _train_split(source)
    assert len(labels) == source.num_train == 48
    # Epoch 1 of train_batches: every example once (48 = 3 batches of 16), shuffled; the shapes
    # source also flips some horizontally.
    epoch = list(source.train_batches(1))
    reference = (np.concatenate([b["image"] for b in epoch]), np.concatenate([b["label"] for b in epoch]))
    (images, labels), (reference_images, reference_labels) = _by_content(images, labels), _by_content(*reference)
    np.testing.assert_array_equal(labels, reference_labels)
    if source_name == "synthetic":  # no augmentation
        np.testing.assert_allclose(images, reference_images, rtol=1e-6)
    else:
        for image, other in zip(images, reference_images):
            assert np.array_equal(image, other) or np.array_equal(image, other[:, ::-1])
        mirrored = [not np.array_equal(a, b) for a, b in zip(images, reference_images)]
        assert any(mirrored)  # train_batches did flip some: the split above is un-augmented


def test_train_eval_batches_of_image_arrays_in_data_set_order():
    """The tfds and folder sources (`ArraySource`): un-augmented, in data-set order, reduced."""
    rng = np.random.default_rng(0)
    train_images = rng.integers(0, 256, (20, 8, 8, 3), np.uint8)
    train_labels = np.arange(20) % 3
    source = ArraySource(
        train_images, train_labels, train_images[:4], train_labels[:4], num_classes=3,
        mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3), batch_size=4, eval_batch_size=8, seed=0,
        reserved_rate=0.5,
    )
    images, labels = _train_split(source)
    kept = reduce_training_set(train_labels, 3, 0, 0.5)
    assert len(kept) == source.num_train < 20
    np.testing.assert_array_equal(labels, train_labels[kept])
    expected = (train_images[kept] / 255.0 - np.float32([0.5, 0.4, 0.3])) / np.float32([0.2, 0.25, 0.3])
    np.testing.assert_allclose(images, expected, rtol=1e-5, atol=1e-5)


def test_probe_data_section_and_its_errors(tmp_path):
    config = tiny_config(probe__data__source="synthetic", probe__data__name="cifar10")
    config.lock()
    source_config = probe.probe_source_config(config)
    assert source_config.data.source == "synthetic" and source_config.batch_size == config.probe.batch_size
    assert source_config.data.reserved_classes == 0 and config.data.source == "synthetic"
    config = tiny_config(probe__data__name="no_such_data")
    with pytest.raises(ValueError, match="config.probe.data.name='no_such_data'"):
        probe.run(config, tmp_path, tmp_path)
    (tmp_path / "runs" / "run_0").mkdir(parents=True)
    with pytest.raises(ValueError, match="several runs"):
        probe.load_frozen_network(config, tmp_path / "runs")
    # A probe data error names the probe's fields, the ones to fix.
    config = tiny_config(probe__data__source="npz", probe__data__dir=str(tmp_path / "absent.npz"))
    with pytest.raises(FileNotFoundError) as missing:
        probe.probe_source(config)
    assert str(missing.value).startswith(f"config.probe.data.dir='{tmp_path / 'absent.npz'}' is not a file; "
                                         "probe.data.source='npz' reads one .npz")


_PROBE_OVERRIDES = dict(
    probe__data__source="synthetic", probe__data__name="cifar10", probe__data__synthetic_train_size=96,
    probe__data__synthetic_test_size=40, probe__data__image_size=16, probe__epochs=3, probe__batch_size=32,
    probe__decay_epochs=(1, 2),
)

_CLI_SCRIPT = textwrap.dedent(
    """
    import sys
    sys.argv = ["main.py", "--config", {config!r}, "--workdir", {workdir!r}, "--mode", "linear_probe",
                "--checkpoint", {checkpoint!r}, "--config.eval_batch_size=16", *{flags!r}]
    import jax
    jax.config.update("jax_disable_most_optimizations", True)
    import runpy
    runpy.run_path({main!r}, run_name="__main__")
    """
)


def test_probe_of_a_trained_student_end_to_end_and_through_main(teacher_dir, tmp_path, capsys):
    student_dir = teacher_dir  # a tiny_config network: resnet8 trained on synthetic CIFAR-10-sized data
    config = tiny_config(**_PROBE_OVERRIDES)
    result = probe.run(config, student_dir, tmp_path / "probe")
    line = PROBE_LINE.search(capsys.readouterr().out)
    assert line, "no probe line printed"
    assert (float(line[1]), int(line[2]), int(line[3])) == (round(result["top1"], 2), 40, 64)
    assert line[4] == str(tmp_path / "probe" / probe.RESULT_FILE)
    written = json.loads((tmp_path / "probe" / probe.RESULT_FILE).read_text())
    assert written["top1"] == result["top1"] and 0.0 <= written["top1"] <= 100.0
    sizes = tuple(written[key] for key in ("num_train", "num_test", "num_features", "num_classes"))
    assert sizes == (96, 40, 64, 10)
    assert [record["epoch"] for record in written["per_epoch"]] == [1, 2, 3]
    assert [record["lr"] for record in written["per_epoch"]] == pytest.approx([0.1, 0.01, 0.001])
    assert written["arch"] == "resnet8" and written["data"]["image_size"] == 16
    assert written["recipe"]["decay_epochs"] == [1, 2] and "data" not in written["recipe"]

    flags = [f"--config.{name.replace('__', '.')}={value}" for name, value in _PROBE_OVERRIDES.items()
             if name != "probe__decay_epochs"] + ["--config.probe.decay_epochs=(1,2)"]
    script = _CLI_SCRIPT.format(
        config=str(REPO_ROOT / "configs" / "default.py"), workdir=str(tmp_path / "cli"),
        checkpoint=str(student_dir), flags=flags, main=str(REPO_ROOT / "main.py"))
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    completed = subprocess.run([sys.executable, "-c", script], env=env, cwd=REPO_ROOT, capture_output=True, text=True)
    assert completed.returncode == 0, completed.stderr[-3000:]
    line = PROBE_LINE.search(completed.stdout)
    assert line and (int(line[2]), int(line[3])) == (40, 64), completed.stdout
    cli = json.loads((tmp_path / "cli" / probe.RESULT_FILE).read_text())
    assert cli["top1"] == pytest.approx(result["top1"], abs=100 / 40 + 1e-9)  # one test image at most


def test_a_probe_of_a_trained_networks_features_is_well_above_chance(teacher_dir, tmp_path):
    # Synthetic CIFAR-10-like data of the network's own seed (the same class templates): its
    # pooled features carry the class. Chance is 10%, with a standard deviation of 2.1 points
    # over 200 test images; measured 38.5%. Labels misaligned with features would give chance.
    config = tiny_config(probe__data__source="synthetic", probe__data__name="cifar10", probe__data__image_size=32,
                         probe__data__synthetic_train_size=400, probe__data__synthetic_test_size=200,
                         probe__epochs=20, probe__decay_epochs=(15,), probe__batch_size=32)
    result = probe.run(config, teacher_dir, tmp_path)
    assert result["num_test"] == 200 and result["top1"] > 25.0


def test_probe_of_a_cifar_student_on_stl10_mock_data(teacher_dir, tmp_path, capsys):
    """The default probe data set (STL-10 from TFDS, resized to 32x32), under TFDS's mock data."""
    import tensorflow_datasets as tfds

    student_dir = teacher_dir  # a CIFAR-10-sized network
    config = tiny_config(probe__epochs=2, probe__decay_epochs=(1,), probe__batch_size=16)
    assert (config.probe.data.source, config.probe.data.name, config.probe.data.image_size) == ("tfds", "stl10", 32)
    with tfds.testing.mock_data(num_examples=48):
        result = probe.run(config, student_dir, tmp_path / "probe")
    assert (result["num_train"], result["num_test"], result["num_features"], result["num_classes"]) == (48, 48, 64, 10)
    assert 0.0 <= result["top1"] <= 100.0
    assert "linear probe top1" in capsys.readouterr().out
