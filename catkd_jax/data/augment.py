"""Per-example augmentation, stateless: each example's crop and flip are a function of a seed.

CIFAR (mdistiller's recipe): zero-pad `PAD` pixels, random crop back to the image's size,
random horizontal flip. ImageNet (torchvision's recipe): RandomResizedCrop to `image_size`
(area `CROP_SCALE` of the image's, aspect ratio `CROP_RATIO`, `CROP_ATTEMPTS` tries then a
centre crop) and a horizontal flip; evaluation resizes the shorter side to
`image_size * 256 / 224` and keeps the centre `image_size` square. Only the needed window of a
JPEG is decoded. All of it is TensorFlow, run inside tf.data maps, except TrivialAugmentWide
(`trivial_augment`), whose numpy ops (`catkd_jax.data.trivial_augment`) run in the map.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from catkd_jax.data import trivial_augment as trivial_augment_ops
from catkd_jax.data.base import import_tensorflow


PAD = 4  # pixels of zero padding before the random crop, as in mdistiller

# The ImageNet recipe, as torchvision's RandomResizedCrop and Resize + CenterCrop.
CROP_SCALE = (0.08, 1.0)  # range of a training crop's area, as a fraction of the image's
CROP_RATIO = (3 / 4, 4 / 3)  # range of its aspect ratio (width / height), sampled log-uniformly
CROP_ATTEMPTS = 10  # tries at a crop that fits, before the centre-crop fallback
EVAL_RESIZE = (256, 224)  # eval: shorter side to image_size * 256 // 224, centre image_size crop

# Folded into an example's seed for TrivialAugment's draws, a stream apart from the two seeds
# that `stateless_split` makes of it for the crop and the flip.
_TRIVIAL_AUGMENT_STREAM = 2


def padded_crop_and_flip(image: Any, seed: Any) -> Any:
    """mdistiller's CIFAR augmentation of one image `[H, W, 3]`: zero-pad `PAD` pixels, take a
    random `H x W` crop, flip it horizontally with probability 1/2; stateless from `seed` `[2]`."""
    tf = import_tensorflow()
    seeds = tf.random.experimental.stateless_split(seed, 2)
    shape = image.shape.as_list()
    image = tf.pad(image, [[PAD, PAD], [PAD, PAD], [0, 0]])
    image = tf.image.stateless_random_crop(image, shape, seed=seeds[0])
    return tf.image.stateless_random_flip_left_right(image, seed=seeds[1])


def trivial_augment(image: Any, seed: Any) -> Any:
    """torchvision's TrivialAugmentWide of one uint8 image `[H, W, 3]`, as on a PIL image: one
    op of 14 with one of 31 magnitudes (`catkd_jax.data.trivial_augment`); stateless from `seed`
    `[2]`, through an independent stream of it (the crop and flip keep theirs)."""
    tf = import_tensorflow()
    stream = tf.random.experimental.stateless_fold_in(seed, _TRIVIAL_AUGMENT_STREAM)
    augmented = tf.numpy_function(_trivial_augment_numpy, [image, stream], tf.uint8, stateful=False)
    augmented.set_shape(image.shape)
    return augmented


def _trivial_augment_numpy(image: np.ndarray, seed: np.ndarray) -> np.ndarray:
    rng = np.random.default_rng(seed.astype(np.int64).view(np.uint64))
    return trivial_augment_ops.trivial_augment(image, rng)


def random_resized_crop_window(shape: Any, seed: Any) -> Any:
    """int32 `[4]` `(top, left, height, width)`: a window drawn as torchvision's RandomResizedCrop.

    Each of `CROP_ATTEMPTS` tries draws an area, uniform in `CROP_SCALE` times the image's, and
    an aspect ratio (width / height), log-uniform in `CROP_RATIO`, and rounds the window's sides;
    the first try that fits in the image is placed uniformly at random. If none fits, the
    window is the centred largest one whose ratio is clamped into `CROP_RATIO`.

    Args:
      shape: int32 `[>= 2]`, the image's height and width first.
      seed: `[2]` seed of the stateless draws.
    """
    tf = import_tensorflow()
    height = tf.cast(shape[0], tf.float32)
    width = tf.cast(shape[1], tf.float32)
    draws = tf.random.stateless_uniform([4, CROP_ATTEMPTS], seed=seed)  # in [0, 1)
    low, high = CROP_SCALE
    area = height * width * (low + (high - low) * draws[0])
    log_low, log_high = math.log(CROP_RATIO[0]), math.log(CROP_RATIO[1])
    ratio = tf.exp(log_low + (log_high - log_low) * draws[1])
    w = tf.round(tf.sqrt(area * ratio))  # half to even, as Python's round in torchvision
    h = tf.round(tf.sqrt(area / ratio))
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    # Uniform integers in 0 .. height - h; the minimum guards float rounding at the top end.
    top = tf.minimum(tf.floor(draws[2] * (height - h + 1)), height - h)
    left = tf.minimum(tf.floor(draws[3] * (width - w + 1)), width - w)
    tries = tf.stack([top, left, h, w], axis=1)
    image_ratio = width / height
    fallback_h = tf.where(image_ratio < CROP_RATIO[0], tf.round(width / CROP_RATIO[0]), height)
    fallback_w = tf.where(image_ratio > CROP_RATIO[1], tf.round(height * CROP_RATIO[1]), width)
    fallback = tf.stack(
        [
            tf.floor((height - fallback_h) / 2),
            tf.floor((width - fallback_w) / 2),
            fallback_h,
            fallback_w,
        ]
    )
    first = tf.argmax(tf.cast(fits, tf.int32))  # the first try that fits (0 if none)
    return tf.cast(tf.where(tf.reduce_any(fits), tries[first], fallback), tf.int32)


def center_crop_window(shape: Any, image_size: int) -> Any:
    """int32 `[4]` `(top, left, side, side)`: what torchvision's eval transform keeps.

    `Resize(image_size * 256 // 224)` (the shorter side) then `CenterCrop(image_size)` keeps the
    centred square whose side is `image_size / (image_size * 256 // 224)` of the shorter side;
    cropping it first and resizing it to `image_size` decodes and resizes less.
    """
    tf = import_tensorflow()
    height = tf.cast(shape[0], tf.float32)
    width = tf.cast(shape[1], tf.float32)
    resize = image_size * EVAL_RESIZE[0] // EVAL_RESIZE[1]
    side = tf.maximum(tf.round(tf.minimum(height, width) * (image_size / resize)), 1.0)
    window = [tf.floor((height - side) / 2), tf.floor((width - side) / 2), side, side]
    return tf.cast(tf.stack(window), tf.int32)


def _decode_window(encoded: Any, window_of: Any) -> Any:
    """uint8 `[h, w, 3]`: the window `window_of(shape)` (see above) of an encoded image.

    A JPEG is decoded only inside the window (`decode_and_crop_jpeg`); other formats (a few
    ImageNet files are PNG) are decoded whole, then cropped.
    """
    tf = import_tensorflow()

    def jpeg() -> Any:
        window = window_of(tf.image.extract_jpeg_shape(encoded))
        return tf.image.decode_and_crop_jpeg(encoded, window, channels=3)

    def other() -> Any:
        image = tf.io.decode_image(encoded, channels=3, dtype=tf.uint8, expand_animations=False)
        top, left, h, w = tf.unstack(window_of(tf.shape(image)))
        return image[top : top + h, left : left + w]

    return tf.cond(tf.io.is_jpeg(encoded), jpeg, other)


def _resize(image: Any, image_size: int) -> Any:
    """float32 `[image_size, image_size, 3]` on the 0..255 scale, bilinear and antialiased."""
    tf = import_tensorflow()
    return tf.image.resize(image, [image_size, image_size], method="bilinear", antialias=True)


def train_image(encoded: Any, seed: Any, image_size: int) -> Any:
    """An encoded image -> its random-resized crop, randomly flipped: float32, 0..255 scale."""
    tf = import_tensorflow()
    seeds = tf.random.experimental.stateless_split(seed, 2)
    image = _decode_window(encoded, lambda shape: random_resized_crop_window(shape, seeds[0]))
    return tf.image.stateless_random_flip_left_right(_resize(image, image_size), seed=seeds[1])


def eval_image(encoded: Any, image_size: int) -> Any:
    """An encoded image -> its centre crop (see `center_crop_window`): float32, 0..255 scale."""
    image = _decode_window(encoded, lambda shape: center_crop_window(shape, image_size))
    return _resize(image, image_size)
