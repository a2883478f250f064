"""CIFAR-style data sets held in memory, from TensorFlow Datasets (or, via `folders`, image folders).

Training follows mdistiller's recipe: zero-pad 4 pixels, random 32x32 crop, random horizontal
flip (`augment.padded_crop_and_flip`, seeded by each example's index), optionally then
TrivialAugmentWide (`augment.trivial_augment`), then `(x / 255 - mean) / std` per channel;
test images are only normalised. TFDS data is read once into memory and never downloaded.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from catkd_jax.data import augment
from catkd_jax.data.base import DataSource, import_tensorflow
from catkd_jax.errors import MissingInputError


def check_arrays(
    train_images: np.ndarray,
    train_labels: np.ndarray,
    test_images: np.ndarray,
    test_labels: np.ndarray,
    num_classes: int | None = None,
) -> None:
    """Raises ValueError unless the images are uint8 `[N, H, W, 3]` of one size, with one
    integer label each, in `[0, num_classes)` when `num_classes` is given."""
    for name, images, labels in (
        ("train", train_images, train_labels),
        ("test", test_images, test_labels),
    ):
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(
                f"{name} images must be uint8 [N, H, W, 3], got {images.dtype} {images.shape}"
            )
        if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(f"{name} labels must be integers [N], got {labels.dtype} {labels.shape}")
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} {name} images but {len(labels)} labels")
        # A label out of range trains to NaN (above) or to nothing (below) without an error.
        if num_classes is not None and len(labels) and not 0 <= labels.min() <= labels.max() < num_classes:
            raise ValueError(
                f"{name} labels must be in [0, {num_classes}) for {num_classes} classes, "
                f"got {labels.min()}..{labels.max()}"
            )
    if train_images.shape[1:] != test_images.shape[1:]:
        raise ValueError(
            f"train images are {train_images.shape[1:]} but test images {test_images.shape[1:]}"
        )


class InMemorySource(DataSource):
    """What the in-memory sources share: uint8 images of both splits, checked, kept as given.

    Subclasses batch and augment them (`ArraySource` with tf.data, `npz.NumpyArraySource` with
    numpy).

    Args:
      train_images, test_images: uint8 `[N, H, W, 3]`, in data-set order.
      train_labels, test_labels: `[N]` integer labels.
      mean, std: per-channel normalisation constants on the [0, 1] pixel scale.
      trivial_augment: after the crop and flip, apply TrivialAugmentWide.
      The other arguments as `DataSource`: global batch sizes, seed, class names, reduction,
      this process.
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
        trivial_augment: bool = False,
        **batching: Any,
    ) -> None:
        check_arrays(train_images, train_labels, test_images, test_labels, num_classes)
        super().__init__(train_labels, test_labels, num_classes=num_classes, **batching)
        self.image_shape = tuple(train_images.shape[1:])
        self.mean, self.std = tuple(mean), tuple(std)
        self._trivial_augment = trivial_augment
        self._train_images, self._test_images = train_images, test_images


class ArraySource(InMemorySource):
    """In-memory uint8 images, augmented (`augment.padded_crop_and_flip`, then
    `augment.trivial_augment` if asked) and batched by tf.data; arguments as `InMemorySource`."""

    def __init__(self, *arrays: np.ndarray, **settings: Any) -> None:
        super().__init__(*arrays, **settings)
        tf = import_tensorflow()
        self._train_images = tf.constant(self._train_images)
        self._test_images = tf.constant(self._test_images)

    def _normalize(self, images: Any) -> Any:
        tf = import_tensorflow()
        return (tf.cast(images, tf.float32) / 255.0 - self.mean) / self.std

    def train_batches(self, epoch: int, first_step: int = 0) -> Iterator[dict[str, np.ndarray]]:
        tf = import_tensorflow()
        ids = self._train_ids_for_epoch(epoch, first_step)
        epoch_seed = tf.constant(self._augmentation_seed(epoch))

        def augmented(index: Any, label: Any) -> tuple[Any, Any]:
            # Seeded by the example's index, not its position: any process count gives the same.
            seed = tf.random.experimental.stateless_fold_in(epoch_seed, index)
            image = augment.padded_crop_and_flip(tf.gather(self._train_images, index), seed)
            return (augment.trivial_augment(image, seed) if self._trivial_augment else image), label

        dataset = (
            tf.data.Dataset.from_tensor_slices((ids, self._train_labels[ids]))
            .map(augmented, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
            .batch(self._batch)  # the epoch's last batch may be smaller
            .map(lambda images, labels: (self._normalize(images), labels))
            .prefetch(tf.data.AUTOTUNE)
        )
        return (
            {"image": images, "label": labels} for images, labels in dataset.as_numpy_iterator()
        )

    def _unaugmented(self, train: bool) -> Iterator[dict[str, np.ndarray]]:
        tf = import_tensorflow()
        images = self._train_images if train else self._test_images
        dataset = (
            tf.data.Dataset.from_tensor_slices(self._split_ids(train))
            .batch(self._eval_batch)
            .map(
                lambda index, labels, mask: (
                    self._normalize(tf.gather(images, index)),
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


def load_tfds(name: str, data_dir: str) -> tuple[tuple[np.ndarray, ...], list[str]]:
    """`((train_images, train_labels, test_images, test_labels), class_names)` from TFDS."""
    import_tensorflow()
    import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel

    arrays = []
    for split in ("train", "test"):
        try:
            dataset = tfds.load(
                name, split=split, data_dir=data_dir or None, download=False, as_supervised=True
            )
        except AssertionError as error:  # how TFDS reports a data set that is not prepared
            looked_in = tfds.builder(name, data_dir=data_dir or None).data_dir
            raise MissingInputError(
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
    # The names come from the prepared data's metadata; TFDS gives "0", "1", ... when it has none
    # (as under tfds.testing.mock_data).
    names = tfds.builder(name, data_dir=data_dir or None).info.features["label"].names
    return tuple(arrays), list(names)
