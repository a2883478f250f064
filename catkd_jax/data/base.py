"""What every data source shares: data-set constants, seeds, reduction and batching.

`DataSource` computes each epoch's global order of the (reduced) training set from
`(seed, epoch)`, cuts it into global batches (the last one smaller, as PyTorch's DataLoader
makes it, unless `drop_remainder`) and hands each process its contiguous slice; the
test set is read in fixed order, the last batch padded and masked. Everything random derives
from `(seed, epoch)`: the shuffle and each example's augmentation (from its index in the data
set, through stateless ops), so a batch never depends on threading, on the number of processes,
or on where an interrupted run resumed. Subclasses supply the images: `train_batches` and
`_unaugmented`.
"""

from __future__ import annotations

import abc
import dataclasses
import functools
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import jax
import numpy as np

from catkd_jax import console

from catkd_jax.errors import ConfigError, InputError


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    tfds_name: str
    num_classes: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    image_size: int = 32  # the native side of the training images (data.image_size=0)
    # Streamed file by file with the ImageNet recipe (random-resized crops), not held in memory.
    streamed: bool = False


DATASETS = {
    "cifar100": DatasetSpec(
        "cifar100", 100, mean=(0.5071, 0.4867, 0.4408), std=(0.2675, 0.2565, 0.2761)
    ),
    "cifar10": DatasetSpec(
        "cifar10", 10, mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616)
    ),
    # STL-10's labelled 'train' (5,000) and 'test' (8,000) splits, 96x96 images; the linear probe
    # resizes them. Mean and std are those of the train split.
    "stl10": DatasetSpec(
        "stl10", 10, mean=(0.4467, 0.4398, 0.4066), std=(0.2603, 0.2566, 0.2713), image_size=96
    ),
    "imagenet2012": DatasetSpec(
        "imagenet2012",
        1000,
        mean=(0.485, 0.456, 0.406),
        std=(0.229, 0.224, 0.225),
        image_size=224,
        streamed=True,
    ),
}

# Each random stream has its own number, so no two streams ever share a seed sequence.
(SHUFFLE, AUGMENT, SYNTHETIC_DATA, SYNTHETIC_TRAIN, SYNTHETIC_TEST, SHAPES_DATA, TRIVIAL_AUGMENT,
 CONTRAST) = range(8)


# CRD's contrastive sampling modes (`DataSource.contrastive_train_batches`).
CONTRAST_MODES = ("exact", "relax")


def _first_time(seen: set[str]) -> Callable[[str], bool]:
    """Whether a stderr line is new; lines differing only in their log prefix (time, thread:
    "I0000 00:00:1796003875.358 15128 port.cc:153] text") count as the same."""

    def first(line: str) -> bool:
        text = line.split("] ", 1)[-1]
        new = text not in seen
        seen.add(text)
        return new

    return first


@functools.lru_cache(maxsize=None)
def import_tensorflow() -> Any:
    """TensorFlow, imported on first use, restricted to the CPU; its start-up lines hidden, and
    any other line it prints shown once."""
    # Its C++ libraries each print the same lines (oneDNN, absl) when imported.
    first_time = _first_time(set())
    with console.filtered_stderr(lambda line: not console.is_start_up_line(line) and first_time(line)):
        import tensorflow as tf  # pylint: disable=import-outside-toplevel

        try:  # (which loads more of its libraries, and their lines)
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
        raise ConfigError(
            f"config.data.reserved_classes={reserved_classes} is outside 0..{num_classes} "
            f"(the data set has {num_classes} classes); use 0 to keep all classes"
        )
    if not 0.0 < reserved_rate <= 1.0:
        raise ConfigError(
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


def seed_sequence(seed: int, stream: int, *words: int) -> np.random.SeedSequence:
    # SeedSequence takes non-negative integers only; the modulus keeps negative seeds usable.
    return np.random.SeedSequence([int(seed) % 2**64, stream, *(int(word) for word in words)])


def _draw_other_class(rng: np.random.Generator, labels: np.ndarray, label: int, count: int, members: int) -> np.ndarray:
    """`[count]` positions drawn uniformly, with replacement, among those whose `labels` are not
    `label` (`members` of them are): uniform draws over all, those of the class rejected."""
    drawn: list[np.ndarray] = []
    needed = count
    while needed > 0:
        draws = rng.integers(0, len(labels), int(needed * len(labels) / (len(labels) - members) * 1.05) + 16)
        kept = draws[labels[draws] != label][:needed]
        drawn.append(kept)
        needed -= len(kept)
    return np.concatenate(drawn)


def positive_int(value: Any, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ConfigError(f"{field} must be a positive integer, got {value!r}")
    return int(value)


class DataSource(abc.ABC):
    """Batching shared by all sources: reduction, per-epoch order, process slices, eval padding.

    Args:
      train_labels, test_labels: `[N]` integer labels of each split, in data-set order.
      num_classes: the data set's class count.
      batch_size, eval_batch_size: global batch sizes, multiples of `process_count`.
      seed: determines every epoch's order and augmentation.
      class_names: `num_classes` names, in label order; default `"0", "1", ...`.
      reserved_classes, reserved_rate: training-set reduction, see `reduce_training_set`.
      process_index, process_count: this process among the data-parallel ones; default to
        `jax.process_index()` and `jax.process_count()`.
      drop_remainder: leave out the examples after an epoch's last full batch, so every batch
        holds `batch_size`; else they make a last, smaller batch.
      device_count: the devices of all processes a global batch is split over; default
        `jax.device_count()`. A smaller last batch is cut to a multiple of it (and of
        `process_count`), so it still splits evenly; what is cut sits the epoch out.

    Attributes:
      num_classes: classes of the model's output (the test set keeps all of them).
      class_names: `num_classes` names, label i's at index i.
      image_shape: `(H, W, 3)` of every image (set by subclasses).
      mean, std: per-channel constants of the normalisation `(x / 255 - mean) / std` (set by
        subclasses); `display_images` undoes it.
      num_train: training examples after reduction, over all processes.
      num_eval: test examples, over all processes.
      steps_per_epoch: batches of an epoch: `num_train // batch_size` full ones, then (unless
        `drop_remainder`) one of the examples left over, as PyTorch's DataLoader without
        `drop_last` (`ceil(num_train / batch_size)` on one device).
      last_batch_size: global size of each epoch's last batch (`batch_size` when it is full).
      unused_per_epoch: training examples each epoch leaves out (`remainder_note` says why):
        the last ones of its shuffled order, so different ones each epoch.
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
        class_names: Sequence[str] | None = None,
        reserved_classes: int = 0,
        reserved_rate: float = 1.0,
        process_index: int | None = None,
        process_count: int | None = None,
        drop_remainder: bool = False,
        device_count: int | None = None,
    ) -> None:
        if class_names is None:
            class_names = [str(label) for label in range(num_classes)]
        if len(class_names) != num_classes:
            raise ValueError(f"{len(class_names)} class names for {num_classes} classes")
        self._init_batching(batch_size, eval_batch_size, seed, process_index, process_count, drop_remainder,
                            device_count)
        self._train_labels = np.asarray(train_labels, np.int32)
        self._test_labels = np.asarray(test_labels, np.int32)
        self._train_ids = reduce_training_set(
            self._train_labels, num_classes, reserved_classes, reserved_rate
        )
        self.num_classes = num_classes
        self.class_names = [str(name) for name in class_names]
        self.num_train = len(self._train_ids)
        self.num_eval = len(self._test_labels)
        if self.num_train < batch_size:
            raise ConfigError(
                f"{self.num_train} training examples remain (config.data.reserved_classes="
                f"{reserved_classes}, reserved_rate={reserved_rate}), fewer than one batch of "
                f"config.batch_size={batch_size}; lower the batch size or keep more data"
            )
        if self.num_eval == 0:
            raise InputError("the test set is empty; a source needs at least one test example")
        self._plan_epochs()

    def _init_batching(
        self,
        batch_size: int,
        eval_batch_size: int,
        seed: int,
        process_index: int | None,
        process_count: int | None,
        drop_remainder: bool,
        device_count: int | None,
    ) -> None:
        """Checks and keeps the batch sizes, the seed and this process's place among them."""
        if not isinstance(drop_remainder, (bool, np.bool_)):
            raise ConfigError(f"config.data.drop_remainder must be True or False, got {drop_remainder!r}")
        device_count = jax.device_count() if device_count is None else device_count
        process_count = jax.process_count() if process_count is None else process_count
        process_index = jax.process_index() if process_index is None else process_index
        if not 0 <= process_index < process_count:
            raise ValueError(f"process_index {process_index} is outside 0..{process_count - 1}")
        for field, size in (
            ("config.batch_size", batch_size),
            ("config.eval_batch_size", eval_batch_size),
        ):
            if positive_int(size, field) % process_count:
                raise ConfigError(
                    f"{field}={size} is not divisible by the {process_count} processes; "
                    f"set it to a multiple of {process_count}"
                )
        self._global_batch = batch_size
        self._global_eval_batch = eval_batch_size
        self._batch = batch_size // process_count
        self._eval_batch = eval_batch_size // process_count
        self._process_index = process_index
        self._process_count = process_count
        self._seed = seed
        self._drop_remainder = bool(drop_remainder)
        # A last batch must split evenly over the devices and the processes (in a real job
        # the device count is a multiple of the process count; tests simulate processes).
        self._shards = math.lcm(positive_int(device_count, "device_count"), process_count)

    def _plan_epochs(self) -> None:
        """Sets `steps_per_epoch`, `last_batch_size` and `unused_per_epoch` from `num_train`."""
        full_batches, remainder = divmod(self.num_train, self._global_batch)
        last = 0 if self._drop_remainder else remainder - remainder % self._shards
        self.steps_per_epoch = full_batches + (last > 0)
        self.last_batch_size = last or self._global_batch
        self.unused_per_epoch = remainder - last

    def remainder_note(self) -> str:
        """One line on the training examples each epoch leaves out and why; '' if it uses all."""
        if not self.unused_per_epoch:
            return ""
        left_out = (f"{self.unused_per_epoch} of the {self.num_train} training images sit out each epoch "
                    "(the last of its shuffled order, different ones each epoch)")
        if self._drop_remainder:
            return f"{left_out}: config.data.drop_remainder is set, so every batch holds {self._global_batch}."
        remainder = self.num_train % self._global_batch
        if self.last_batch_size < self._global_batch:
            return (f"{left_out}: the {remainder} images after the last full batch make a last batch of "
                    f"{self.last_batch_size}, a multiple of the {self._shards} devices it is split over.")
        return (f"{left_out}: the {remainder} images after the last full batch are fewer than the "
                f"{self._shards} devices a batch is split over.")

    def _epoch_entropy(self, stream: int, epoch: int) -> np.random.SeedSequence:
        if isinstance(epoch, bool) or not isinstance(epoch, (int, np.integer)) or epoch < 1:
            raise ValueError(f"epoch must be an integer >= 1 (epochs count from 1), got {epoch!r}")
        return seed_sequence(self._seed, stream, epoch)

    def _batch_sizes(self) -> np.ndarray:
        """`[steps_per_epoch]` global sizes of an epoch's batches: `batch_size`, then
        `last_batch_size`."""
        sizes = np.full(self.steps_per_epoch, self._global_batch)
        sizes[-1] = self.last_batch_size
        return sizes

    def _train_position_batches(self, epoch: int, first_step: int = 0) -> list[np.ndarray]:
        """This process's positions in the (reduced) training set, `0 .. num_train - 1`, of each
        of `epoch`'s batches from batch `first_step` on: its contiguous `1 / process_count` of
        each global batch, so `[B]` of a full one."""
        first_step = self._first_step(first_step)
        rng = np.random.default_rng(self._epoch_entropy(SHUFFLE, epoch))
        order = rng.permutation(self.num_train)
        ends = np.cumsum(self._batch_sizes())
        batches = np.split(order[: ends[-1]], ends[:-1])[first_step:]
        shares = [len(batch) // self._process_count for batch in batches]
        return [batch[self._process_index * share : (self._process_index + 1) * share]
                for batch, share in zip(batches, shares)]

    def _train_id_batches(self, epoch: int, first_step: int = 0) -> list[np.ndarray]:
        """`_train_position_batches` as data-set indices."""
        return [self._train_ids[batch] for batch in self._train_position_batches(epoch, first_step)]

    def _train_ids_for_epoch(self, epoch: int, first_step: int = 0) -> np.ndarray:
        """`_train_id_batches` concatenated: cut into batches of `B`, the last may be smaller."""
        return np.concatenate([np.zeros(0, np.int64), *self._train_id_batches(epoch, first_step)])

    def _first_step(self, first_step: int) -> int:
        if isinstance(first_step, bool) or not isinstance(first_step, (int, np.integer)) or not (
            0 <= first_step <= self.steps_per_epoch
        ):
            raise ValueError(f"first_step must be an integer in 0..{self.steps_per_epoch}, got {first_step!r}")
        return int(first_step)

    def _augmentation_seed(self, epoch: int) -> np.ndarray:
        """`[2]` int64 seed of `epoch`'s stateless augmentation (same in every process)."""
        return self._epoch_entropy(AUGMENT, epoch).generate_state(2, np.uint32).astype(np.int64)

    def _eval_ids(self, count: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """`([n * B], [n * B])`: this process's test indices and mask, in batch order.

        Global batch j holds test examples `j * G .. (j + 1) * G - 1` (G the global eval batch);
        positions past the end are padding, masked out and filled with example 0. `count`
        (default `num_eval`) is the number of examples to visit.
        """
        count = self.num_eval if count is None else count
        num_batches = -(-count // self._global_eval_batch)
        positions = np.arange(num_batches * self._global_eval_batch).reshape(num_batches, -1)
        start = self._process_index * self._eval_batch
        positions = positions[:, start : start + self._eval_batch].reshape(-1)
        mask = positions < count
        return np.where(mask, positions, 0), mask

    def _split_ids(self, train: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """`(ids, labels, mask)`, each `[n * B]`: this process's share of a split, un-shuffled.

        The batch order of `_eval_ids`, over the test split or (`train`) the reduced training
        split: `ids` index the split's data-set order (padding: its first kept example),
        `labels` are theirs.
        """
        if train:
            positions, mask = self._eval_ids(self.num_train)
            ids = self._train_ids[positions]
            return ids, self._train_labels[ids], mask
        ids, mask = self._eval_ids()
        return ids, self._test_labels[ids], mask

    def _split_id_batches(self, train: bool) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """`_split_ids(train)` cut into this process's eval batches, `([B], [B], [B])` each."""
        return zip(*(part.reshape(-1, self._eval_batch) for part in self._split_ids(train)))

    def display_images(self, images: np.ndarray) -> np.ndarray:
        """Normalised images `[..., H, W, 3]` (any source's) -> uint8 pixels of the same shape."""
        pixels = (np.asarray(images, np.float32) * self.std + self.mean) * 255.0
        return np.clip(np.round(pixels), 0, 255).astype(np.uint8)

    @abc.abstractmethod
    def train_batches(self, epoch: int, first_step: int = 0) -> Iterator[dict[str, np.ndarray]]:
        """This process's `steps_per_epoch` augmented training batches of `epoch` (from 1).

        With `first_step`, the epoch's batches from that one on (exactly those of a full pass,
        which resumes an epoch interrupted after `first_step` steps).

        Returns:
          an iterator of {"image": float32 `[B, H, W, 3]` normalised, "label": int32 `[B]`},
          with B the global batch size over the process count; in the last batch,
          `last_batch_size` over the process count.
        """

    def contrastive_train_batches(
        self, epoch: int, first_step: int = 0, num_negatives: int = 16384, mode: str = "exact"
    ) -> Iterator[dict[str, np.ndarray]]:
        """`train_batches`, each with its examples' contrastive indices, as the original's
        CIFAR-100 "sample" loader for CRD (`CIFAR100InstanceSample`) gives them.

        Indices are positions in the (reduced) training set, `0 .. num_train - 1` (the rows of a
        memory bank of `num_train` examples). Each example's draws come from its own stream of
        `(seed, epoch, position)`: a batch's indices never depend on the process count or on
        where a run resumed.

        Args:
          num_negatives: k, the negatives drawn per example: uniformly, with replacement, among
            the training examples of the other classes.
          mode: the first contrastive index: 'exact', the example's own; 'relax', an example of
            its class drawn uniformly (possibly itself).
        Returns:
          `train_batches(epoch, first_step)`'s batches with "index": int32 `[B]` and
          "contrast_index": int32 `[B, 1 + num_negatives]`.
        """
        if mode not in CONTRAST_MODES:
            raise ConfigError(f"the contrastive sampling mode must be 'exact' or 'relax', got {mode!r}")
        labels = self._train_labels[self._train_ids]
        counts = np.bincount(labels, minlength=self.num_classes)
        if np.count_nonzero(counts) < 2:
            raise ConfigError("contrastive negatives come from other classes, but the training set holds one class; "
                              "keep at least two (config.data.reserved_classes)")
        for batch, positions in zip(self.train_batches(epoch, first_step),
                                    self._train_position_batches(epoch, first_step)):
            # The images come from `train_batches` (tf.data for some sources), the rows from the
            # same order here: a batch whose labels are not its rows' would update other examples' rows.
            if not np.array_equal(batch["label"], labels[positions]):
                raise RuntimeError("contrastive rows out of step with the training batches' examples")
            contrast = np.empty((len(positions), 1 + num_negatives), np.int32)
            for row, (position, label) in enumerate(zip(positions, labels[positions])):
                rng = np.random.default_rng(seed_sequence(self._seed, CONTRAST, epoch, position))
                contrast[row, 0] = position if mode == "exact" else rng.choice(np.flatnonzero(labels == label))
                contrast[row, 1:] = _draw_other_class(rng, labels, label, num_negatives, counts[label])
            yield batch | {"index": positions.astype(np.int32), "contrast_index": contrast}

    @abc.abstractmethod
    def _unaugmented(self, train: bool) -> Iterator[dict[str, np.ndarray]]:
        """`train_eval_batches()` if `train`, else `eval_batches()`."""

    def eval_batches(self) -> Iterator[dict[str, np.ndarray]]:
        """This process's share of the test set, in fixed order, un-augmented.

        Every process yields the same number of batches, and over all processes each test
        example is unmasked exactly once.

        Returns:
          an iterator of {"image": float32 `[B, H, W, 3]`, "label": int32 `[B]`,
          "mask": bool `[B]`}, with B the global eval batch size over the process count
          (the shapes source adds "box").
        """
        return self._unaugmented(train=False)

    def train_eval_batches(self) -> Iterator[dict[str, np.ndarray]]:
        """The training split (after reduction) as `eval_batches` reads the test split.

        Un-augmented, in data-set order, in the same batches, keys and dtypes, split between
        the processes alike (the last batch padded and masked); for linear probing.
        """
        return self._unaugmented(train=True)
