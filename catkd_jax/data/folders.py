"""Image folders: `ROOT/train/<class>/*` and `ROOT/<test|val>/<class>/*` listed or decoded.

Labels index the sorted class folder names; examples are in (class, file name) order. Small
sets (CIFAR-sized) are decoded into memory here; ImageNet-sized ones are only listed, and
`imagenet.FolderImageSource` streams them.
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Sequence
from typing import Any

import numpy as np

from catkd_jax.data.base import import_tensorflow
from catkd_jax.errors import ConfigError, InputError


IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")


def _decode_images(paths: Sequence[str]) -> np.ndarray:
    """uint8 `[N, H, W, 3]` of image files that must all have the same size."""
    tf = import_tensorflow()

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
                    raise InputError(f"cannot decode {path}: {error.message}") from error
            raise
        if expected is None:
            expected = shapes[0]
        mismatched = np.flatnonzero(np.any(shapes != expected, axis=1))
        if mismatched.size:
            offset = mismatched[0]
            raise InputError(
                f"{paths[done + offset]} is {_size(shapes[offset])} pixels but {paths[0]} "
                f"is {_size(expected)}; all images of a folder source must have one size"
            )
        chunks.append(images)
    return np.concatenate(chunks)


def _size(shape: np.ndarray) -> str:
    """'HxW' of an image's `[H, W, C]` shape."""
    return f"{int(shape[0])}x{int(shape[1])}"


def load_folder(root: str) -> tuple[tuple[np.ndarray, ...], list[str]]:
    """`((train_images, train_labels, test_images, test_labels), class_names)` from folders
    `root/train/<class>/*` and `root/test/<class>/*`, decoded into memory."""
    (train_files, train_labels, test_files, test_labels), classes = list_image_folders(root, ("test",))
    arrays = (_decode_images(train_files), train_labels, _decode_images(test_files), test_labels)
    return arrays, classes


def _image_names(folder: pathlib.Path) -> list[str]:
    """Sorted names of the image files in `folder` (os.scandir: ImageNet has 1.3M of them)."""
    with os.scandir(folder) as entries:
        return sorted(
            entry.name
            for entry in entries
            if not entry.name.startswith(".")
            and os.path.splitext(entry.name)[1].lower() in IMAGE_EXTENSIONS
            and entry.is_file()
        )


def list_image_folders(
    root: str, eval_names: Sequence[str] = ("val", "test")
) -> tuple[tuple[Any, ...], list[str]]:
    """`((train_files, train_labels, test_files, test_labels), class_names)` of a folder tree
    `root/train/<class>/*` and `root/<eval>/<class>/*`, `<eval>` the first of `eval_names` that
    exists. Labels index the sorted class names; files are in (class, name) order.
    """
    evals = " or ".join(f"ROOT/{name}/<class>/*" for name in eval_names)
    layout = f"ROOT/train/<class>/*.jpg and {evals}"
    if not root:
        raise ConfigError(f"config.data.dir is empty; the folder source needs ROOT with {layout}")
    root_path = pathlib.Path(root)
    if not (root_path / "train").is_dir():
        raise ConfigError(
            f"config.data.dir={root!r} has no train/ folder; the folder source expects {layout}"
        )
    eval_dirs = [root_path / name for name in eval_names if (root_path / name).is_dir()]
    if not eval_dirs:
        raise ConfigError(
            f"config.data.dir={root!r} has no {' or '.join(name + '/' for name in eval_names)} "
            f"folder; the folder source expects {layout}"
        )
    splits = {"train": root_path / "train", "test": eval_dirs[0]}
    classes = {}
    for split, folder in splits.items():
        classes[split] = sorted(entry.name for entry in os.scandir(folder) if entry.is_dir())
    if not classes["train"]:
        raise InputError(f"{splits['train']} has no class folders; expected {layout}")
    if not classes["test"] and _image_names(splits["test"]):
        raise ConfigError(
            f"{splits['test']} holds images but no class folders: sort them into "
            f"{splits['test']}/<wnid>/ first (as torchvision's ImageFolder expects, e.g. with the "
            "common valprep.sh), or use --config.data.source=tfds"
        )
    if classes["test"] != classes["train"]:
        raise InputError(
            f"the class folders of {splits['test']} ({len(classes['test'])}) differ from those "
            f"of {splits['train']} ({len(classes['train'])}); both splits need the same classes"
        )
    arrays: list[Any] = []
    for folder in splits.values():
        files, labels = [], []
        for label, name in enumerate(classes["train"]):
            names = _image_names(folder / name)
            if not names:
                raise InputError(
                    f"{folder / name} holds no image files ({', '.join(IMAGE_EXTENSIONS)})"
                )
            files += [os.path.join(folder, name, file_name) for file_name in names]
            labels += [label] * len(names)
        arrays += [files, np.asarray(labels, np.int32)]
    return tuple(arrays), classes["train"]
