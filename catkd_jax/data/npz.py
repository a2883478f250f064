"""CIFAR-style data sets from one `.npz` file, batched and augmented by numpy alone (no TensorFlow).

For machines without TensorFlow (an accelerator host that cannot install it): prepare the file
once where TensorFlow is (`save_npz` of `cifar.load_tfds` or `folders.load_folder`), copy it,
and train with `data.source='npz'`, `data.dir=<the file>`. The file holds `train_images` and
`test_images` (uint8 `[N, H, W, 3]`), `train_labels` and `test_labels` (`[N]` integers) and
`class_names` (`[C]` strings).

Training follows the recipe of the tf.data path (`cifar.ArraySource`): zero-pad `augment.PAD`
pixels, random crop, random horizontal flip, optionally TrivialAugmentWide, then
`(x / 255 - mean) / std` per channel; test images are only normalised (the same numbers as the
tf.data path's). The random draws come from numpy, per `(seed, epoch, example index)`: the
same distribution as the tf.data path's, not the same draws.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence

import numpy as np

from catkd_jax.data import trivial_augment
from catkd_jax.data.augment import PAD
from catkd_jax.data.base import AUGMENT, TRIVIAL_AUGMENT, seed_sequence
from catkd_jax.data.cifar import InMemorySource, check_arrays
from catkd_jax.errors import InputError, MissingInputError

_ARRAYS = ("train_images", "train_labels", "test_images", "test_labels")


def save_npz(path: str | os.PathLike, arrays: Sequence[np.ndarray], class_names: Sequence[str]) -> None:
    """Writes `(train_images, train_labels, test_images, test_labels)` and `class_names` to `path`."""
    check_arrays(*arrays)
    np.savez(path, **dict(zip(_ARRAYS, arrays)), class_names=np.asarray(class_names, dtype=str))


def load_npz(path: str | os.PathLike) -> tuple[tuple[np.ndarray, ...], list[str]]:
    """`((train_images, train_labels, test_images, test_labels), class_names)` from `path`."""
    if not os.path.isfile(path):
        raise MissingInputError(
            f"config.data.dir={os.fspath(path)!r} is not a file; data.source='npz' reads one .npz "
            "(write it with catkd_jax.data.npz.save_npz where TensorFlow is installed)"
        )
    remedy = "write it with catkd_jax.data.npz.save_npz (see catkd_jax/data/npz.py for the layout)"
    try:
        file = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as error:  # numpy's words for "not an .npy/.npz file"
        raise InputError(f"{os.fspath(path)} is not an .npz file ({error}); {remedy}") from None
    if not isinstance(file, np.lib.npyio.NpzFile):
        raise InputError(f"{os.fspath(path)} holds a single array, not an .npz of named arrays; {remedy}")
    with file:
        missing = [name for name in (*_ARRAYS, "class_names") if name not in file.files]
        if missing:
            raise InputError(f"{os.fspath(path)} lacks the arrays {', '.join(missing)}; {remedy}")
        try:
            arrays = tuple(file[name] for name in _ARRAYS)
            class_names = [str(name) for name in np.atleast_1d(file["class_names"])]
        except ValueError as error:  # an array of Python objects, which is never loaded (pickle)
            raise InputError(f"{os.fspath(path)} cannot be read without pickle ({error}); {remedy}") from None
    try:
        check_arrays(*arrays, num_classes=len(class_names))
    except ValueError as error:
        raise InputError(f"{os.fspath(path)}: {error}; {remedy}") from None
    return arrays, class_names


class NumpyArraySource(InMemorySource):
    """In-memory uint8 images, augmented and batched by numpy; arguments as `InMemorySource`."""

    def _normalize(self, images: np.ndarray) -> np.ndarray:
        # float32 throughout, as the tf.data path computes it: the same eval batches, bit for bit.
        mean, std = np.float32(self.mean), np.float32(self.std)
        return (images.astype(np.float32) / np.float32(255.0) - mean) / std

    def train_batches(self, epoch: int, first_step: int = 0) -> Iterator[dict[str, np.ndarray]]:
        ids = self._train_id_batches(epoch, first_step)
        # One draw per data-set example, not per position: any process count agrees.
        rng = np.random.default_rng(self._epoch_entropy(AUGMENT, epoch))
        offsets = rng.integers(0, 2 * PAD + 1, (len(self._train_labels), 2))
        flips = rng.random(len(self._train_labels)) < 0.5
        return (self._augmented_batch(batch, offsets[batch], flips[batch], epoch) for batch in ids)

    def _augmented_batch(self, ids: np.ndarray, offsets: np.ndarray, flips: np.ndarray, epoch: int) -> dict:
        images = self._crop_and_flip(self._train_images[ids], offsets, flips)
        if self._trivial_augment:
            images = np.stack([
                trivial_augment.trivial_augment(
                    image, np.random.default_rng(seed_sequence(self._seed, TRIVIAL_AUGMENT, epoch, index)))
                for image, index in zip(images, ids)])
        return {"image": self._normalize(images), "label": self._train_labels[ids]}

    @staticmethod
    def _crop_and_flip(images: np.ndarray, offsets: np.ndarray, flips: np.ndarray) -> np.ndarray:
        """uint8 `[B, H, W, 3]`: each image zero-padded by `PAD`, its `H x W` window at `offsets`
        `[B, 2]` (top, left in the padded image), mirrored where `flips` `[B]`."""
        count, height, width = images.shape[:3]
        padded = np.pad(images, [(0, 0), (PAD, PAD), (PAD, PAD), (0, 0)])
        rows = offsets[:, 0, None] + np.arange(height)
        columns = offsets[:, 1, None] + np.arange(width)
        columns = np.where(flips[:, None], columns[:, ::-1], columns)
        return padded[np.arange(count)[:, None, None], rows[:, :, None], columns[:, None, :]]

    def _unaugmented(self, train: bool) -> Iterator[dict[str, np.ndarray]]:
        images = self._train_images if train else self._test_images
        return (
            {"image": self._normalize(images[ids]), "label": labels, "mask": mask}
            for ids, labels, mask in self._split_id_batches(train)
        )
