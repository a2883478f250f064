"""ImageNet-style data sets, never held in memory: images read and decoded example by example.

From TFDS's prepared `imagenet2012` records (`TFDSImageSource`, see it for the manual download
and `tfds build`) or from ImageNet-style folders (`FolderImageSource`: `DIR/train/<wnid>/*.JPEG`,
`DIR/val/<wnid>/*.JPEG` or `DIR/test/<wnid>/*`), by a parallel tf.data pipeline with
`augment`'s ImageNet recipe. The folder source shuffles and shards as every `DataSource`; the
TFDS source gives each process its own contiguous 1/P of the records, shuffles their files and
a `shuffle_buffer` of records with seeds from `(seed, epoch)`, and seeds each example's crop
and flip from `(seed, epoch, file name)`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from catkd_jax.data import augment
from catkd_jax.data.base import SHUFFLE, DataSource, import_tensorflow, positive_int
from catkd_jax.errors import ConfigError, InputError, MissingInputError


DEFAULT_SHUFFLE_BUFFER = 16384  # records in the TFDS source's shuffle buffer


def _stream_options() -> Any:
    tf = import_tensorflow()
    options = tf.data.Options()
    options.deterministic = True
    # The parallel map over examples is the parallelism; threads within an op would oversubscribe.
    options.threading.max_intra_op_parallelism = 1
    return options


class _StreamedImages(DataSource):
    """What the streamed ImageNet sources share: the recipe's constants and the normalisation."""

    _image_size: int

    def _set_recipe(
        self, image_size: int, mean: tuple[float, float, float], std: tuple[float, float, float]
    ) -> None:
        self._image_size = positive_int(image_size, "config.data.image_size")
        self.image_shape = (self._image_size, self._image_size, 3)
        self.mean, self.std = tuple(mean), tuple(std)

    def _normalize(self, images: Any) -> Any:
        return (images / 255.0 - self.mean) / self.std

    def _finish(self, dataset: Any, batch: int) -> Any:
        """Batches `(image, label, ...)` examples (the last batch may be smaller), normalises the
        images and prefetches."""
        tf = import_tensorflow()
        return (
            dataset.batch(batch)
            .map(lambda images, *rest: (self._normalize(images), *rest))
            .prefetch(tf.data.AUTOTUNE)
            .with_options(_stream_options())
        )


class FolderImageSource(_StreamedImages):
    """ImageNet-style image folders, each file read and decoded when its batch is made.

    Batching is `DataSource`'s (so reduction, the per-epoch order and the process slices are
    exactly those of the other sources); each example's random-resized crop and flip derive
    from `(seed, epoch, its index)`.

    Args:
      train_files, test_files: the image files of each split, in data-set order.
      train_labels, test_labels: `[N]` integer labels.
      image_size: side of the square images the batches hold.
      mean, std: per-channel normalisation constants on the [0, 1] pixel scale.
      The other arguments as `DataSource`: class count and names, global batch sizes, seed,
      reduction, this process.
    """

    def __init__(
        self,
        train_files: Sequence[str],
        train_labels: np.ndarray,
        test_files: Sequence[str],
        test_labels: np.ndarray,
        *,
        image_size: int,
        mean: tuple[float, float, float],
        std: tuple[float, float, float],
        **batching: Any,
    ) -> None:
        for name, files, labels in (
            ("train", train_files, train_labels),
            ("test", test_files, test_labels),
        ):
            if len(files) != len(labels):
                raise ValueError(f"{len(files)} {name} files but {len(labels)} labels")
        super().__init__(train_labels, test_labels, **batching)
        self._set_recipe(image_size, mean, std)
        tf = import_tensorflow()
        self._train_files = tf.constant(list(train_files), tf.string)
        self._test_files = tf.constant(list(test_files), tf.string)

    def train_batches(self, epoch: int, first_step: int = 0) -> Iterator[dict[str, np.ndarray]]:
        tf = import_tensorflow()
        ids = self._train_ids_for_epoch(epoch, first_step)
        epoch_seed = tf.constant(self._augmentation_seed(epoch))
        size = self._image_size

        def load(index: Any, label: Any) -> tuple[Any, Any]:
            # Seeded by the example's index, not its position: any process count gives the same.
            seed = tf.random.experimental.stateless_fold_in(epoch_seed, index)
            encoded = tf.io.read_file(tf.gather(self._train_files, index))
            return augment.train_image(encoded, seed, size), label

        dataset = tf.data.Dataset.from_tensor_slices((ids, self._train_labels[ids])).map(
            load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True
        )
        dataset = self._finish(dataset, self._batch)
        return (
            {"image": images, "label": labels} for images, labels in dataset.as_numpy_iterator()
        )

    def _unaugmented(self, train: bool) -> Iterator[dict[str, np.ndarray]]:
        tf = import_tensorflow()
        size = self._image_size
        files = self._train_files if train else self._test_files

        def load(index: Any, label: Any, valid: Any) -> tuple[Any, Any, Any]:
            return augment.eval_image(tf.io.read_file(tf.gather(files, index)), size), label, valid

        dataset = tf.data.Dataset.from_tensor_slices(self._split_ids(train)).map(
            load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True
        )
        return (
            {"image": images, "label": labels, "mask": mask}
            for images, labels, mask in self._finish(dataset, self._eval_batch).as_numpy_iterator()
        )


class TFDSImageSource(_StreamedImages):
    """TFDS's `imagenet2012` records (its 'train' and 'validation' splits), streamed.

    TFDS cannot download ImageNet. Prepare it once: register at
    https://image-net.org/download-images, put `ILSVRC2012_img_train.tar` (138 GB) and
    `ILSVRC2012_img_val.tar` (6.3 GB) in `DIR/downloads/manual/`, then run
    `tfds build imagenet2012 --data_dir DIR --manual_dir DIR/downloads/manual` (it writes
    about 150 GB of records to `DIR/imagenet2012/`), and train with
    `--config.data.dir=DIR`.

    Each process reads its own contiguous 1/P of each split's records (TFDS wrote them in
    shuffled order). An epoch shuffles the order of that slice's files and then the records in
    a buffer of `shuffle_buffer`, with seeds from `(seed, epoch)`, so it is reproducible for a
    given process count. Each example's random-resized crop and flip derive from
    `(seed, epoch, its file name)`. Every process yields `steps_per_epoch` batches, the last
    one of its share of `last_batch_size` (the records left over are skipped, different ones
    each epoch), and the same number of eval batches, padded and masked. Training-set
    reduction is not available: it needs every label up front (use the folder source).

    Args:
      data_dir: TFDS's data directory ('' = TFDS's default).
      image_size, mean, std: as `FolderImageSource`.
      shuffle_buffer: records in the shuffle buffer (each about 110 kB of JPEG).
      The other arguments as `DataSource`: global batch sizes, seed, reduction (which must be
      off), this process, `drop_remainder` and `device_count`.
    """

    NAME = "imagenet2012"

    def __init__(
        self,
        data_dir: str,
        *,
        image_size: int,
        mean: tuple[float, float, float],
        std: tuple[float, float, float],
        shuffle_buffer: int,
        batch_size: int,
        eval_batch_size: int,
        seed: int,
        reserved_classes: int = 0,
        reserved_rate: float = 1.0,
        process_index: int | None = None,
        process_count: int | None = None,
        drop_remainder: bool = False,
        device_count: int | None = None,
    ) -> None:
        if reserved_classes or reserved_rate != 1.0:
            raise ConfigError(
                f"config.data.reserved_classes={reserved_classes} and reserved_rate="
                f"{reserved_rate} need every training label up front, which the streamed TFDS "
                f"{self.NAME} does not read; use 0 and 1.0, or image folders with "
                "--config.data.source=folder"
            )
        self._init_batching(batch_size, eval_batch_size, seed, process_index, process_count, drop_remainder,
                            device_count)
        self._set_recipe(image_size, mean, std)
        self._shuffle_buffer = positive_int(shuffle_buffer, "config.data.shuffle_buffer")
        self._builder = _imagenet_builder(self.NAME, data_dir)
        info = self._builder.info
        self.class_names = [str(name) for name in info.features["label"].names]
        self.num_classes = len(self.class_names)
        self.num_train = info.splits["train"].num_examples
        self.num_eval = info.splits["validation"].num_examples
        if self.num_train < batch_size:
            raise ConfigError(
                f"{self.num_train} training examples, fewer than one batch of "
                f"config.batch_size={batch_size}; lower the batch size"
            )
        if self.num_eval == 0:
            raise InputError("the validation split is empty; it needs at least one example")
        self._plan_epochs()

    def _slice(self, count: int) -> tuple[int, int]:
        """This process's `[start, stop)` of a split of `count` records."""
        index, processes = self._process_index, self._process_count
        return count * index // processes, count * (index + 1) // processes

    def records(self, split: str, count: int, shuffle_seed: int | None = None) -> Any:
        """This process's records of `split` (`count` in all): {"image": JPEG bytes, "label",
        "file_name"}, in stored order, or with the files shuffled by `shuffle_seed`."""
        import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel

        start, stop = self._slice(count)
        read_config = tfds.ReadConfig(
            shuffle_seed=shuffle_seed,
            try_autocache=False,  # never cache ImageNet in memory
            options=_stream_options(),
        )
        return self._builder.as_dataset(
            split=f"{split}[{start}:{stop}]",
            shuffle_files=shuffle_seed is not None,
            read_config=read_config,
            decoders={"image": tfds.decode.SkipDecoding()},
        )

    def train_batches(self, epoch: int, first_step: int = 0) -> Iterator[dict[str, np.ndarray]]:
        tf = import_tensorflow()
        first_step = self._first_step(first_step)
        file_seed, buffer_seed = self._epoch_entropy(SHUFFLE, epoch).generate_state(2, np.uint32)
        epoch_seed = tf.constant(self._augmentation_seed(epoch))
        size = self._image_size

        def augmented(record: dict[str, Any]) -> tuple[Any, Any]:
            # Seeded by the example's file name, so neither the order nor the process count matters.
            key = tf.strings.to_hash_bucket_fast(record["file_name"], 2**63 - 1)
            seed = tf.random.experimental.stateless_fold_in(epoch_seed, key)
            return augment.train_image(record["image"], seed, size), tf.cast(record["label"], tf.int32)

        # Every process takes the same share of each global batch (`_batch_sizes`) from its
        # records; skipped and unused records are only read, never decoded.
        shares = self._batch_sizes() // self._process_count
        dataset = (
            self.records("train", self.num_train, shuffle_seed=int(file_seed))
            .shuffle(self._shuffle_buffer, seed=int(buffer_seed))
            .skip(int(shares[:first_step].sum()))
            .take(int(shares[first_step:].sum()))
            .map(augmented, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        )
        dataset = self._finish(dataset, self._batch)
        return (
            {"image": images, "label": labels} for images, labels in dataset.as_numpy_iterator()
        )

    def _unaugmented(self, train: bool) -> Iterator[dict[str, np.ndarray]]:
        """This process's slice of the 'train' or 'validation' split (see the class doc),
        un-augmented, padded to every process's batch count."""
        tf = import_tensorflow()
        size = self._image_size
        split, count = ("train", self.num_train) if train else ("validation", self.num_eval)
        start, stop = self._slice(count)
        # The largest slice (`count / P` rounded up) decides the batch count of every process.
        largest_slice = math.ceil(count / self._process_count)
        num_batches = math.ceil(largest_slice / self._eval_batch)
        padding = tf.data.Dataset.from_tensors(
            (tf.zeros([size, size, 3], tf.float32), tf.constant(0, tf.int32), tf.constant(False))
        ).repeat(num_batches * self._eval_batch - (stop - start))
        if stop > start:
            dataset = self.records(split, count).map(
                lambda record: (
                    augment.eval_image(record["image"], size),
                    tf.cast(record["label"], tf.int32),
                    tf.constant(True),
                ),
                num_parallel_calls=tf.data.AUTOTUNE,
                deterministic=True,
            ).concatenate(padding)
        else:
            dataset = padding
        return (
            {"image": images, "label": labels, "mask": mask}
            for images, labels, mask in self._finish(dataset, self._eval_batch).as_numpy_iterator()
        )


def _imagenet_builder(name: str, data_dir: str) -> Any:
    """TFDS's builder of the prepared `name` (imagenet2012), or a FileNotFoundError saying how."""
    import_tensorflow()
    import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel

    builder = tfds.builder(name, data_dir=data_dir or None)
    missing = [split for split in ("train", "validation") if split not in builder.info.splits]
    if missing:
        where = data_dir or "DIR"
        state = (
            "is not prepared"
            if len(missing) == 2 or not builder.info.splits
            else f"is prepared without its {' and '.join(missing)} split"
        )
        raise MissingInputError(
            f"TFDS data set {name!r} {state}: TFDS looked in {builder.data_dir} "
            f"(config.data.dir={data_dir!r}{', the TFDS default' if not data_dir else ''}), "
            "and this pipeline never downloads. TFDS cannot download ImageNet: register at "
            "https://image-net.org/download-images, put ILSVRC2012_img_train.tar and "
            f"ILSVRC2012_img_val.tar in {where}/downloads/manual/, run `tfds build {name} "
            f"--data_dir {where} --manual_dir {where}/downloads/manual` (about 150 GB of "
            f"records) and set --config.data.dir={where}; or use image folders with "
            "--config.data.source=folder --config.data.dir=ROOT "
            "(ROOT/train/<wnid>/*.JPEG and ROOT/val/<wnid>/*.JPEG)."
        )
    return builder
