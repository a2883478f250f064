"""Training and test data (CIFAR, ImageNet): `create_source(config)` returns a `DataSource`:

    source.num_classes, source.class_names, source.image_shape
    source.num_train, source.num_eval, source.steps_per_epoch, source.last_batch_size
    source.train_batches(epoch, first_step=0)  # {"image": float32 [B, H, W, 3], "label": int32 [B]}
    source.remainder_note()      # '' or a line on the training images each epoch leaves out
    source.eval_batches()        # the same plus "mask": bool [B], False on padding
    source.train_eval_batches()  # the training split as eval_batches reads the test split
    source.display_images(images)  # normalised images back to uint8 [B, H, W, 3]

B is this process's share of the global batch size (of the smaller last batch of an epoch:
`data.drop_remainder` in default_config.py). One module per kind of source:

* 'tfds' (`cifar`): TensorFlow Datasets' cifar100 / cifar10 / stl10 (96x96, for linear
  probing), read once into memory (never downloaded); imagenet2012 is streamed (`imagenet`).
* 'folder' (`folders`): `DIR/train/<class>/*.jpg` and `DIR/test/<class>/*.jpg` (also png, bmp,
  gif), read into memory for CIFAR-style sets, streamed for imagenet2012 (`imagenet`).
* 'npz' (`npz`): CIFAR-style arrays from one .npz file, batched and augmented by numpy alone,
  for machines without TensorFlow.
* 'synthetic' (`generated`): learnable random images from numpy alone, for smoke runs.
* 'shapes' (`generated`): five classes of simple objects on textured backgrounds, each with its
  object's bounding box (batches add "box": int32 [B, 4]), to check CAMs against.

Batching, reduction, determinism and the split between processes are `base.DataSource`'s;
augmentation is `augment`'s (and `trivial_augment`'s). TensorFlow is imported only by the 'tfds'
and 'folder' sources.
"""

from __future__ import annotations

import os

import ml_collections
import numpy as np

from catkd_jax.data.base import DATASETS, DataSource, DatasetSpec, reduce_training_set
from catkd_jax.data.cifar import ArraySource, load_tfds
from catkd_jax.data.folders import list_image_folders, load_folder
from catkd_jax.data.generated import SHAPES_CLASSES, ShapesSource, SyntheticSource
from catkd_jax.data.imagenet import DEFAULT_SHUFFLE_BUFFER, FolderImageSource, TFDSImageSource
from catkd_jax.data.npz import NumpyArraySource, load_npz, save_npz
from catkd_jax.errors import ConfigError

__all__ = [
    "DATASETS",
    "SHAPES_CLASSES",
    "AUGMENTATIONS",
    "SOURCES",
    "ArraySource",
    "DataSource",
    "DatasetSpec",
    "FolderImageSource",
    "NumpyArraySource",
    "ShapesSource",
    "SyntheticSource",
    "TFDSImageSource",
    "create_source",
    "reduce_training_set",
    "save_npz",
]


SOURCES = ("tfds", "folder", "npz", "synthetic", "shapes")

AUGMENTATIONS = ("crop_flip", "trivial_augment")



def create_source(
    config: ml_collections.ConfigDict,
    *,
    process_index: int | None = None,
    process_count: int | None = None,
    device_count: int | None = None,
) -> DataSource:
    """The data source `config` describes.

    Reads `config.seed`, `config.batch_size`, `config.eval_batch_size` (global sizes) and
    `config.data`: `source` ('tfds' | 'folder' | 'synthetic' | 'shapes'), `name` ('cifar100' |
    'cifar10' | 'stl10' | 'imagenet2012': TFDS name, class count, normalisation, recipe; ignored by
    'shapes', which has its own five classes and normalisation), `dir`, `reserved_classes`,
    `reserved_rate`, `drop_remainder`, `augment` ('crop_flip' | 'trivial_augment', the latter
    for the in-memory sources only), `synthetic_train_size`, `synthetic_test_size` (the split
    sizes of both generated sources, 'synthetic' and 'shapes'), and for imagenet2012 from
    'tfds' or 'folder' `image_size` (0 = 224) and `shuffle_buffer` ('tfds' only); a config
    without these last two, or without `drop_remainder` (False), gets their defaults.

    Args:
      config: the experiment configuration.
      process_index, process_count: this process among the data-parallel ones; default to
        `jax.process_index()` and `jax.process_count()` (tests simulate several).
      device_count: the devices a global batch is split over; default `jax.device_count()`.
    Returns:
      a `DataSource`.
    """
    data = config.data
    if data.source not in SOURCES:
        raise ConfigError(
            f"config.data.source={data.source!r} is unknown; use one of {', '.join(SOURCES)}"
        )
    augmentation = data.get("augment", "crop_flip")
    if augmentation not in AUGMENTATIONS:
        raise ConfigError(
            f"config.data.augment={augmentation!r} is unknown; use one of {', '.join(AUGMENTATIONS)}"
        )
    streamed = data.name in DATASETS and DATASETS[data.name].streamed
    if augmentation == "trivial_augment" and (data.source not in ("tfds", "folder", "npz") or streamed):
        raise ConfigError(
            f"config.data.augment='trivial_augment' is for the in-memory CIFAR-style sources "
            f"(data.source 'tfds', 'folder' or 'npz', data.name not imagenet2012), not data.source={data.source!r} "
            f"with data.name={data.name!r}; use data.augment='crop_flip' there"
        )
    batching = dict(
        batch_size=config.batch_size,
        eval_batch_size=config.eval_batch_size,
        seed=config.seed,
        reserved_classes=data.reserved_classes,
        reserved_rate=data.reserved_rate,
        process_index=process_index,
        process_count=process_count,
        drop_remainder=data.get("drop_remainder", False),
        device_count=device_count,
    )
    if data.source == "shapes":
        return ShapesSource(
            train_size=data.synthetic_train_size, test_size=data.synthetic_test_size, **batching
        )
    if data.name not in DATASETS:
        raise ConfigError(
            f"config.data.name={data.name!r} is unknown; use one of {', '.join(DATASETS)}"
        )
    spec = DATASETS[data.name]
    if data.source == "synthetic":
        return SyntheticSource(
            num_classes=spec.num_classes,
            train_size=data.synthetic_train_size,
            test_size=data.synthetic_test_size,
            **batching,
        )
    directory = os.path.expanduser(os.fspath(data.dir))
    if data.source == "npz" and spec.streamed:
        raise ConfigError("config.data.source='npz' holds CIFAR-style sets in memory, not imagenet2012")
    if spec.streamed:
        image_size = data.get("image_size", 0)
        if isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer)) or (
            image_size < 0
        ):
            raise ConfigError(
                f"config.data.image_size must be 0 (the data set's own, {spec.image_size}) or a "
                f"positive integer, got {image_size!r}"
            )
        recipe = dict(image_size=int(image_size) or spec.image_size, mean=spec.mean, std=spec.std)
        if data.source == "tfds":
            shuffle_buffer = data.get("shuffle_buffer", DEFAULT_SHUFFLE_BUFFER)
            return TFDSImageSource(
                directory, shuffle_buffer=shuffle_buffer, **recipe, **batching
            )
        (train_files, train_labels, test_files, test_labels), classes = list_image_folders(
            directory
        )
        return FolderImageSource(
            train_files,
            train_labels,
            test_files,
            test_labels,
            num_classes=len(classes),
            class_names=classes,
            **recipe,
            **batching,
        )
    if data.source == "npz":
        arrays, classes = load_npz(directory)
    elif data.source == "tfds":
        arrays, classes = load_tfds(spec.tfds_name, directory)
    else:
        arrays, classes = load_folder(directory)
    in_memory_source = NumpyArraySource if data.source == "npz" else ArraySource
    return in_memory_source(
        *arrays,
        num_classes=len(classes),
        mean=spec.mean,
        std=spec.std,
        trivial_augment=augmentation == "trivial_augment",
        class_names=classes,
        **batching,
    )
