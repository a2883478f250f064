"""Tests of catkd_jax.data: sources, determinism, augmentation, reduction, errors."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tarfile
import textwrap

import ml_collections
import numpy as np
import pytest

from catkd_jax import config_files, training
from catkd_jax.data import (ArraySource, DataSource, NumpyArraySource, augment, create_source, generated,
                            reduce_training_set, save_npz, trivial_augment)
from catkd_jax.data.cifar import load_tfds
from catkd_jax.data.folders import load_folder
from catkd_jax.data.npz import load_npz
from catkd_jax.errors import ConfigError, MissingInputError
from conftest import REPO_ROOT, read_metrics, shared_path

# The original recipe's constants, restated here so a typo in the module cannot hide.
MEAN = {"cifar100": (0.5071, 0.4867, 0.4408), "cifar10": (0.4914, 0.4822, 0.4465)}
STD = {"cifar100": (0.2675, 0.2565, 0.2761), "cifar10": (0.2470, 0.2435, 0.2616)}


def _config(**overrides) -> ml_collections.ConfigDict:
    """A small config; `data_*` keys override `config.data.*`."""
    data = dict(
        name="cifar100",
        source="synthetic",
        dir="",
        reserved_classes=0,
        reserved_rate=1.0,
        synthetic_train_size=96,
        synthetic_test_size=40,
    )
    top = dict(seed=0, batch_size=16, eval_batch_size=32)
    for key, value in overrides.items():
        if key.startswith("data_"):
            data[key[len("data_") :]] = value
        else:
            top[key] = value
    return ml_collections.ConfigDict(dict(top, data=data))


def _to_uint8(images: np.ndarray, name: str = "cifar100") -> np.ndarray:
    """Undoes `(x / 255 - mean) / std`; exact for images that started as uint8."""
    pixels = (images.astype(np.float64) * STD[name] + MEAN[name]) * 255.0
    return np.round(pixels).astype(np.uint8)


def _array_source(images, labels, test_images=None, source_class=ArraySource, **kwargs):
    """An `ArraySource` (or `source_class`) whose test set is its training set (or `test_images`,
    same labels)."""
    settings = dict(
        num_classes=int(np.max(labels)) + 1,
        mean=MEAN["cifar100"],
        std=STD["cifar100"],
        batch_size=16,
        eval_batch_size=32,
        seed=0,
        process_index=0,
        process_count=1,
    )
    settings.update(kwargs)
    test_images = images if test_images is None else test_images
    return source_class(images, labels, test_images, labels, **settings)


def _random_images(n: int, seed: int = 0) -> np.ndarray:
    # No zero pixel, so zero padding is told apart from image content.
    return np.random.default_rng(seed).integers(1, 256, (n, 32, 32, 3), dtype=np.uint8)


def _stack(batches, key):
    return np.concatenate([batch[key] for batch in batches])


def _crop_shift(image: np.ndarray, original: np.ndarray) -> tuple[np.ndarray, bool] | None:
    """`(shift [2], flipped)` if uint8 `image` is a window of `original` zero-padded by 4
    (mirrored if `flipped`), the shift counted from the unshifted window; else None."""
    padded = np.pad(original, [(4, 4), (4, 4), (0, 0)])
    windows = np.lib.stride_tricks.sliding_window_view(padded, (32, 32, 3))[:, :, 0]
    for flipped, candidate in ((False, image), (True, image[:, ::-1])):
        matches = np.argwhere(np.all(windows == candidate, axis=(2, 3, 4)))
        if len(matches):
            return matches[0] - 4, flipped
    return None


def _example_ids(batches, images: np.ndarray, labels: np.ndarray) -> list[int]:
    """The data-set index of each training example of `batches`: the one example of `images`
    `[N, 32, 32, 3]` (uint8) and `labels` `[N]` of its label that it is a crop of."""
    ids = []
    for image, label in zip(_to_uint8(_stack(batches, "image")), _stack(batches, "label")):
        (match,) = [index for index in np.flatnonzero(labels == label) if _crop_shift(image, images[index])]
        ids.append(int(match))
    return ids


def _write_folder(root, layout: dict[str, dict[str, list[int]]]) -> None:
    """PNG files `root/split/class/NNNN.png`, one per gray value listed (PNG is lossless)."""
    import tensorflow as tf

    for split, classes in layout.items():
        (root / split).mkdir(parents=True, exist_ok=True)
        for name, values in classes.items():
            folder = root / split / name
            folder.mkdir()
            for number, value in enumerate(values):
                image = np.full((32, 32, 3), value, np.uint8)
                tf.io.write_file(str(folder / f"{number:04d}.png"), tf.io.encode_png(image))


def test_tfds_source_batches_and_eval_counts_every_example_once():
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(num_examples=50):
        source = create_source(_config(data_source="tfds", eval_batch_size=16))
        mock_test = tfds.load("cifar100", split="test", as_supervised=True)
        test_images, test_labels = zip(*mock_test.as_numpy_iterator())
    assert (source.num_classes, source.num_train, source.num_eval) == (100, 50, 50)
    assert source.steps_per_epoch == 4  # 3 batches of 16, then one of the 2 images left
    assert source.class_names == [str(label) for label in range(100)]  # mock data has no names

    train = list(source.train_batches(1))
    assert len(train) == 4
    low = (0.0 - np.array(MEAN["cifar100"])) / STD["cifar100"]  # per channel, black pixels
    high = (1.0 - np.array(MEAN["cifar100"])) / STD["cifar100"]
    for batch, size in zip(train, [16, 16, 16, 2], strict=True):
        assert batch["image"].shape == (size, 32, 32, 3) and batch["image"].dtype == np.float32
        assert batch["label"].shape == (size,) and batch["label"].dtype == np.int32
        assert np.all((batch["label"] >= 0) & (batch["label"] < 100))
        assert np.all(batch["image"] >= low - 1e-5) and np.all(batch["image"] <= high + 1e-5)

    evals = list(source.eval_batches())
    assert len(evals) == 4 and all(batch["image"].shape == (16, 32, 32, 3) for batch in evals)
    assert all(batch["mask"].dtype == bool for batch in evals)
    mask = _stack(evals, "mask")
    assert mask.sum() == 50 and mask[:50].all()
    np.testing.assert_array_equal(_to_uint8(_stack(evals, "image")[mask]), np.stack(test_images))
    np.testing.assert_array_equal(_stack(evals, "label")[mask], test_labels)


def _ten_examples(kind: str, directory, **settings) -> tuple[DataSource, np.ndarray, np.ndarray]:
    """A source of `kind` holding 10 training examples, in batches of 4, with `settings`
    (`DataSource` arguments), and its training images (uint8) and labels in data-set order."""
    import tensorflow_datasets as tfds

    if kind == "arrays":
        images, labels = _random_images(10), np.arange(10) % 5
        return _array_source(images, labels, batch_size=4, **settings), images, labels
    config = _config(batch_size=4, eval_batch_size=4, data_source=kind, data_dir=str(directory),
                     **{f"data_{name}": value for name, value in settings.items()})
    if kind == "tfds":
        with tfds.testing.mock_data(num_examples=10):
            (images, labels, _, _), _ = load_tfds("cifar100", "")
            return create_source(config), images, labels
    if kind == "npz":
        config.data.dir = str(directory / "data.npz")
        if not (directory / "data.npz").exists():
            save_npz(directory / "data.npz", (_random_images(10), np.arange(10) % 5, _random_images(4, 1),
                                              np.arange(4)), [f"class_{k}" for k in range(5)])
    elif not (directory / "train").exists():  # a folder: flat images, each its own grey
        _write_folder(directory, {"train": {name: [10 * k + 10, 10 * k + 15] for k, name in enumerate("abcde")},
                                  "test": {name: [1] for name in "abcde"}})
    (images, labels, _, _), _ = (load_npz if kind == "npz" else load_folder)(config.data.dir)
    return create_source(config), images, labels


@pytest.mark.parametrize("kind", ["arrays", "npz", "tfds", "folder"])
def test_an_epoch_serves_every_training_example_once_its_last_batch_smaller(kind, tmp_path):
    source, images, labels = _ten_examples(kind, tmp_path)
    assert (source.steps_per_epoch, source.last_batch_size, source.unused_per_epoch) == (3, 2, 0)
    assert source.remainder_note() == ""
    for epoch in (1, 2):
        batches = list(source.train_batches(epoch))
        assert [len(batch["label"]) for batch in batches] == [4, 4, 2]
        assert sorted(_example_ids(batches, images, labels)) == list(range(10))


@pytest.mark.parametrize("kind", ["arrays", "npz"])  # batched by tf.data, by numpy
def test_drop_remainder_leaves_out_the_examples_after_the_last_full_batch(kind, tmp_path):
    dropped, images, labels = _ten_examples(kind, tmp_path, drop_remainder=True)
    assert (dropped.steps_per_epoch, dropped.last_batch_size, dropped.unused_per_epoch) == (2, 4, 2)
    batches = list(dropped.train_batches(1))
    assert [len(batch["label"]) for batch in batches] == [4, 4]
    assert len(set(_example_ids(batches, images, labels))) == 8
    assert dropped.remainder_note() == (
        "2 of the 10 training images sit out each epoch (the last of its shuffled order, different ones each "
        "epoch): config.data.drop_remainder is set, so every batch holds 4.")


def test_the_last_batch_is_cut_to_a_multiple_of_the_devices_and_split_between_the_processes():
    images, labels = _random_images(54), np.arange(54)  # 6 batches of 8, then 6 examples
    source = lambda **settings: _array_source(images, labels, batch_size=8, source_class=NumpyArraySource,
                                              **settings)
    assert source(device_count=1).last_batch_size == 6 and source(device_count=1).remainder_note() == ""
    whole, halves = source(device_count=4), [source(process_index=k, process_count=2, device_count=4) for k in (0, 1)]
    assert (whole.steps_per_epoch, whole.last_batch_size, whole.unused_per_epoch) == (7, 4, 2)
    assert whole.remainder_note() == (
        "2 of the 54 training images sit out each epoch (the last of its shuffled order, different ones each epoch): "
        "the 6 images after the last full batch make a last batch of 4, a multiple of the 4 devices it is split over.")
    left_out = []
    for epoch in (1, 2):
        batches = list(whole.train_batches(epoch))
        assert [len(batch["label"]) for batch in batches] == [8] * 6 + [4]
        pairs = zip(*(half.train_batches(epoch) for half in halves), strict=True)
        for full, (a, b) in zip(batches, pairs, strict=True):
            assert len(a["label"]) == len(b["label"]) == len(full["label"]) // 2
            for key in full:
                np.testing.assert_array_equal(np.concatenate([a[key], b[key]]), full[key])
        seen = _stack(batches, "label")
        assert len(set(seen)) == 52
        left_out.append(set(range(54)) - set(seen))
    assert left_out[0] != left_out[1], "each epoch leaves out other examples"

    # Fewer examples left than devices: no last batch.
    few = _array_source(images[:50], labels[:50], batch_size=8, source_class=NumpyArraySource, device_count=4)
    assert (few.steps_per_epoch, few.last_batch_size, few.unused_per_epoch) == (6, 8, 2)
    assert len(list(few.train_batches(1))) == 6
    assert few.remainder_note().endswith("the 2 images after the last full batch are fewer than the 4 devices a "
                                         "batch is split over.")


def test_same_seed_and_epoch_give_identical_batches():
    images, labels = _random_images(64), np.arange(64)

    def batches(seed, epoch):
        return list(_array_source(images, labels, seed=seed).train_batches(epoch))

    first, again = batches(0, 1), batches(0, 1)
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a["image"], b["image"])
        np.testing.assert_array_equal(a["label"], b["label"])
    order = _stack(first, "label")
    assert sorted(order) == list(range(64)), "one epoch visits every example once"
    assert not np.array_equal(order, _stack(batches(0, 2), "label"))
    assert not np.array_equal(order, _stack(batches(1, 1), "label"))


@pytest.mark.parametrize("source_class", [ArraySource, NumpyArraySource], ids=["tf.data", "numpy"])
def test_augmentation_is_a_zero_padded_shift_and_a_fair_flip_and_eval_is_untouched(source_class):
    n = 256
    images, labels = _random_images(n), np.arange(n)
    source = _array_source(images, labels, batch_size=64, source_class=source_class)
    batches = list(source.train_batches(1))
    shifts, flips = [], []
    for image, label in zip(_to_uint8(_stack(batches, "image")), _stack(batches, "label")):
        found = _crop_shift(image, images[label])
        assert found, f"example {label} is not a zero-padded shift (flipped or not) of its image"
        shifts.append(found[0])
        flips.append(found[1])
    shifts = np.array(shifts)
    assert np.abs(shifts).max() == 4 and len(np.unique(shifts[:, 0])) == 9
    assert 0.35 < np.mean(flips) < 0.65

    evals = list(source.eval_batches())
    np.testing.assert_array_equal(_to_uint8(_stack(evals, "image")), images)
    np.testing.assert_array_equal(_stack(evals, "label"), labels)


def test_an_npz_file_round_trips_and_its_source_evaluates_exactly_like_the_tfdata_one(tmp_path):
    images, labels = _random_images(40), np.arange(40) % 10
    names = [f"class_{k}" for k in range(10)]
    save_npz(tmp_path / "data.npz", (images, labels, images[:24], labels[:24]), names)
    config = _config(data_source="npz", data_dir=str(tmp_path / "data.npz"), data_name="cifar10", batch_size=8,
                     eval_batch_size=16)
    source = create_source(config, process_index=0, process_count=1)
    assert (source.class_names, source.num_train, source.num_eval) == (names, 40, 24)
    reference = ArraySource(images, labels, images[:24], labels[:24], num_classes=10, mean=MEAN["cifar10"],
                            std=STD["cifar10"], batch_size=8, eval_batch_size=16, seed=0, process_index=0,
                            process_count=1)
    for ours, theirs in zip(source.eval_batches(), reference.eval_batches(), strict=True):
        for key in theirs:
            np.testing.assert_array_equal(ours[key], theirs[key])

    with pytest.raises(MissingInputError, match="config.data.dir='/nonexistent/cifar.npz' is not a file; "
                                                "data.source='npz' reads one .npz"):
        create_source(_config(data_source="npz", data_dir="/nonexistent/cifar.npz", data_name="cifar10"))
    np.savez(tmp_path / "partial.npz", train_images=images)
    with pytest.raises(ValueError, match="partial.npz lacks the arrays train_labels, test_images, test_labels, "
                                         "class_names"):
        create_source(_config(data_source="npz", data_dir=str(tmp_path / "partial.npz"), data_name="cifar10"))


def test_trivial_augment_applies_one_of_its_ops_to_each_cropped_and_flipped_image():
    """Each training image is its crop-and-flip image (the same seed's, without TrivialAugment)
    transformed by exactly one TrivialAugmentWide op and magnitude; reproducible per epoch."""
    n = 32
    images, labels = _random_images(n), np.arange(n)
    plain = _stack(list(_array_source(images, labels).train_batches(1)), "image")
    source = _array_source(images, labels, trivial_augment=True)
    augmented = _stack(list(source.train_batches(1)), "image")
    np.testing.assert_array_equal(_stack(list(source.train_batches(1)), "image"), augmented)
    assert not np.array_equal(_stack(list(source.train_batches(2)), "image"), augmented)
    candidates = [(op, sign * trivial_augment.magnitude(op, index)) for op in trivial_augment.OPS
                  for index in range(trivial_augment.NUM_BINS)
                  for sign in ((1, -1) if op in trivial_augment.SIGNED else (1,))]
    applied, unchanged = set(), 0
    for before, after in zip(_to_uint8(plain), _to_uint8(augmented)):
        ops = {op for op, magnitude in candidates
               if np.array_equal(trivial_augment.apply_op(before, op, magnitude), after)}
        assert ops, "an image is not its crop-and-flip image under any TrivialAugmentWide op"
        applied |= ops
        unchanged += np.array_equal(before, after)
    assert len(applied) >= 6 and unchanged < n / 4  # many different ops were drawn, most change the image


def test_the_strong_teacher_config_trains_one_epoch_with_trivial_augment(tmp_path):
    """configs/cifar100_teacher_resnet32x4_trivial_augment.py (Table 4's teacher) on TFDS mock data,
    with a resnet8 in place of its resnet32x4 (the model tests cover that architecture)."""
    import tensorflow_datasets as tfds

    config = config_files.load_config(REPO_ROOT / "configs" / "cifar100_teacher_resnet32x4_trivial_augment.py")
    assert (config.data.augment, config.student.arch) == ("trivial_augment", "resnet32x4")
    config = config_files.with_values(config, {"batch_size": 16, "eval_batch_size": 16, "num_epochs": 1,
                                               "student.arch": "resnet8"})
    with tfds.testing.mock_data(num_examples=32):
        training.train_and_evaluate(config, tmp_path)
    (record,) = read_metrics(tmp_path)
    assert np.isfinite(record["train_loss"]) and json.loads((tmp_path / "config.json").read_text())["data"][
        "augment"] == "trivial_augment"


def test_reduce_training_set_keeps_the_first_examples_of_the_first_classes():
    labels = np.array([2, 0, 1, 0, 2, 1, 0, 0, 1, 2, 0, 1])
    # Class 0 sits at 1, 3, 6, 7, 10; class 1 at 2, 5, 8, 11; class 2 at 0, 4, 9.
    np.testing.assert_array_equal(
        reduce_training_set(labels, 3, reserved_classes=2, reserved_rate=0.5),
        [1, 2, 3, 5],
    )
    np.testing.assert_array_equal(
        reduce_training_set(labels, 3, reserved_classes=0, reserved_rate=0.8),
        [0, 1, 2, 3, 4, 5, 6, 7, 8],  # int(0.8 * count): 4 of class 0, 3 of class 1, 2 of class 2
    )
    np.testing.assert_array_equal(reduce_training_set(labels, 3), np.arange(12))


def test_folder_source_reduces_training_data_but_not_the_test_set(tmp_path):
    ids = iter(range(10, 250, 10))  # each training image's gray value names it
    train = {name: [next(ids) for _ in range(6)] for name in ("a", "b", "c")}
    _write_folder(tmp_path, {"train": train, "test": {"a": [1], "b": [2, 3], "c": [4]}})
    config = _config(
        data_source="folder",
        data_dir=str(tmp_path),
        data_reserved_classes=2,
        data_reserved_rate=0.5,
        batch_size=3,
        eval_batch_size=3,
    )
    source = create_source(config)
    assert (source.num_classes, source.num_train, source.num_eval) == (3, 6, 4)
    assert source.class_names == ["a", "b", "c"]
    seen = {}
    for batch in source.train_batches(1):
        # A shift of at most 4 pixels keeps the centre inside the original image.
        for image, label in zip(_to_uint8(batch["image"]), batch["label"]):
            seen[int(image[16, 16, 0])] = int(label)
    assert seen == {value: 0 for value in train["a"][:3]} | {value: 1 for value in train["b"][:3]}
    evals = list(source.eval_batches())
    mask = _stack(evals, "mask")
    np.testing.assert_array_equal(_stack(evals, "label")[mask], [0, 1, 1, 2])
    np.testing.assert_array_equal(_to_uint8(_stack(evals, "image")[mask])[:, 0, 0, 0], [1, 2, 3, 4])


def test_folder_source_reads_real_cifar10_jpegs(tmp_path):
    import tensorflow as tf

    archive = shared_path("data/cifar10-jpeg.tar.gz")
    wanted = {"train": {"0000.jpg", "0001.jpg", "0002.jpg"}, "test": {"0000.jpg", "0001.jpg"}}
    raw = {}
    with tarfile.open(archive) as tar:
        for member in tar:
            parts = member.name.split("/")  # cifar10-jpeg/<split>/<class>/<file>
            if member.isfile() and len(parts) == 4 and parts[3] in wanted.get(parts[1], ()):
                raw[member.name] = tar.extractfile(member).read()
    for name, content in raw.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(content)

    source = create_source(
        _config(
            data_name="cifar10",
            data_source="folder",
            data_dir=str(tmp_path / "cifar10-jpeg"),
            batch_size=10,
            eval_batch_size=8,
        )
    )
    assert (source.num_classes, source.num_train, source.num_eval) == (10, 30, 20)
    assert source.class_names[:3] == ["airplane", "automobile", "bird"]
    evals = list(source.eval_batches())
    mask = _stack(evals, "mask")
    # Sorted class folders: airplane=0, automobile=1, ..., truck=9, as in CIFAR-10.
    np.testing.assert_array_equal(_stack(evals, "label")[mask], np.repeat(np.arange(10), 2))
    expected = tf.io.decode_jpeg(raw["cifar10-jpeg/test/bird/0001.jpg"]).numpy()
    normalised = (expected / 255.0 - MEAN["cifar10"]) / STD["cifar10"]
    np.testing.assert_allclose(_stack(evals, "image")[mask][5], normalised, atol=1e-5)
    np.testing.assert_array_equal(source.display_images(_stack(evals, "image")[mask][5]), expected)
    batch = next(source.train_batches(1))
    assert batch["image"].shape == (10, 32, 32, 3) and set(batch["label"]) <= set(range(10))


@pytest.mark.parametrize("source", ["synthetic", "shapes", "npz"])
def test_numpy_sources_work_without_tensorflow(source, tmp_path):
    augment = "trivial_augment" if source == "npz" else "crop_flip"
    save_npz(tmp_path / "data.npz", (_random_images(20), np.arange(20) % 10, _random_images(10, 1), np.arange(10)),
             [f"class_{k}" for k in range(10)])
    script = textwrap.dedent(
        f"""
        import sys
        sys.modules["tensorflow"] = None  # any import of it now fails
        sys.modules["tensorflow_datasets"] = None
        import ml_collections
        from catkd_jax.data import create_source
        config = ml_collections.ConfigDict(dict(seed=3, batch_size=8, eval_batch_size=8, data=dict(
            name="cifar10", source="{source}", dir="{tmp_path / 'data.npz'}", reserved_classes=0, reserved_rate=1.0,
            synthetic_train_size=20, synthetic_test_size=10, augment="{augment}")))
        source = create_source(config)
        assert [len(batch["label"]) for batch in source.train_batches(1)] == [8, 8, 4]
        assert sum(batch["mask"].sum() for batch in source.eval_batches()) == 10
        print("ok")
        """
    )
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), JAX_PLATFORMS="cpu")
    result = subprocess.run(
        [sys.executable, "-c", script], env=env, cwd=REPO_ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-3000:]


def test_synthetic_source_is_deterministic_and_learnable():
    config = _config(
        data_name="cifar10", data_synthetic_train_size=200, data_synthetic_test_size=50
    )
    source = create_source(config)
    assert (source.num_classes, source.num_train, source.num_eval) == (10, 200, 50)
    assert source.class_names == [f"class_{label}" for label in range(10)]
    train = list(source.train_batches(1))
    assert len(train) == source.steps_per_epoch == 13  # 12 batches of 16, then one of the 8 left
    assert train[0]["image"].shape == (16, 32, 32, 3) and train[0]["image"].dtype == np.float32
    assert train[0]["label"].dtype == np.int32
    again = next(create_source(config).train_batches(1))
    np.testing.assert_array_equal(train[0]["image"], again["image"])
    assert not np.array_equal(
        _stack(train, "label"), _stack(source.train_batches(2), "label")
    ), "each epoch has its own order"

    # A nearest-class-mean classifier fitted on one epoch beats chance (10%) by far.
    images, labels = _stack(train, "image").reshape(200, -1), _stack(train, "label")
    means = np.stack([images[labels == c].mean(axis=0) for c in range(10)])
    evals = list(source.eval_batches())
    mask = _stack(evals, "mask")
    assert mask.sum() == 50 and evals[-1]["mask"].dtype == bool
    test = _stack(evals, "image")[mask].reshape(50, -1)
    predicted = np.argmin(((test[:, None] - means[None]) ** 2).sum(-1), axis=1)
    assert np.mean(predicted == _stack(evals, "label")[mask]) > 0.8


def _shapes_config(**overrides) -> ml_collections.ConfigDict:
    return _config(data_source="shapes", **overrides)


def _assert_tight(masks: np.ndarray, boxes: np.ndarray) -> None:
    """Every True pixel of `masks [N, H, W]` lies in its `[y0, x0, y1, x1]` box of `boxes [N, 4]`
    (end-exclusive), and some True pixel lies on each of the box's four edges."""
    n, height, width = masks.shape
    y0, x0, y1, x1 = boxes.T
    assert np.all((0 <= y0) & (y0 < y1) & (y1 <= height) & (0 <= x0) & (x0 < x1) & (x1 <= width))
    rows, cols = np.arange(height)[:, None], np.arange(width)
    in_box = (rows >= y0[:, None, None]) & (rows < y1[:, None, None])
    in_box = in_box & (cols >= x0[:, None, None]) & (cols < x1[:, None, None])
    assert not np.any(masks & ~in_box), "object pixels outside the box"
    i = np.arange(n)
    for edge in (masks[i, y0], masks[i, y1 - 1], masks[i, :, x0], masks[i, :, x1 - 1]):
        assert np.all(edge.any(axis=1)), "a box edge without object pixels"


def test_shapes_source_is_deterministic_balanced_and_named():
    # data.name is ignored by this source, even an unknown one.
    config = _shapes_config(
        data_name="imagenet", data_synthetic_train_size=203, data_synthetic_test_size=52
    )
    source = create_source(config)
    assert source.class_names == ["disc", "square", "triangle", "cross", "ring"]
    assert (source.num_classes, source.num_train, source.num_eval) == (5, 203, 52)
    assert source.image_shape == (32, 32, 3) and source.steps_per_epoch == 13

    evals, train = list(source.eval_batches()), next(source.train_batches(1))
    assert train["image"].dtype == np.float32 and train["image"].shape == (16, 32, 32, 3)
    assert train["label"].dtype == np.int32 and train["box"].dtype == np.int32
    assert train["box"].shape == (16, 4) and evals[0]["box"].shape == (32, 4)
    assert evals[0]["mask"].dtype == bool
    same = create_source(config)
    for a, b in zip(evals, same.eval_batches(), strict=True):
        for key in ("image", "label", "box", "mask"):
            np.testing.assert_array_equal(a[key], b[key])
    for key in ("image", "label", "box"):
        np.testing.assert_array_equal(train[key], next(same.train_batches(1))[key])
    other = next(create_source(_shapes_config(seed=1)).eval_batches())
    assert not np.array_equal(other["image"], evals[0]["image"])
    assert not np.array_equal(other["box"], evals[0]["box"])

    # The batches serve the generated splits; train and test are independent draws.
    mask = _stack(evals, "mask")
    test_images, test_labels, _, test_boxes = generated.shapes_split(0, 1, 52)
    np.testing.assert_array_equal(source.display_images(_stack(evals, "image")[mask]), test_images)
    np.testing.assert_array_equal(_stack(evals, "label")[mask], test_labels)
    np.testing.assert_array_equal(_stack(evals, "box")[mask], test_boxes)
    train_images, train_labels = generated.shapes_split(0, 0, 203)[:2]
    assert not np.array_equal(train_images[:52], test_images)
    for labels in (train_labels, test_labels):
        counts = np.bincount(labels, minlength=5)
        assert counts.max() - counts.min() <= 1 and len(counts) == 5
    assert not np.array_equal(train_labels[:52], test_labels), "labels are shuffled per split"


def test_shapes_boxes_are_tight_around_objects_of_their_class():
    images, labels, masks, boxes = generated.shapes_split(0, 0, 500)
    assert boxes.dtype == np.int32 and boxes.shape == (500, 4) and masks.shape == (500, 32, 32)
    _assert_tight(masks, boxes)
    y0, x0, y1, x1 = boxes.T
    height, width = y1 - y0, x1 - x0
    np.testing.assert_array_equal(height, width)
    assert set(height) == set(range(10, 19)), "every side in SHAPES_SIDES occurs"
    for image, mask in zip(images, masks):
        colours = image[mask]
        assert np.all(colours == colours[0]), "the object is one flat colour, exactly its mask"

    n = np.arange(500)
    corners = np.stack(
        [masks[n, y0, x0], masks[n, y0, x1 - 1], masks[n, y1 - 1, x0], masks[n, y1 - 1, x1 - 1]],
        axis=1,
    )
    centre = masks[n, (y0 + y1) // 2, (x0 + x1) // 2]
    fill = masks.sum(axis=(1, 2)) / (height * width)
    expected = {  # corners (top-left, top-right, bottom-left, bottom-right), centre, box fill
        "disc": ([0, 0, 0, 0], 1, (0.7, 0.9)),
        "square": ([1, 1, 1, 1], 1, (1.0, 1.0)),
        "triangle": ([0, 0, 1, 1], 1, (0.4, 0.65)),
        "cross": ([0, 0, 0, 0], 1, (0.45, 0.65)),
        "ring": ([0, 0, 0, 0], 0, (0.4, 0.7)),
    }
    for label, (corner, middle, (low, high)) in enumerate(expected.values()):
        members = labels == label
        assert np.all(corners[members] == np.array(corner, bool)), label
        assert np.all(centre[members] == bool(middle)), label
        assert low <= fill[members].min() and fill[members].max() <= high, label


def test_shapes_objects_contrast_with_the_background_around_them():
    images, _, masks, boxes = generated.shapes_split(0, 1, 500)
    # The background around an object: its box grown by 3 pixels a side, less the object.
    y0, x0, y1, x1 = (boxes.T + np.array([-3, -3, 3, 3])[:, None])[:, :, None, None]
    rows, cols = np.arange(32)[:, None], np.arange(32)
    around = (rows >= y0) & (rows < y1) & (cols >= x0) & (cols < x1) & ~masks
    pixels = images.astype(np.float64)
    inside = (pixels * masks[..., None]).sum((1, 2)) / masks.sum((1, 2))[:, None]
    outside = (pixels * around[..., None]).sum((1, 2)) / around.sum((1, 2))[:, None]
    contrast = np.linalg.norm(inside - outside, axis=1)  # RGB distance on the 0..255 scale
    assert contrast.min() > 80, np.argmin(contrast)


def test_shapes_training_flips_images_with_their_boxes_and_eval_does_not():
    source = create_source(_shapes_config(data_synthetic_train_size=64))
    images, labels, masks, _ = generated.shapes_split(0, 0, 64)
    index = {image.tobytes(): i for i, image in enumerate(images)}
    flipped = {}
    for epoch in (1, 2):
        for batch in source.train_batches(epoch):
            pixels = source.display_images(batch["image"])
            for image, label, box in zip(pixels, batch["label"], batch["box"], strict=True):
                flip = image.tobytes() not in index
                i = index[image[:, ::-1].tobytes() if flip else image.tobytes()]
                mask = masks[i][:, ::-1] if flip else masks[i]
                _assert_tight(mask[None], box[None])
                assert label == labels[i]
                flipped[epoch, i] = flip
    assert len(flipped) == 128, "each epoch visits every example once"
    assert 0.3 < np.mean(list(flipped.values())) < 0.7
    assert any(flipped[1, i] != flipped[2, i] for i in range(64)), "flips change by epoch"

    test_images = generated.shapes_split(0, 1, 40)[0]
    evals = list(source.eval_batches())
    np.testing.assert_array_equal(
        source.display_images(_stack(evals, "image")[_stack(evals, "mask")]), test_images
    )


def _arrays_in_process(index: int, count: int) -> DataSource:
    return _array_source(
        _random_images(50),
        np.arange(50),
        _random_images(50, seed=1),
        batch_size=8,
        eval_batch_size=12,
        process_index=index,
        process_count=count,
    )


def _npz_arrays_in_process(index: int, count: int) -> DataSource:
    """`_arrays_in_process`'s arrays through the numpy path, TrivialAugment included."""
    return NumpyArraySource(_random_images(50), np.arange(50), _random_images(50, seed=1), np.arange(50),
                            num_classes=50, mean=MEAN["cifar100"], std=STD["cifar100"], trivial_augment=True,
                            batch_size=8, eval_batch_size=12, seed=0, process_index=index, process_count=count)


def _synthetic_in_process(index: int, count: int) -> DataSource:
    config = _config(
        batch_size=8, eval_batch_size=12, data_synthetic_train_size=50, data_synthetic_test_size=50
    )
    return create_source(config, process_index=index, process_count=count)


def _shapes_in_process(index: int, count: int) -> DataSource:
    config = _config(
        batch_size=8,
        eval_batch_size=12,
        data_source="shapes",
        data_synthetic_train_size=50,
        data_synthetic_test_size=50,
    )
    return create_source(config, process_index=index, process_count=count)


@pytest.mark.parametrize(
    "make",
    [_arrays_in_process, _npz_arrays_in_process, _synthetic_in_process, _shapes_in_process],
    ids=["arrays", "npz", "synthetic", "shapes"],
)
def test_two_processes_partition_each_global_batch(make):
    whole, first, second = make(0, 1), make(0, 2), make(1, 2)
    global_batches = list(whole.train_batches(3))
    halves = zip(first.train_batches(3), second.train_batches(3), strict=True)
    # 50 training examples: 6 global batches of 8, then one of the 2 left, one per process.
    for full, (a, b), size in zip(global_batches, halves, [4] * 6 + [1], strict=True):
        assert a["image"].shape == b["image"].shape == (size, 32, 32, 3)
        assert a.keys() == full.keys()
        for key in full:
            np.testing.assert_array_equal(np.concatenate([a[key], b[key]]), full[key])

    # 50 test examples in global batches of 12: 5 batches, the last with 2 real examples.
    evals = [list(first.eval_batches()), list(second.eval_batches())]
    assert len(evals[0]) == len(evals[1]) == 5
    assert sum(batch["mask"].sum() for split in evals for batch in split) == 50
    for full, a, b in zip(whole.eval_batches(), *evals, strict=True):
        for key in full:
            np.testing.assert_array_equal(np.concatenate([a[key], b[key]]), full[key])
    assert evals[1][-1]["mask"].sum() == 0, "the second process pads its last batch entirely"


def _training_split(kind: str, source: DataSource) -> dict[str, np.ndarray]:
    """The 50 training examples the `_*_in_process` sources hold, in data-set order, as stored
    or generated: uint8 pixels (the synthetic source's float examples), labels, boxes."""
    if kind in ("arrays", "npz"):
        return {"image": _random_images(50), "label": np.arange(50)}
    if kind == "shapes":
        images, labels, _, boxes = generated.shapes_split(0, 0, 50)
        return {"image": images, "label": labels, "box": boxes}
    images, labels = source.examples(True, np.arange(50))
    return {"image": images, "label": labels}


@pytest.mark.parametrize(
    "make",
    [_arrays_in_process, _npz_arrays_in_process, _synthetic_in_process, _shapes_in_process],
    ids=["arrays", "npz", "synthetic", "shapes"],
)
def test_train_eval_batches_are_the_training_split_unaugmented_in_order(make, request):
    kind = request.node.callspec.id
    whole, first, second = make(0, 1), make(0, 2), make(1, 2)
    batches = list(whole.train_eval_batches())
    # 50 training examples in global eval batches of 12: 5 batches, the last with 2 real ones.
    assert len(batches) == 5
    reference = next(whole.eval_batches())
    for batch in batches:
        assert batch.keys() == reference.keys()
        for key in batch:
            assert batch[key].dtype == reference[key].dtype
            assert batch[key].shape == reference[key].shape
    mask = _stack(batches, "mask")
    assert mask[:50].all() and not mask[50:].any(), "the padding of the last batch is masked"

    expected = _training_split(kind, whole)
    images = _stack(batches, "image")[mask]
    if kind == "synthetic":  # no pixels behind these examples
        np.testing.assert_allclose(images, expected["image"], rtol=1e-6, atol=1e-6)
        # The same examples as training reads (un-augmented there too), in another order.
        for batch in whole.train_batches(1):
            for image, label in zip(batch["image"], batch["label"]):
                (match,) = np.flatnonzero(np.all(np.isclose(images, image, atol=1e-6), (1, 2, 3)))
                assert expected["label"][match] == label
    else:  # exactly the stored pixels: neither shifted nor flipped
        np.testing.assert_array_equal(whole.display_images(images), expected["image"])
    for key in expected.keys() - {"image"}:
        np.testing.assert_array_equal(_stack(batches, key)[mask], expected[key])

    # Two processes: the same number of batches, each global batch split into two halves.
    halves = [list(first.train_eval_batches()), list(second.train_eval_batches())]
    assert len(halves[0]) == len(halves[1]) == 5
    assert sum(batch["mask"].sum() for half in halves for batch in half) == 50
    for full, a, b in zip(batches, *halves, strict=True):
        assert a["image"].shape[0] == b["image"].shape[0] == 6
        for key in full:
            np.testing.assert_array_equal(np.concatenate([a[key], b[key]]), full[key])
    assert halves[1][-1]["mask"].sum() == 0, "the second process pads its last batch entirely"


def test_stl10_from_tfds_has_ten_classes_and_its_own_normalisation():
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(num_examples=10):
        source = create_source(
            _config(data_source="tfds", data_name="stl10", batch_size=4, eval_batch_size=4)
        )
        mock_train = tfds.load("stl10", split="train", as_supervised=True)
        train_images, train_labels = map(np.stack, zip(*mock_train.as_numpy_iterator()))
    assert (source.num_classes, source.num_train, source.num_eval) == (10, 10, 10)
    assert len(source.class_names) == 10 and source.image_shape == (96, 96, 3)
    assert source.mean == (0.4467, 0.4398, 0.4066) and source.std == (0.2603, 0.2566, 0.2713)
    assert next(source.train_batches(1))["image"].shape == (4, 96, 96, 3)
    batches = list(source.train_eval_batches())
    mask = _stack(batches, "mask")
    pixels = (_stack(batches, "image")[mask] * source.std + source.mean) * 255.0
    np.testing.assert_array_equal(np.round(pixels).astype(np.uint8), train_images)
    np.testing.assert_array_equal(_stack(batches, "label")[mask], train_labels)


def test_missing_tfds_data_says_where_it_looked_and_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError) as error:
        create_source(_config(data_source="tfds", data_dir=str(tmp_path)))
    message = str(error.value)
    for part in ("'cifar100'", str(tmp_path), "tfds build cifar100 --data_dir DIR",
                 "--config.data.dir=DIR", "--config.data.source=folder"):
        assert part in message


@pytest.mark.parametrize(
    "overrides, process_count, match",
    [
        (dict(data_name="imagenet"), 1, "config.data.name='imagenet' is unknown"),
        (dict(data_source="lmdb"), 1, "config.data.source='lmdb' is unknown"),
        (dict(batch_size=15), 2, "config.batch_size=15 is not divisible by the 2 processes"),
        (dict(eval_batch_size=33), 2, "config.eval_batch_size=33 is not divisible"),
        (dict(batch_size=0), 1, "config.batch_size must be a positive integer"),
        (dict(data_reserved_classes=101), 1, "config.data.reserved_classes=101 is outside 0..100"),
        (dict(data_reserved_rate=0.0), 1, r"config.data.reserved_rate=0.0 is outside \(0, 1\]"),
        (dict(data_reserved_rate=1.5), 1, r"config.data.reserved_rate=1.5 is outside \(0, 1\]"),
        (dict(data_reserved_classes=2), 1, "fewer than one batch of config.batch_size=16"),
        (dict(data_synthetic_test_size=0), 1, "config.data.synthetic_test_size must be a positive"),
        (dict(data_source="folder"), 1, "config.data.dir is empty"),
        (dict(data_source="shapes", data_reserved_classes=6), 1, "reserved_classes=6 is outside 0..5"),
        (dict(data_source="shapes", data_synthetic_train_size=0), 1, "synthetic_train_size must be"),
        (dict(data_augment="autoaugment"), 1, "config.data.augment='autoaugment' is unknown; use one of crop_flip"),
        (dict(data_augment="trivial_augment"), 1, "'trivial_augment' is for the in-memory CIFAR-style sources"),
    ],
)
def test_invalid_configs_are_refused(overrides, process_count, match):
    with pytest.raises(ValueError, match=match):
        create_source(
            _config(**overrides), process_index=0, process_count=process_count
        )


def test_epochs_count_from_one():
    source = create_source(_config())
    with pytest.raises(ValueError, match="epoch must be an integer >= 1"):
        source.train_batches(0)


@pytest.mark.parametrize(
    "layout, match",
    [
        ({"test": {"a": [1]}}, "has no train/ folder"),
        ({"train": {"a": [1]}}, "has no test/ folder"),
        ({"train": {}, "test": {}}, "has no class folders"),
        ({"train": {"a": [1], "b": []}, "test": {"a": [1], "b": [1]}}, "b holds no image files"),
        ({"train": {"a": [1]}, "test": {"b": [1]}}, "differ from those"),
    ],
)
def test_malformed_folders_are_refused(tmp_path, layout, match):
    _write_folder(tmp_path, layout)
    with pytest.raises(ValueError, match=match):
        create_source(_config(data_source="folder", data_dir=str(tmp_path)))


@pytest.mark.parametrize("problem", ["undecodable", "other size"])
def test_bad_image_files_are_named(tmp_path, problem):
    _write_folder(tmp_path, {"train": {"a": [1, 2]}, "test": {"a": [3]}})
    bad = tmp_path / "train" / "a" / "0001.png"
    if problem == "undecodable":
        bad.write_bytes(b"not an image")
    else:
        import tensorflow as tf

        tf.io.write_file(str(bad), tf.io.encode_png(np.zeros((16, 16, 3), np.uint8)))
    with pytest.raises(ValueError, match=re.escape(str(bad))) as refused:
        create_source(_config(data_source="folder", data_dir=str(tmp_path)))
    if problem == "other size":
        assert str(refused.value) == (f"{bad} is 16x16 pixels but {tmp_path / 'train' / 'a' / '0000.png'} is 32x32; "
                                      "all images of a folder source must have one size")


# --- ImageNet --------------------------------------------------------------------------------

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
WNIDS = ("n01440764", "n01443537", "n01484850")  # the first three of TFDS's imagenet2012 labels


def _jpeg(pixels: np.ndarray) -> bytes:
    import tensorflow as tf

    return tf.io.encode_jpeg(pixels, quality=95).numpy()


def _noise(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Smooth random colours (JPEG keeps them, so crops of different windows differ)."""
    coarse = rng.integers(0, 256, (height // 8 + 1, width // 8 + 1, 3), dtype=np.uint8)
    return np.ascontiguousarray(coarse.repeat(8, axis=0).repeat(8, axis=1)[:height, :width])


def _imagenet_config(**overrides) -> ml_collections.ConfigDict:
    settings = dict(data_name="imagenet2012", data_image_size=32, data_shuffle_buffer=64)
    return _config(**(settings | overrides))


def _add_to_tar(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    import io

    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


@pytest.fixture(scope="module")
def imagenet_tfds_dir(tmp_path_factory):
    """A TFDS data_dir with imagenet2012 prepared by TFDS itself from tiny fake archives:
    8 training images of each of `WNIDS` (sizes vary) and 10 validation images."""
    import io

    import tensorflow_datasets as tfds

    root = tmp_path_factory.mktemp("tfds")
    manual = root / "downloads" / "manual"
    manual.mkdir(parents=True)
    rng = np.random.default_rng(0)
    with tarfile.open(manual / "ILSVRC2012_img_train.tar", "w") as outer:
        for wnid in WNIDS:
            inner_bytes = io.BytesIO()
            with tarfile.open(fileobj=inner_bytes, mode="w") as inner:
                for i in range(8):
                    pixels = _noise(rng, 40 + 8 * i, 72 - 4 * i)
                    _add_to_tar(inner, f"{wnid}_{i}.JPEG", _jpeg(pixels))
            _add_to_tar(outer, f"{wnid}.tar", inner_bytes.getvalue())
    with tarfile.open(manual / "ILSVRC2012_img_val.tar", "w") as tar:
        for i in range(10):
            _add_to_tar(tar, f"ILSVRC2012_val_{i + 1:08d}.JPEG", _jpeg(_noise(rng, 48, 40)))
    builder = tfds.builder("imagenet2012", data_dir=str(root))
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(manual)))
    return root


def _tfds_source(root, index: int = 0, count: int = 1, **overrides):
    config = _imagenet_config(**(dict(data_source="tfds", data_dir=str(root), batch_size=8, eval_batch_size=4)
                                 | overrides))
    return create_source(config, process_index=index, process_count=count)


def test_imagenet_tfds_batches_streamed_and_split_between_processes(imagenet_tfds_dir):
    source = _tfds_source(imagenet_tfds_dir)
    assert (source.num_classes, source.num_train, source.num_eval) == (1000, 24, 10)
    assert source.class_names[:3] == list(WNIDS) and source.image_shape == (32, 32, 3)
    assert source.steps_per_epoch == 3
    assert (source.mean, source.std) == (IMAGENET_MEAN, IMAGENET_STD)

    train = list(source.train_batches(1))
    assert len(train) == 3
    for batch in train:
        assert batch.keys() == {"image", "label"}
        assert batch["image"].shape == (8, 32, 32, 3) and batch["image"].dtype == np.float32
        assert batch["label"].shape == (8,) and batch["label"].dtype == np.int32
    assert sorted(_stack(train, "label")) == [0] * 8 + [1] * 8 + [2] * 8
    low = (0.0 - np.array(IMAGENET_MEAN)) / IMAGENET_STD
    high = (1.0 - np.array(IMAGENET_MEAN)) / IMAGENET_STD
    images = _stack(train, "image")
    assert np.all(images >= low - 1e-5) and np.all(images <= high + 1e-5)
    for a, b in zip(train, source.train_batches(1), strict=True):
        np.testing.assert_array_equal(a["image"], b["image"])
    assert not np.array_equal(images, _stack(source.train_batches(2), "image"))

    evals = list(source.eval_batches())
    assert len(evals) == 3 and all(batch["image"].shape == (4, 32, 32, 3) for batch in evals)
    mask = _stack(evals, "mask")
    assert mask.dtype == bool and mask.tolist() == [True] * 10 + [False] * 2
    assert np.all((_stack(evals, "label") >= 0) & (_stack(evals, "label") < 1000))

    # Two processes read disjoint halves of the records, and make the same number of batches:
    # in global batches of 10, 2 full ones, then one of the 4 records left, 2 from each process.
    halves = [_tfds_source(imagenet_tfds_dir, index, 2, batch_size=10) for index in (0, 1)]
    names = [
        {record["file_name"] for record in half.records("train", 24).as_numpy_iterator()}
        for half in halves
    ]
    assert len(names[0]) == len(names[1]) == 12 and not names[0] & names[1]
    labels = []
    for half in halves:
        batches = list(half.train_batches(1))
        assert [batch["image"].shape for batch in batches] == [(5, 32, 32, 3)] * 2 + [(2, 32, 32, 3)]
        labels.extend(_stack(batches, "label"))
    assert sorted(labels) == [0] * 8 + [1] * 8 + [2] * 8, "every record once"
    split_evals = [list(half.eval_batches()) for half in halves]
    for part in split_evals:  # 5 examples each, in ceil(5 / 2) batches of 2
        assert _stack(part, "mask").tolist() == [True] * 5 + [False]
    parts = [_stack(part, "image")[_stack(part, "mask")] for part in split_evals]
    np.testing.assert_allclose(np.concatenate(parts), _stack(evals, "image")[mask], atol=1e-6)


def write_imagenet_folder(root, eval_split: str = "val") -> None:
    """`root/train/<class>/` with one noise image per class (its label names it) and
    `root/<eval_split>/<class>/` with 10 images in all."""
    import tensorflow as tf

    rng = np.random.default_rng(1)
    for index in range(8):
        name = f"n{index:08d}"
        for split, count in (("train", 1), (eval_split, 2 if index in (0, 3) else 1)):
            folder = root / split / name
            folder.mkdir(parents=True)
            for number in range(count):
                pixels = _noise(rng, 48 + 4 * index, 80 - 4 * index)
                # A few ImageNet ".JPEG" files are PNGs; they are decoded whole, then cropped.
                data = tf.io.encode_png(pixels).numpy() if index == 5 else _jpeg(pixels)
                (folder / f"{name}_{number}.JPEG").write_bytes(data)


def _folder_source(root, index: int = 0, count: int = 1, **overrides):
    settings = dict(data_source="folder", data_dir=str(root), batch_size=4, eval_batch_size=4)
    config = _imagenet_config(**(settings | overrides))
    return create_source(config, process_index=index, process_count=count)


def test_imagenet_folder_crops_are_reproducible_per_epoch_and_split_between_processes(tmp_path):
    write_imagenet_folder(tmp_path)
    source = _folder_source(tmp_path, data_image_size=64)
    assert (source.num_classes, source.num_train, source.num_eval) == (8, 8, 10)
    assert source.class_names == [f"n{index:08d}" for index in range(8)]
    train = list(source.train_batches(1))
    assert len(train) == source.steps_per_epoch == 2
    assert train[0]["image"].shape == (4, 64, 64, 3) and train[0]["image"].dtype == np.float32
    assert train[0]["label"].dtype == np.int32
    evals = list(source.eval_batches())
    assert len(evals) == 3 and evals[0]["image"].shape == (4, 64, 64, 3)
    assert _stack(evals, "mask").tolist() == [True] * 10 + [False] * 2
    np.testing.assert_array_equal(_stack(evals, "label")[:10], [0, 0, 1, 2, 3, 3, 4, 5, 6, 7])

    def crops(epoch):  # each class has one training image: the label names the example
        batches = list(source.train_batches(epoch))
        images, labels = _stack(batches, "image"), _stack(batches, "label")
        return images[np.argsort(labels)]

    first = crops(1)
    np.testing.assert_array_equal(first, crops(1))
    second = crops(2)
    assert sum(not np.allclose(a, b, atol=1e-3) for a, b in zip(first, second)) >= 6

    whole = _folder_source(tmp_path)
    halves = [_folder_source(tmp_path, index, 2) for index in (0, 1)]
    for key_batches in (
        lambda s: s.train_batches(3),
        lambda s: s.eval_batches(),
        lambda s: s.train_eval_batches(),
    ):
        pairs = zip(*(key_batches(half) for half in halves), strict=True)
        for full, (a, b) in zip(key_batches(whole), pairs, strict=True):
            assert a["image"].shape == (2, 32, 32, 3) and a.keys() == full.keys()
            for key in full:
                np.testing.assert_array_equal(np.concatenate([a[key], b[key]]), full[key])


def test_imagenet_normalisation_and_a_test_folder(tmp_path):
    import tensorflow as tf

    colour = (200, 120, 40)
    for split in ("train", "test"):  # test/ serves when there is no val/
        folder = tmp_path / split / "n00000001"
        folder.mkdir(parents=True)
        (folder / "flat.JPEG").write_bytes(_jpeg(np.full((90, 70, 3), colour, np.uint8)))
    decoded = tf.io.decode_jpeg((folder / "flat.JPEG").read_bytes()).numpy()
    pixel = decoded[45, 35].astype(np.float64)
    assert np.all(decoded == decoded[45, 35]) and np.all(np.abs(pixel - colour) <= 2)
    expected = (pixel / 255.0 - IMAGENET_MEAN) / IMAGENET_STD

    source = _folder_source(tmp_path, batch_size=1, eval_batch_size=2, data_image_size=24)
    train = next(source.train_batches(1))["image"]
    evals = list(source.eval_batches())
    assert len(evals) == 1 and evals[0]["mask"].tolist() == [True, False]
    for image in (train[0], evals[0]["image"][0]):
        assert image.shape == (24, 24, 3)
        np.testing.assert_allclose(image, np.broadcast_to(expected, image.shape), atol=1e-5)
    np.testing.assert_array_equal(source.display_images(train)[0, 0, 0], decoded[0, 0])


def _windows(shape, seeds):
    import tensorflow as tf

    window = lambda seed: augment.random_resized_crop_window(tf.constant(shape), seed)
    dataset = tf.data.Dataset.from_tensor_slices(np.asarray(seeds, np.int64)).map(window)
    return np.stack(list(dataset.as_numpy_iterator()))


def test_random_resized_crop_windows_follow_torchvision():
    height, width = 300, 400
    seeds = np.stack([np.arange(3000), np.full(3000, 7)], axis=1)
    windows = _windows([height, width, 3], seeds)
    np.testing.assert_array_equal(windows, _windows([height, width, 3], seeds))
    top, left, h, w = windows.T
    assert np.all((top >= 0) & (left >= 0) & (h >= 1) & (w >= 1))
    assert np.all((top + h <= height) & (left + w <= width))
    # Sides are rounded, so area and ratio may exceed their ranges by a rounding step.
    area = h * w / (height * width)
    assert area.min() >= 0.075 and area.max() <= 1.0 and area.min() < 0.1
    ratio = w / h
    assert ratio.min() > 0.74 and ratio.max() < 1.35
    assert ratio.min() < 0.78 and ratio.max() > 1.3  # log-uniform over the whole range
    # Crops are placed uniformly: the offset over its range has mean 1/2 and reaches both ends.
    for offset, side, extent in ((top, h, height), (left, w, width)):
        room = extent - side
        where = offset[room >= 20] / room[room >= 20]
        assert abs(where.mean() - 0.5) < 0.03 and where.min() < 0.01 and where.max() > 0.99
    # Fallback when no try fits: the centred crop of the extreme ratio 4/3 (or 3/4).
    np.testing.assert_array_equal(_windows([10, 1000, 3], seeds[:5]), [[0, 493, 10, 13]] * 5)
    np.testing.assert_array_equal(_windows([1000, 10, 3], seeds[:5]), [[493, 0, 13, 10]] * 5)


def test_centre_crop_window_is_torchvisions_resize_then_centre_crop():
    import tensorflow as tf

    window = augment.center_crop_window
    # Resize(256) + CenterCrop(224) of 375 x 500 keeps 224/256 of the shorter side, centred.
    np.testing.assert_array_equal(window(tf.constant([375, 500, 3]), 224), [23, 86, 328, 328])
    np.testing.assert_array_equal(window(tf.constant([500, 375, 3]), 224), [86, 23, 328, 328])
    # At 64: Resize(73) + CenterCrop(64).
    np.testing.assert_array_equal(window(tf.constant([73, 100, 3]), 64), [4, 18, 64, 64])


def test_missing_imagenet_says_how_to_prepare_it(tmp_path):
    with pytest.raises(FileNotFoundError) as error:
        create_source(_imagenet_config(data_source="tfds", data_dir=str(tmp_path)))
    message = str(error.value)
    manual = f"{tmp_path}/downloads/manual"
    for part in (
        "'imagenet2012' is not prepared",
        f"TFDS looked in {tmp_path}",
        "ILSVRC2012_img_train.tar",
        "ILSVRC2012_img_val.tar",
        f"in {manual}/",
        f"tfds build imagenet2012 --data_dir {tmp_path} --manual_dir {manual}",
        f"--config.data.dir={tmp_path}",
        "https://image-net.org/download-images",
        "--config.data.source=folder",
    ):
        assert part in message, part


@pytest.mark.parametrize(
    "overrides, match",
    [
        (dict(data_image_size=-1), "config.data.image_size must be 0"),
        (dict(data_source="tfds", data_reserved_classes=10), "need every training label"),
        (dict(data_source="tfds", data_shuffle_buffer=0), "shuffle_buffer must be a positive"),
        (dict(data_source="folder", data_dir=""), "config.data.dir is empty"),
    ],
)
def test_invalid_imagenet_configs_are_refused(overrides, match, tmp_path):
    config = _imagenet_config(**(dict(data_source="folder", data_dir=str(tmp_path)) | overrides))
    with pytest.raises(ValueError, match=match):
        create_source(config)


@pytest.mark.parametrize(
    "flat_val, match",
    [(False, "has no val/ or test/ folder"), (True, "holds images but no class folders")],
)
def test_malformed_imagenet_folders_are_refused(tmp_path, flat_val, match):
    (tmp_path / "train" / "n1").mkdir(parents=True)
    (tmp_path / "train" / "n1" / "a.JPEG").write_bytes(_jpeg(np.zeros((8, 8, 3), np.uint8)))
    if flat_val:  # ImageNet's validation images as distributed: no class folders
        (tmp_path / "val").mkdir()
        (tmp_path / "val" / "ILSVRC2012_val_00000001.JPEG").write_bytes(b"")
    with pytest.raises(ValueError, match=match):
        create_source(_imagenet_config(data_source="folder", data_dir=str(tmp_path)))


def _assert_resumed_epoch_is_the_tail(source, epoch: int, first_step: int) -> None:
    full = list(source.train_batches(epoch))
    resumed = list(source.train_batches(epoch, first_step))
    assert len(full) == source.steps_per_epoch and len(resumed) == len(full) - first_step
    for a, b in zip(full[first_step:], resumed, strict=True):
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])


@pytest.mark.parametrize("make", [_arrays_in_process, _npz_arrays_in_process, _synthetic_in_process,
                                  _shapes_in_process], ids=["arrays", "npz", "synthetic", "shapes"])
def test_an_epoch_resumed_at_a_step_gives_exactly_its_remaining_batches(make):
    source = make(1, 2)
    assert source.steps_per_epoch == 7  # 6 batches of 8, then one of the 2 examples left
    for first_step in (0, 2, 6, 7):  # 6: only the smaller last batch is left
        _assert_resumed_epoch_is_the_tail(source, 2, first_step)
    with pytest.raises(ValueError, match="first_step must be an integer in 0..7, got 8"):
        source.train_batches(2, 8)


def test_streamed_imagenet_epochs_resume_at_a_step(imagenet_tfds_dir, tmp_path):
    # Batches of 5, 5 and 2 (the smaller last one) from this process.
    _assert_resumed_epoch_is_the_tail(_tfds_source(imagenet_tfds_dir, 1, 2, batch_size=10), 3, 1)
    write_imagenet_folder(tmp_path)
    _assert_resumed_epoch_is_the_tail(_folder_source(tmp_path, data_image_size=32), 2, 1)


def test_imagenet_folders_end_an_epoch_with_a_smaller_batch(tmp_path):
    write_imagenet_folder(tmp_path)  # 8 training images, one of each class
    batches = list(_folder_source(tmp_path, batch_size=3).train_batches(1))
    assert [len(batch["label"]) for batch in batches] == [3, 3, 2]
    assert sorted(_stack(batches, "label")) == list(range(8))


def test_tensorflows_start_up_lines_show_once():
    # Its libraries each print the same lines on import (oneDNN, absl's pre-init warning): twice
    # for a bare `import tensorflow` on this platform.
    script = "from catkd_jax.data.base import import_tensorflow; import_tensorflow().constant(1)"
    result = subprocess.run([sys.executable, "-c", script], env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)),
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    texts = [line.split("] ", 1)[-1] for line in result.stderr.splitlines()]
    assert len(texts) == len(set(texts)), result.stderr
    assert sum("oneDNN" in text for text in texts) <= 1


def _contrastive_source(index: int = 0, count: int = 1) -> DataSource:
    """60 synthetic CIFAR-10 examples of which classes 0-5 are kept (a reduced set: bank rows are
    positions in it, not data-set indices), batches of 8."""
    config = _config(batch_size=8, data_name="cifar10", data_synthetic_train_size=60, data_reserved_classes=6)
    return create_source(config, process_index=index, process_count=count)


def test_contrastive_batches_draw_other_class_negatives_reproducibly_per_example():
    whole = _contrastive_source()
    labels = np.concatenate([batch["label"][batch["mask"]] for batch in whole.train_eval_batches()])  # by position
    assert len(labels) == whole.num_train < 60
    batches = list(whole.contrastive_train_batches(1, num_negatives=600))
    index = _stack(batches, "index")
    assert sorted(index) == list(range(whole.num_train)), "each example's bank row once an epoch"
    for batch in batches:
        contrast = batch["contrast_index"]
        assert contrast.shape == (len(batch["label"]), 601) and contrast.dtype == np.int32
        np.testing.assert_array_equal(labels[batch["index"]], batch["label"])
        np.testing.assert_array_equal(contrast[:, 0], batch["index"])  # 'exact': the example itself
        assert not np.any(labels[contrast[:, 1:]] == batch["label"][:, None]), "negatives are of other classes"
    # Uniform over the other classes' examples: each one's count in a row within 6 standard
    # deviations of the mean (600 draws over ~30 examples: 20 +- 4.4).
    for batch in batches:
        for label, row in zip(batch["label"], batch["contrast_index"][:, 1:]):
            others = labels != label
            counts, mean = np.bincount(row, minlength=len(labels))[others], 600 / np.sum(others)
            assert np.all(np.abs(counts - mean) < 6 * np.sqrt(mean)), counts

    # Per (seed, epoch, example): any process count and a resumed epoch give the same draws.
    halves = zip(*(_contrastive_source(k, 2).contrastive_train_batches(1, num_negatives=600) for k in (0, 1)))
    for full, (a, b) in zip(batches, halves, strict=True):
        for key in ("index", "contrast_index"):
            np.testing.assert_array_equal(np.concatenate([a[key], b[key]]), full[key])
    for full, resumed in zip(batches[2:], whole.contrastive_train_batches(1, 2, num_negatives=600), strict=True):
        np.testing.assert_array_equal(resumed["contrast_index"], full["contrast_index"])
    assert not np.array_equal(next(whole.contrastive_train_batches(2, num_negatives=600))["contrast_index"][:, 1:],
                              batches[0]["contrast_index"][:, 1:])
    relaxed = next(whole.contrastive_train_batches(1, num_negatives=4, mode="relax"))
    np.testing.assert_array_equal(labels[relaxed["contrast_index"][:, 0]], relaxed["label"])  # one of its class


def test_contrastive_rows_follow_the_tf_data_sources_batches():
    """The rows come from the source's order, the images from its tf.data pipeline: each batch's
    rows are its examples' (labels here are the examples' indices, the last batch smaller)."""
    images, labels = _random_images(40), np.arange(40)
    source = _array_source(images, labels, batch_size=16)
    batches = list(source.contrastive_train_batches(1, num_negatives=3))
    assert [len(batch["index"]) for batch in batches] == [16, 16, 8]
    for batch in batches:
        np.testing.assert_array_equal(batch["index"], batch["label"])
        np.testing.assert_array_equal(batch["contrast_index"][:, 0], batch["label"])


def test_contrastive_batches_of_a_single_class_are_refused_in_one_line():
    source = _array_source(_random_images(16), np.zeros(16, np.int64), batch_size=8)
    with pytest.raises(ConfigError, match=r"^contrastive negatives come from other classes, but the training set "
                                          r"holds one class; keep at least two \(config.data.reserved_classes\)$"):
        next(source.contrastive_train_batches(1, num_negatives=2))
    with pytest.raises(ConfigError, match=r"^the contrastive sampling mode must be 'exact' or 'relax', got 'fuzzy'$"):
        next(source.contrastive_train_batches(1, mode="fuzzy"))
