"""Tests of catkd_jax.input_pipeline: sources, determinism, augmentation, reduction, errors."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tarfile
import textwrap

import ml_collections
import numpy as np
import pytest

from catkd_jax import input_pipeline
from conftest import REPO_ROOT, shared_path

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


def _array_source(images, labels, **kwargs):
    """An `ArraySource` whose test set is its training set."""
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
    return input_pipeline.ArraySource(images, labels, images, labels, **settings)


def _random_images(n: int, seed: int = 0) -> np.ndarray:
    # No zero pixel, so zero padding is told apart from image content.
    return np.random.default_rng(seed).integers(1, 256, (n, 32, 32, 3), dtype=np.uint8)


def _stack(batches, key):
    return np.concatenate([batch[key] for batch in batches])


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
        source = input_pipeline.create_source(_config(data_source="tfds", eval_batch_size=16))
        mock_test = tfds.load("cifar100", split="test", as_supervised=True)
        test_images, test_labels = zip(*mock_test.as_numpy_iterator())
    assert (source.num_classes, source.num_train, source.num_eval) == (100, 50, 50)
    assert source.steps_per_epoch == 3
    assert source.class_names == [str(label) for label in range(100)]  # mock data has no names

    train = list(source.train_batches(1))
    assert len(train) == 3
    low = (0.0 - np.array(MEAN["cifar100"])) / STD["cifar100"]  # per channel, black pixels
    high = (1.0 - np.array(MEAN["cifar100"])) / STD["cifar100"]
    for batch in train:
        assert batch["image"].shape == (16, 32, 32, 3) and batch["image"].dtype == np.float32
        assert batch["label"].shape == (16,) and batch["label"].dtype == np.int32
        assert np.all((batch["label"] >= 0) & (batch["label"] < 100))
        assert np.all(batch["image"] >= low - 1e-5) and np.all(batch["image"] <= high + 1e-5)

    evals = list(source.eval_batches())
    assert len(evals) == 4 and all(batch["image"].shape == (16, 32, 32, 3) for batch in evals)
    assert all(batch["mask"].dtype == bool for batch in evals)
    mask = _stack(evals, "mask")
    assert mask.sum() == 50 and mask[:50].all()
    np.testing.assert_array_equal(_to_uint8(_stack(evals, "image")[mask]), np.stack(test_images))
    np.testing.assert_array_equal(_stack(evals, "label")[mask], test_labels)


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


def test_augmentation_is_a_zero_padded_shift_and_a_fair_flip_and_eval_is_untouched():
    n = 256
    images, labels = _random_images(n), np.arange(n)
    source = _array_source(images, labels, batch_size=64)
    batches = list(source.train_batches(1))
    padded = np.pad(images, [(0, 0), (4, 4), (4, 4), (0, 0)])
    shifts, flips = [], []
    for image, label in zip(_to_uint8(_stack(batches, "image")), _stack(batches, "label")):
        windows = np.lib.stride_tricks.sliding_window_view(padded[label], (32, 32, 3))[:, :, 0]
        for flipped, candidate in ((False, image), (True, image[:, ::-1])):
            matches = np.argwhere(np.all(windows == candidate, axis=(2, 3, 4)))
            if len(matches):
                shifts.append(matches[0] - 4)
                flips.append(flipped)
                break
        else:
            pytest.fail(f"example {label} is not a zero-padded shift (flipped or not) of its image")
    shifts = np.array(shifts)
    assert np.abs(shifts).max() == 4 and len(np.unique(shifts[:, 0])) == 9
    assert 0.35 < np.mean(flips) < 0.65

    evals = list(source.eval_batches())
    np.testing.assert_array_equal(_to_uint8(_stack(evals, "image")), images)
    np.testing.assert_array_equal(_stack(evals, "label"), labels)


def test_reduce_training_set_keeps_the_first_examples_of_the_first_classes():
    labels = np.array([2, 0, 1, 0, 2, 1, 0, 0, 1, 2, 0, 1])
    # Class 0 sits at 1, 3, 6, 7, 10; class 1 at 2, 5, 8, 11; class 2 at 0, 4, 9.
    np.testing.assert_array_equal(
        input_pipeline.reduce_training_set(labels, 3, reserved_classes=2, reserved_rate=0.5),
        [1, 2, 3, 5],
    )
    np.testing.assert_array_equal(
        input_pipeline.reduce_training_set(labels, 3, reserved_classes=0, reserved_rate=0.8),
        [0, 1, 2, 3, 4, 5, 6, 7, 8],  # int(0.8 * count): 4 of class 0, 3 of class 1, 2 of class 2
    )
    np.testing.assert_array_equal(input_pipeline.reduce_training_set(labels, 3), np.arange(12))


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
    source = input_pipeline.create_source(config)
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

    source = input_pipeline.create_source(
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


@pytest.mark.parametrize("source", ["synthetic", "shapes"])
def test_numpy_sources_work_without_tensorflow(source):
    script = textwrap.dedent(
        f"""
        import sys
        sys.modules["tensorflow"] = None  # any import of it now fails
        sys.modules["tensorflow_datasets"] = None
        import ml_collections
        from catkd_jax import input_pipeline
        config = ml_collections.ConfigDict(dict(seed=3, batch_size=8, eval_batch_size=8, data=dict(
            name="cifar10", source="{source}", dir="", reserved_classes=0, reserved_rate=1.0,
            synthetic_train_size=20, synthetic_test_size=10)))
        source = input_pipeline.create_source(config)
        assert len(list(source.train_batches(1))) == 2
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
    source = input_pipeline.create_source(config)
    assert (source.num_classes, source.num_train, source.num_eval) == (10, 200, 50)
    assert source.class_names == [f"class_{label}" for label in range(10)]
    train = list(source.train_batches(1))
    assert len(train) == source.steps_per_epoch == 12
    assert train[0]["image"].shape == (16, 32, 32, 3) and train[0]["image"].dtype == np.float32
    assert train[0]["label"].dtype == np.int32
    again = next(input_pipeline.create_source(config).train_batches(1))
    np.testing.assert_array_equal(train[0]["image"], again["image"])
    assert not np.array_equal(
        _stack(train, "label"), _stack(source.train_batches(2), "label")
    ), "each epoch has its own order"

    # A nearest-class-mean classifier fitted on one epoch beats chance (10%) by far.
    images, labels = _stack(train, "image").reshape(len(train) * 16, -1), _stack(train, "label")
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
    source = input_pipeline.create_source(config)
    assert source.class_names == ["disc", "square", "triangle", "cross", "ring"]
    assert (source.num_classes, source.num_train, source.num_eval) == (5, 203, 52)
    assert source.image_shape == (32, 32, 3) and source.steps_per_epoch == 12

    evals, train = list(source.eval_batches()), next(source.train_batches(1))
    assert train["image"].dtype == np.float32 and train["image"].shape == (16, 32, 32, 3)
    assert train["label"].dtype == np.int32 and train["box"].dtype == np.int32
    assert train["box"].shape == (16, 4) and evals[0]["box"].shape == (32, 4)
    assert evals[0]["mask"].dtype == bool
    same = input_pipeline.create_source(config)
    for a, b in zip(evals, same.eval_batches(), strict=True):
        for key in ("image", "label", "box", "mask"):
            np.testing.assert_array_equal(a[key], b[key])
    for key in ("image", "label", "box"):
        np.testing.assert_array_equal(train[key], next(same.train_batches(1))[key])
    other = next(input_pipeline.create_source(_shapes_config(seed=1)).eval_batches())
    assert not np.array_equal(other["image"], evals[0]["image"])
    assert not np.array_equal(other["box"], evals[0]["box"])

    # The batches serve the generated splits; train and test are independent draws.
    mask = _stack(evals, "mask")
    test_images, test_labels, _, test_boxes = input_pipeline._shapes_split(0, 1, 52)
    np.testing.assert_array_equal(source.display_images(_stack(evals, "image")[mask]), test_images)
    np.testing.assert_array_equal(_stack(evals, "label")[mask], test_labels)
    np.testing.assert_array_equal(_stack(evals, "box")[mask], test_boxes)
    train_images, train_labels = input_pipeline._shapes_split(0, 0, 203)[:2]
    assert not np.array_equal(train_images[:52], test_images)
    for labels in (train_labels, test_labels):
        counts = np.bincount(labels, minlength=5)
        assert counts.max() - counts.min() <= 1 and len(counts) == 5
    assert not np.array_equal(train_labels[:52], test_labels), "labels are shuffled per split"


def test_shapes_boxes_are_tight_around_objects_of_their_class():
    images, labels, masks, boxes = input_pipeline._shapes_split(0, 0, 500)
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
    images, _, masks, boxes = input_pipeline._shapes_split(0, 1, 500)
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
    source = input_pipeline.create_source(_shapes_config(data_synthetic_train_size=64))
    images, labels, masks, _ = input_pipeline._shapes_split(0, 0, 64)
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

    test_images = input_pipeline._shapes_split(0, 1, 40)[0]
    evals = list(source.eval_batches())
    np.testing.assert_array_equal(
        source.display_images(_stack(evals, "image")[_stack(evals, "mask")]), test_images
    )


def _arrays_in_process(index: int, count: int) -> input_pipeline.DataSource:
    return _array_source(
        _random_images(50),
        np.arange(50),
        batch_size=8,
        eval_batch_size=12,
        process_index=index,
        process_count=count,
    )


def _synthetic_in_process(index: int, count: int) -> input_pipeline.DataSource:
    config = _config(
        batch_size=8, eval_batch_size=12, data_synthetic_train_size=50, data_synthetic_test_size=50
    )
    return input_pipeline.create_source(config, process_index=index, process_count=count)


def _shapes_in_process(index: int, count: int) -> input_pipeline.DataSource:
    config = _config(
        batch_size=8,
        eval_batch_size=12,
        data_source="shapes",
        data_synthetic_train_size=50,
        data_synthetic_test_size=50,
    )
    return input_pipeline.create_source(config, process_index=index, process_count=count)


@pytest.mark.parametrize(
    "make",
    [_arrays_in_process, _synthetic_in_process, _shapes_in_process],
    ids=["arrays", "synthetic", "shapes"],
)
def test_two_processes_partition_each_global_batch(make):
    whole, first, second = make(0, 1), make(0, 2), make(1, 2)
    global_batches = list(whole.train_batches(3))
    halves = zip(first.train_batches(3), second.train_batches(3), strict=True)
    for full, (a, b) in zip(global_batches, halves, strict=True):
        assert a["image"].shape == (4, 32, 32, 3)
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


def test_missing_tfds_data_says_where_it_looked_and_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError) as error:
        input_pipeline.create_source(_config(data_source="tfds", data_dir=str(tmp_path)))
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
    ],
)
def test_invalid_configs_are_refused(overrides, process_count, match):
    with pytest.raises(ValueError, match=match):
        input_pipeline.create_source(
            _config(**overrides), process_index=0, process_count=process_count
        )


def test_epochs_count_from_one():
    source = input_pipeline.create_source(_config())
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
        input_pipeline.create_source(_config(data_source="folder", data_dir=str(tmp_path)))


@pytest.mark.parametrize("problem", ["undecodable", "other size"])
def test_bad_image_files_are_named(tmp_path, problem):
    _write_folder(tmp_path, {"train": {"a": [1, 2]}, "test": {"a": [3]}})
    bad = tmp_path / "train" / "a" / "0001.png"
    if problem == "undecodable":
        bad.write_bytes(b"not an image")
    else:
        import tensorflow as tf

        tf.io.write_file(str(bad), tf.io.encode_png(np.zeros((16, 16, 3), np.uint8)))
    with pytest.raises(ValueError, match=re.escape(str(bad))):
        input_pipeline.create_source(_config(data_source="folder", data_dir=str(tmp_path)))
