"""Training and test data for the CIFAR recipe: sources, reduction, augmentation, batching.

`create_source(config)` returns a `DataSource`:

    source.num_classes, source.num_train, source.num_eval, source.steps_per_epoch
    source.train_batches(epoch)  # {"image": float32 [B, H, W, 3], "label": int32 [B]}
    source.eval_batches()        # the same plus "mask": bool [B], False on padding

B is this process's share of the global batch size. Three sources:

* 'tfds': TensorFlow Datasets' cifar100 / cifar10, read once into memory (never downloaded).
* 'folder': `DIR/train/<class>/*.jpg` and `DIR/test/<class>/*.jpg` (also png, bmp, gif);
  labels index the sorted class folder names, examples are in (class, file name) order.
* 'synthetic': learnable random images from numpy alone, for smoke runs without data.

Training follows mdistiller's CIFAR recipe: zero-pad 4 pixels, random 32x32 crop, random
horizontal flip, then `(x / 255 - mean) / std` per channel; test images are only normalised.
Everything random derives from `(config.seed, epoch)`: the shuffle, and each example's
augmentation (from its index in the data set, through stateless ops), so a batch never depends
on threading, on the number of processes, or on where an interrupted run resumed.

With several processes, each computes the same global order and yields its own contiguous
slice of every global batch. TensorFlow is imported only by the 'tfds' and 'folder' sources.
"""

from __future__ import annotations

import abc
import dataclasses
import functools
import os
import pathlib
from collections.abc import Iterator
from typing import Any

import jax
import ml_collections
import numpy as np

PAD = 4  # pixels of zero padding before the random crop, as in mdistiller
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
SOURCES = ("tfds", "folder", "synthetic")


@dataclasses.dataclass(frozen=True)
class _DatasetSpec:
    tfds_name: str
    num_classes: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


DATASETS = {
    "cifar100": _DatasetSpec(
        "cifar100", 100, mean=(0.5071, 0.4867, 0.4408), std=(0.2675, 0.2565, 0.2761)
    ),
    "cifar10": _DatasetSpec(
        "cifar10", 10, mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616)
    ),
}

# Each random stream has its own number, so no two streams ever share a seed sequence.
_SHUFFLE, _AUGMENT, _SYNTHETIC_DATA, _SYNTHETIC_TRAIN, _SYNTHETIC_TEST = range(5)

_SYNTHETIC_SHAPE = (32, 32, 3)
_SYNTHETIC_BLOCK = 4  # templates are constant on 4x4 blocks: coarse patterns convolutions see


@functools.lru_cache(maxsize=None)
def _tensorflow() -> Any:
    """TensorFlow, imported on first use, restricted to the CPU."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    try:
        # tf.data must never take accelerator memory from JAX.
        tf.config.set_visible_devices([], "GPU")
    except RuntimeError:
        pass  # TensorFlow was initialised before us; its device choice can no longer change.
    return tf


def reduce_training_set(
    labels: np.ndarray, num_classes: int, reserved_classes: int = 0, reserved_rate: float = 1.0
) -> np.ndarray:
    """Indices of the training examples kept by CAT-KD's data-reduction study.

    Args:
      labels: `[N]` integer labels in data-set order.
      num_classes: the data set's class count.
      reserved_classes: keep only classes `0 .. reserved_classes - 1`; 0 keeps all.
      reserved_rate: keep the first `int(reserved_rate * count)` examples of each kept class,
        in data-set order; in (0, 1].
    Returns:
      `[M]` int64 indices into `labels`, increasing (data-set order is preserved).
    """
    if not 0 <= reserved_classes <= num_classes:
        raise ValueError(
            f"config.data.reserved_classes={reserved_classes} is outside 0..{num_classes} "
            f"(the data set has {num_classes} classes); use 0 to keep all classes"
        )
    if not 0.0 < reserved_rate <= 1.0:
        raise ValueError(
            f"config.data.reserved_rate={reserved_rate} is outside (0, 1]; "
            "use 1.0 to keep every image of the kept classes"
        )
    labels = np.asarray(labels)
    kept_classes = reserved_classes or num_classes
    if kept_classes == num_classes and reserved_rate == 1.0:
        return np.arange(len(labels), dtype=np.int64)
    kept = []
    for label in range(kept_classes):
        members = np.flatnonzero(labels == label)
        kept.append(members[: int(reserved_rate * len(members))])
    return np.sort(np.concatenate(kept)).astype(np.int64)


def _entropy(seed: int, stream: int, *words: int) -> np.random.SeedSequence:
    # SeedSequence takes non-negative integers only; the modulus keeps negative seeds usable.
    return np.random.SeedSequence([int(seed) % 2**64, stream, *(int(word) for word in words)])


def _positive_int(value: Any, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{field} must be a positive integer, got {value!r}")
    return int(value)


class DataSource(abc.ABC):
    """Batching shared by all sources: reduction, per-epoch order, process slices, eval padding.

    Args:
      train_labels, test_labels: `[N]` integer labels of each split, in data-set order.
      num_classes: the data set's class count.
      batch_size, eval_batch_size: global batch sizes, multiples of `process_count`.
      seed: determines every epoch's order and augmentation.
      reserved_classes, reserved_rate: training-set reduction, see `reduce_training_set`.
      process_index, process_count: this process among the data-parallel ones; default to
        `jax.process_index()` and `jax.process_count()`.

    Attributes:
      num_classes: classes of the model's output (the test set keeps all of them).
      image_shape: `(H, W, 3)` of every image.
      num_train: training examples after reduction, over all processes.
      num_eval: test examples, over all processes.
      steps_per_epoch: `num_train // batch_size`; the remainder of each epoch's order is dropped.
    """

    def __init__(
        self,
        train_labels: np.ndarray,
        test_labels: np.ndarray,
        *,
        num_classes: int,
        batch_size: int,
        eval_batch_size: int,
        seed: int,
        reserved_classes: int = 0,
        reserved_rate: float = 1.0,
        process_index: int | None = None,
        process_count: int | None = None,
    ) -> None:
        process_count = jax.process_count() if process_count is None else process_count
        process_index = jax.process_index() if process_index is None else process_index
        if not 0 <= process_index < process_count:
            raise ValueError(f"process_index {process_index} is outside 0..{process_count - 1}")
        for field, size in (
            ("config.batch_size", batch_size),
            ("config.eval_batch_size", eval_batch_size),
        ):
            if _positive_int(size, field) % process_count:
                raise ValueError(
                    f"{field}={size} is not divisible by the {process_count} processes; "
                    f"set it to a multiple of {process_count}"
                )
        self._train_labels = np.asarray(train_labels, np.int32)
        self._test_labels = np.asarray(test_labels, np.int32)
        self._train_ids = reduce_training_set(
            self._train_labels, num_classes, reserved_classes, reserved_rate
        )
        self.num_classes = num_classes
        self.num_train = len(self._train_ids)
        self.num_eval = len(self._test_labels)
        if self.num_train < batch_size:
            raise ValueError(
                f"{self.num_train} training examples remain (config.data.reserved_classes="
                f"{reserved_classes}, reserved_rate={reserved_rate}), fewer than one batch of "
                f"config.batch_size={batch_size}; lower the batch size or keep more data"
            )
        if self.num_eval == 0:
            raise ValueError("the test set is empty; a source needs at least one test example")
        self.steps_per_epoch = self.num_train // batch_size
        self._global_batch = batch_size
        self._global_eval_batch = eval_batch_size
        self._batch = batch_size // process_count
        self._eval_batch = eval_batch_size // process_count
        self._process_index = process_index
        self._seed = seed

    def _epoch_entropy(self, stream: int, epoch: int) -> np.random.SeedSequence:
        if isinstance(epoch, bool) or not isinstance(epoch, (int, np.integer)) or epoch < 1:
            raise ValueError(f"epoch must be an integer >= 1 (epochs count from 1), got {epoch!r}")
        return _entropy(self._seed, stream, epoch)

    def _train_ids_for_epoch(self, epoch: int) -> np.ndarray:
        """`[steps_per_epoch * B]`: this process's data-set indices for `epoch`, in batch order."""
        rng = np.random.default_rng(self._epoch_entropy(_SHUFFLE, epoch))
        order = rng.permutation(self.num_train)
        steps = order[: self.steps_per_epoch * self._global_batch].reshape(
            self.steps_per_epoch, self._global_batch
        )
        start = self._process_index * self._batch
        return self._train_ids[steps[:, start : start + self._batch].reshape(-1)]

    def _augmentation_seed(self, epoch: int) -> np.ndarray:
        """`[2]` int64 seed of `epoch`'s stateless augmentation (same in every process)."""
        return self._epoch_entropy(_AUGMENT, epoch).generate_state(2, np.uint32).astype(np.int64)

    def _eval_ids(self) -> tuple[np.ndarray, np.ndarray]:
        """`([n * B], [n * B])`: this process's test indices and mask, in batch order.

        Global batch j holds test examples `j * G .. (j + 1) * G - 1` (G the global eval batch);
        positions past the end are padding, masked out and filled with example 0.
        """
        num_batches = -(-self.num_eval // self._global_eval_batch)
        positions = np.arange(num_batches * self._global_eval_batch).reshape(num_batches, -1)
        start = self._process_index * self._eval_batch
        positions = positions[:, start : start + self._eval_batch].reshape(-1)
        mask = positions < self.num_eval
        return np.where(mask, positions, 0), mask

    @abc.abstractmethod
    def train_batches(self, epoch: int) -> Iterator[dict[str, np.ndarray]]:
        """This process's `steps_per_epoch` augmented training batches of `epoch` (from 1).

        Returns:
          an iterator of {"image": float32 `[B, H, W, 3]` normalised, "label": int32 `[B]`},
          with B the global batch size over the process count.
        """

    @abc.abstractmethod
    def eval_batches(self) -> Iterator[dict[str, np.ndarray]]:
        """This process's share of the test set, in fixed order, un-augmented.

        Every process yields the same number of batches, and over all processes each test
        example is unmasked exactly once.

        Returns:
          an iterator of {"image": float32 `[B, H, W, 3]`, "label": int32 `[B]`,
          "mask": bool `[B]`}, with B the global eval batch size over the process count.
        """


class ArraySource(DataSource):
    """In-memory uint8 images, augmented and batched by tf.data.

    Args:
      train_images, test_images: uint8 `[N, H, W, 3]`, in data-set order.
      train_labels, test_labels: `[N]` integer labels.
      mean, std: per-channel normalisation constants on the [0, 1] pixel scale.
      The other arguments as `DataSource`: global batch sizes, seed, reduction, this process.
    """

    def __init__(
        self,
        train_images: np.ndarray,
        train_labels: np.ndarray,
        test_images: np.ndarray,
        test_labels: np.ndarray,
        *,
        num_classes: int,
        mean: tuple[float, float, float],
        std: tuple[float, float, float],
        batch_size: int,
        eval_batch_size: int,
        seed: int,
        reserved_classes: int = 0,
        reserved_rate: float = 1.0,
        process_index: int | None = None,
        process_count: int | None = None,
    ) -> None:
        for name, images, labels in (
            ("train", train_images, train_labels),
            ("test", test_images, test_labels),
        ):
            if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
                raise ValueError(
                    f"{name} images must be uint8 [N, H, W, 3], got {images.dtype} {images.shape}"
                )
            if len(images) != len(labels):
                raise ValueError(f"{len(images)} {name} images but {len(labels)} labels")
        if train_images.shape[1:] != test_images.shape[1:]:
            raise ValueError(
                f"train images are {train_images.shape[1:]} but test images {test_images.shape[1:]}"
            )
        super().__init__(
            train_labels,
            test_labels,
            num_classes=num_classes,
            batch_size=batch_size,
            eval_batch_size=eval_batch_size,
            seed=seed,
            reserved_classes=reserved_classes,
            reserved_rate=reserved_rate,
            process_index=process_index,
            process_count=process_count,
        )
        self.image_shape = tuple(train_images.shape[1:])
        tf = _tensorflow()
        self._train_images = tf.constant(train_images)
        self._test_images = tf.constant(test_images)
        self._mean = tf.constant(mean, tf.float32)
        self._std = tf.constant(std, tf.float32)

    def _normalize(self, images: Any) -> Any:
        tf = _tensorflow()
        return (tf.cast(images, tf.float32) / 255.0 - self._mean) / self._std

    def train_batches(self, epoch: int) -> Iterator[dict[str, np.ndarray]]:
        tf = _tensorflow()
        ids = self._train_ids_for_epoch(epoch)
        epoch_seed = tf.constant(self._augmentation_seed(epoch))
        shape = self._train_images.shape[1:]

        def augment(index: Any, label: Any) -> tuple[Any, Any]:
            # Seeded by the example's index, not its position: any process count gives the same.
            seeds = tf.random.experimental.stateless_split(
                tf.random.experimental.stateless_fold_in(epoch_seed, index), 2
            )
            image = tf.pad(tf.gather(self._train_images, index), [[PAD, PAD], [PAD, PAD], [0, 0]])
            image = tf.image.stateless_random_crop(image, shape.as_list(), seed=seeds[0])
            return tf.image.stateless_random_flip_left_right(image, seed=seeds[1]), label

        dataset = (
            tf.data.Dataset.from_tensor_slices((ids, self._train_labels[ids]))
            .map(augment, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
            .batch(self._batch, drop_remainder=True)
            .map(lambda images, labels: (self._normalize(images), labels))
            .prefetch(tf.data.AUTOTUNE)
        )
        return (
            {"image": images, "label": labels} for images, labels in dataset.as_numpy_iterator()
        )

    def eval_batches(self) -> Iterator[dict[str, np.ndarray]]:
        tf = _tensorflow()
        ids, mask = self._eval_ids()
        dataset = (
            tf.data.Dataset.from_tensor_slices((ids, self._test_labels[ids], mask))
            .batch(self._eval_batch)
            .map(
                lambda index, labels, mask: (
                    self._normalize(tf.gather(self._test_images, index)),
                    labels,
                    mask,
                )
            )
            .prefetch(tf.data.AUTOTUNE)
        )
        return (
            {"image": images, "label": labels, "mask": mask}
            for images, labels, mask in dataset.as_numpy_iterator()
        )


class SyntheticSource(DataSource):
    """Learnable random data from numpy alone: class templates plus per-example noise.

    Each class has a fixed pattern, constant on 4x4 blocks; an example is
    `0.6 * template[label] + 0.8 * noise`, about zero mean and unit variance like normalised
    images. Labels are uniform over the classes. Every example is a pure function of
    `(seed, split, index)`, so the data set is fixed and only its order changes by epoch.
    """

    def __init__(
        self,
        *,
        num_classes: int,
        train_size: int,
        test_size: int,
        batch_size: int,
        eval_batch_size: int,
        seed: int,
        reserved_classes: int = 0,
        reserved_rate: float = 1.0,
        process_index: int | None = None,
        process_count: int | None = None,
    ) -> None:
        _positive_int(train_size, "config.data.synthetic_train_size")
        _positive_int(test_size, "config.data.synthetic_test_size")
        label_rng = np.random.default_rng(_entropy(seed, _SYNTHETIC_DATA, 0))
        super().__init__(
            label_rng.integers(0, num_classes, train_size),
            label_rng.integers(0, num_classes, test_size),
            num_classes=num_classes,
            batch_size=batch_size,
            eval_batch_size=eval_batch_size,
            seed=seed,
            reserved_classes=reserved_classes,
            reserved_rate=reserved_rate,
            process_index=process_index,
            process_count=process_count,
        )
        self.image_shape = _SYNTHETIC_SHAPE
        rng = np.random.default_rng(_entropy(seed, _SYNTHETIC_DATA, 1))
        height, width, channels = _SYNTHETIC_SHAPE
        coarse = rng.standard_normal(
            (num_classes, height // _SYNTHETIC_BLOCK, width // _SYNTHETIC_BLOCK, channels),
            np.float32,
        )
        self._templates = coarse.repeat(_SYNTHETIC_BLOCK, axis=1).repeat(_SYNTHETIC_BLOCK, axis=2)

    def _examples(self, stream: int, ids: np.ndarray, labels: np.ndarray) -> np.ndarray:
        noise = np.stack(
            [
                np.random.default_rng(_entropy(self._seed, stream, i)).standard_normal(
                    _SYNTHETIC_SHAPE, np.float32
                )
                for i in ids
            ]
        )
        return 0.6 * self._templates[labels] + 0.8 * noise

    def train_batches(self, epoch: int) -> Iterator[dict[str, np.ndarray]]:
        ids = self._train_ids_for_epoch(epoch).reshape(-1, self._batch)
        return (
            {
                "image": self._examples(_SYNTHETIC_TRAIN, batch, self._train_labels[batch]),
                "label": self._train_labels[batch],
            }
            for batch in ids
        )

    def eval_batches(self) -> Iterator[dict[str, np.ndarray]]:
        ids, mask = self._eval_ids()
        return (
            {
                "image": self._examples(_SYNTHETIC_TEST, batch, self._test_labels[batch]),
                "label": self._test_labels[batch],
                "mask": batch_mask,
            }
            for batch, batch_mask in zip(
                ids.reshape(-1, self._eval_batch), mask.reshape(-1, self._eval_batch)
            )
        )


def _load_tfds(name: str, data_dir: str) -> tuple[np.ndarray, ...]:
    """`(train_images, train_labels, test_images, test_labels)` of a prepared TFDS data set."""
    _tensorflow()
    import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel

    arrays = []
    for split in ("train", "test"):
        try:
            dataset = tfds.load(
                name, split=split, data_dir=data_dir or None, download=False, as_supervised=True
            )
        except AssertionError as error:  # how TFDS reports a data set that is not prepared
            looked_in = tfds.builder(name, data_dir=data_dir or None).data_dir
            raise FileNotFoundError(
                f"TFDS data set {name!r} is not prepared: TFDS looked in {looked_in} "
                f"(config.data.dir={data_dir!r}{', the TFDS default' if not data_dir else ''}), "
                "and this pipeline never downloads. Either run "
                f"`tfds build {name} --data_dir DIR` on a machine with internet access, copy DIR "
                "here and set --config.data.dir=DIR; or use image folders with "
                "--config.data.source=folder --config.data.dir=ROOT "
                "(ROOT/train/<class>/*.jpg and ROOT/test/<class>/*.jpg)."
            ) from error
        images, labels = [], []
        # Chunks, not batch_size=-1: one graph constant per split would be slow and fragile.
        for image_chunk, label_chunk in dataset.batch(8192).as_numpy_iterator():
            images.append(image_chunk)
            labels.append(label_chunk)
        arrays += [np.concatenate(images), np.concatenate(labels).astype(np.int32)]
    return tuple(arrays)


def _image_files(class_dir: pathlib.Path) -> list[pathlib.Path]:
    return sorted(
        path
        for path in class_dir.iterdir()
        if path.is_file()
        and not path.name.startswith(".")
        and path.suffix.lower() in IMAGE_EXTENSIONS
    )


def _decode_images(paths: list[pathlib.Path]) -> np.ndarray:
    """uint8 `[N, H, W, 3]` of image files that must all have the same size."""
    tf = _tensorflow()

    def decode(path: Any) -> Any:
        return tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)

    def with_shape(path: Any) -> tuple[Any, Any]:
        image = decode(path)
        return image, tf.shape(image)

    chunk = 1024
    # Parallel decoding into batches is ~3x faster than one file at a time; padded batches
    # admit any size, so a file of another size is found below, by name.
    dataset = (
        tf.data.Dataset.from_tensor_slices([str(path) for path in paths])
        .map(with_shape, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        .padded_batch(chunk)
    )
    chunks: list[np.ndarray] = []
    expected = None
    iterator = dataset.as_numpy_iterator()
    while True:
        done = chunk * len(chunks)
        try:
            images, shapes = next(iterator)
        except StopIteration:
            break
        except tf.errors.InvalidArgumentError as error:
            for path in paths[done : done + chunk]:  # find the file tf.data could not decode
                try:
                    decode(str(path))
                except tf.errors.InvalidArgumentError:
                    raise ValueError(f"cannot decode {path}: {error.message}") from error
            raise
        if expected is None:
            expected = shapes[0]
        mismatched = np.flatnonzero(np.any(shapes != expected, axis=1))
        if mismatched.size:
            offset = mismatched[0]
            raise ValueError(
                f"{paths[done + offset]} is {tuple(shapes[offset][:2])} pixels but {paths[0]} "
                f"is {tuple(expected[:2])}; all images of a folder source must have one size"
            )
        chunks.append(images)
    return np.concatenate(chunks)


def _load_folder(root: str) -> tuple[tuple[np.ndarray, ...], list[str]]:
    """`((train_images, train_labels, test_images, test_labels), class_names)` from folders."""
    layout = "ROOT/train/<class>/*.jpg and ROOT/test/<class>/*.jpg"
    if not root:
        raise ValueError(f"config.data.dir is empty; the folder source needs ROOT with {layout}")
    root_path = pathlib.Path(root)
    splits = {}
    for split in ("train", "test"):
        split_dir = root_path / split
        if not split_dir.is_dir():
            raise ValueError(
                f"config.data.dir={root!r} has no {split}/ folder; the folder source expects "
                f"{layout}"
            )
        splits[split] = sorted(path.name for path in split_dir.iterdir() if path.is_dir())
    classes = splits["train"]
    if not classes:
        raise ValueError(f"{root_path / 'train'} has no class folders; expected {layout}")
    if splits["test"] != classes:
        raise ValueError(
            f"the class folders of {root_path / 'test'} ({splits['test']}) differ from those "
            f"of {root_path / 'train'} ({classes}); both splits need the same classes"
        )
    arrays = []
    for split in ("train", "test"):
        paths, labels = [], []
        for label, name in enumerate(classes):
            files = _image_files(root_path / split / name)
            if not files:
                raise ValueError(
                    f"{root_path / split / name} holds no image files "
                    f"({', '.join(IMAGE_EXTENSIONS)})"
                )
            paths += files
            labels += [label] * len(files)
        arrays += [_decode_images(paths), np.asarray(labels, np.int32)]
    return tuple(arrays), classes


def create_source(
    config: ml_collections.ConfigDict,
    *,
    process_index: int | None = None,
    process_count: int | None = None,
) -> DataSource:
    """The data source `config` describes.

    Reads `config.seed`, `config.batch_size`, `config.eval_batch_size` (global sizes) and
    `config.data`: `name` ('cifar100' | 'cifar10': TFDS name, class count, normalisation),
    `source` ('tfds' | 'folder' | 'synthetic'), `dir`, `reserved_classes`, `reserved_rate`,
    `synthetic_train_size`, `synthetic_test_size`.

    Args:
      config: the experiment configuration.
      process_index, process_count: this process among the data-parallel ones; default to
        `jax.process_index()` and `jax.process_count()` (tests simulate several).
    Returns:
      a `DataSource`.
    """
    data = config.data
    if data.name not in DATASETS:
        raise ValueError(
            f"config.data.name={data.name!r} is unknown; use one of {', '.join(DATASETS)}"
        )
    if data.source not in SOURCES:
        raise ValueError(
            f"config.data.source={data.source!r} is unknown; use one of {', '.join(SOURCES)}"
        )
    spec = DATASETS[data.name]
    batching = dict(
        batch_size=config.batch_size,
        eval_batch_size=config.eval_batch_size,
        seed=config.seed,
        reserved_classes=data.reserved_classes,
        reserved_rate=data.reserved_rate,
        process_index=process_index,
        process_count=process_count,
    )
    if data.source == "synthetic":
        return SyntheticSource(
            num_classes=spec.num_classes,
            train_size=data.synthetic_train_size,
            test_size=data.synthetic_test_size,
            **batching,
        )
    directory = os.path.expanduser(os.fspath(data.dir))
    if data.source == "tfds":
        arrays, num_classes = _load_tfds(spec.tfds_name, directory), spec.num_classes
    else:
        arrays, classes = _load_folder(directory)
        num_classes = len(classes)
    return ArraySource(*arrays, num_classes=num_classes, mean=spec.mean, std=spec.std, **batching)
