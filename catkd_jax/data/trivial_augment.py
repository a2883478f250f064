"""TrivialAugment Wide in numpy: torchvision's `TrivialAugmentWide` as it acts on a PIL image.

The reference is torchvision's `TrivialAugmentWide()` (31 magnitude bins, nearest-neighbour
sampling, no fill colour) applied to a PIL RGB image, which is what the paper's CIFAR
pipeline did. On a PIL image torchvision's ops end up in Pillow (`Image.transform` with an
affine matrix, `Image.rotate`, `ImageEnhance.Brightness/Color/Contrast/Sharpness`,
`ImageOps.posterize/solarize/autocontrast/equalize`), so this module reproduces Pillow 13's
arithmetic bit for bit on uint8 `[H, W, 3]` images: its fixed-point and floating-point
nearest-neighbour samplers, its float32 blends with their truncation and clipping, its 3x3
SMOOTH filter, its integer RGB -> L weights and its lookup tables.

Only numpy is needed, so the augmentation runs wherever the training code runs, including
where TensorFlow (the rest of the input pipeline) is absent. The random draw is numpy's, not
torch's: the distribution is torchvision's, the stream of draws is not.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np


NUM_BINS = 31
OPS: tuple[str, ...] = (
    "Identity",
    "ShearX",
    "ShearY",
    "TranslateX",
    "TranslateY",
    "Rotate",
    "Brightness",
    "Color",
    "Contrast",
    "Sharpness",
    "Posterize",
    "Solarize",
    "AutoContrast",
    "Equalize",
)
SIGNED: frozenset[str] = frozenset(
    {"ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate", "Brightness", "Color", "Contrast", "Sharpness"}
)

# (first, last) of torchvision's `torch.linspace(first, last, NUM_BINS)` magnitudes.
_LINSPACE_ENDS = {
    "ShearX": (0.0, 0.99),
    "ShearY": (0.0, 0.99),
    "TranslateX": (0.0, 32.0),
    "TranslateY": (0.0, 32.0),
    "Rotate": (0.0, 135.0),
    "Brightness": (0.0, 0.99),
    "Color": (0.0, 0.99),
    "Contrast": (0.0, 0.99),
    "Sharpness": (0.0, 0.99),
    "Solarize": (255.0, 0.0),
}


def _torch_linspace(first: float, last: float) -> np.ndarray:
    """float32 `[NUM_BINS]`: `torch.linspace(first, last, NUM_BINS)` as PyTorch's CPU kernel computes it.

    The kernel fills the first half forwards from `first` and the rest backwards from `last`,
    with a float32 step. Its AVX2 / AVX-512 builds (what any x86 training machine runs) fuse
    each `base + step * i` into one multiply-add, a single rounding; the double product and
    sum below are exact, so one rounding to float32 reproduces it. This matters: e.g.
    TranslateX's bin 15 is 15.999999 (torchvision translates by int() of it: 15 pixels),
    where separate roundings would give 16.0.
    """
    first32, last32 = np.float32(first), np.float32(last)
    step = float((last32 - first32) / np.float32(NUM_BINS - 1))
    index = np.arange(NUM_BINS, dtype=np.float64)
    forwards = float(first32) + step * index
    backwards = float(last32) - step * (NUM_BINS - 1 - index)
    return np.where(index < NUM_BINS // 2, forwards, backwards).astype(np.float32)


def _posterize_bits() -> np.ndarray:
    """float32 `[NUM_BINS]`: torchvision's `8 - (arange(NUM_BINS) / ((NUM_BINS - 1) / 6)).round()`."""
    quotient = np.arange(NUM_BINS, dtype=np.float32) / np.float32((NUM_BINS - 1) / 6)
    return (8 - np.rint(quotient)).astype(np.float32)  # rint rounds half to even, as torch.round


_MAGNITUDES: dict[str, np.ndarray] = {op: _torch_linspace(*ends) for op, ends in _LINSPACE_ENDS.items()}
_MAGNITUDES["Posterize"] = _posterize_bits()


def magnitude(op: str, bin_index: int) -> float:
    """torchvision's magnitude of `op` in bin `bin_index` (0 .. NUM_BINS - 1); 0.0 for ops without one."""
    _check_op(op)
    if not 0 <= bin_index < NUM_BINS:
        raise ValueError(f"bin_index must be in [0, {NUM_BINS - 1}], got {bin_index}")
    table = _MAGNITUDES.get(op)
    return 0.0 if table is None else float(table[bin_index])


def draw(rng: np.random.Generator) -> tuple[str, float]:
    """One TrivialAugment draw, as torchvision's: a uniform op, a uniform bin for ops with
    magnitudes, and for SIGNED ops a fair sign (negation, so bin 0 can give -0.0)."""
    op = OPS[int(rng.integers(len(OPS)))]
    if op not in _MAGNITUDES:
        return op, 0.0
    value = magnitude(op, int(rng.integers(NUM_BINS)))
    if op in SIGNED and rng.integers(2):
        value *= -1.0
    return op, value


def trivial_augment(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """uint8 `[H, W, 3]` -> uint8 `[H, W, 3]`: `image` under one op drawn by `draw(rng)`."""
    return apply_op(image, *draw(rng))


def apply_op(image: np.ndarray, op: str, magnitude: float) -> np.ndarray:
    """uint8 `[H, W, 3]` -> uint8 `[H, W, 3]`: torchvision's `_apply_op(op, magnitude)` on a PIL
    RGB image with nearest sampling and black fill, pixel for pixel. Returns a new array."""
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError(f"image must be uint8, got {image.dtype}")
    if image.ndim != 3 or image.shape[-1] != 3 or image.size == 0:
        raise ValueError(f"image must have shape [H, W, 3] with H, W >= 1, got {list(image.shape)}")
    _check_op(op)
    return _OP_FUNCTIONS[op](image, magnitude)


def _check_op(op: str) -> None:
    if op not in OPS:
        raise ValueError(f"unknown op {op!r}; expected one of {', '.join(OPS)}")


# --- Geometry: torchvision's inverse affine matrices, sampled as Pillow's Geometry.c does.


def _inverse_affine_matrix(
    center: tuple[float, float], angle: float, translate: tuple[int, int], shear: tuple[float, float]
) -> list[float]:
    """torchvision's `_get_inverse_affine_matrix` at scale 1 (dividing by 1.0 changes no bit):
    the output -> input pixel map `[a, b, c, d, e, f]` that Pillow's AFFINE transform takes.
    Same operations in the same order, so the same doubles."""
    rotation = math.radians(angle)
    shear_x, shear_y = math.radians(shear[0]), math.radians(shear[1])
    center_x, center_y = center
    translate_x, translate_y = translate
    a = math.cos(rotation - shear_y) / math.cos(shear_y)
    b = -math.cos(rotation - shear_y) * math.tan(shear_x) / math.cos(shear_y) - math.sin(rotation)
    c = math.sin(rotation - shear_y) / math.cos(shear_y)
    d = -math.sin(rotation - shear_y) * math.tan(shear_x) / math.cos(shear_y) + math.cos(rotation)
    matrix = [d, -b, 0.0, -c, a, 0.0]
    matrix[2] += matrix[0] * (-center_x - translate_x) + matrix[1] * (-center_y - translate_y)
    matrix[5] += matrix[3] * (-center_x - translate_x) + matrix[4] * (-center_y - translate_y)
    matrix[2] += center_x
    matrix[5] += center_y
    return matrix


def _pil_rotation_matrix(angle: float, width: int, height: int) -> list[float]:
    """Pillow's `Image.rotate` matrix about the image centre for `angle` (degrees, already mod 360)."""
    radians = -math.radians(angle)
    cos, sin = round(math.cos(radians), 15), round(math.sin(radians), 15)
    matrix = [cos, sin, 0.0, round(-math.sin(radians), 15), cos, 0.0]
    center_x, center_y = width / 2, height / 2
    a, b, c, d, e, f = matrix
    matrix[2] = a * -center_x + b * -center_y + c
    matrix[5] = d * -center_x + e * -center_y + f
    matrix[2] += center_x
    matrix[5] += center_y
    return matrix


def _pixel_index(coordinate: np.ndarray, size: int) -> np.ndarray:
    """Pillow's COORD (-1 below 0, else truncation), with everything outside [0, size) as -1."""
    inside = (coordinate >= 0.0) & (coordinate < size)
    return np.where(inside, coordinate, -1.0).astype(np.int64)


def _steps(first: float, step: float, count: int) -> np.ndarray:
    """float64 `[count]`: `first`, then `step` added `count - 1` times one by one, as C's `+=` loop."""
    terms = np.full(count, step, dtype=np.float64)
    terms[0] = first
    return np.add.accumulate(terms)


def _fits_fixed_point(matrix: list[float], width: int, height: int) -> bool:
    """Pillow's check_fixed at the four corners: 16.16 fixed point can hold every coordinate."""
    a, b, c, d, e, f = matrix
    corners = ((0, 0), (width, height), (0, height), (width, 0))
    return all(abs(x * a + y * b + c) < 32768.0 and abs(x * d + y * e + f) < 32768.0 for x, y in corners)


def _source_pixels(matrix: list[float], width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """int64 `([H, W], [H, W])`: the input row and column each output pixel copies, or -1 (fill).

    Pillow's ImagingTransformAffine has three nearest-neighbour engines, picked by the matrix:
    a separable one for pure scale + translation, 16.16 fixed point when every coordinate fits,
    and double accumulation otherwise. They round differently, so each is reproduced.
    """
    a, b, c, d, e, f = matrix
    if b == 0 and d == 0:
        columns = _pixel_index(_steps(c + a * 0.5, a, width), width)[None, :]
        rows = _pixel_index(_steps(f + e * 0.5, e, height), height)[:, None]
    elif _fits_fixed_point(matrix, width, height):
        a0, a1, a3, a4 = (math.floor(value * 65536.0 + 0.5) for value in (a, b, d, e))
        a2 = math.floor((c + a * 0.5 + b * 0.5) * 65536.0 + 0.5)
        a5 = math.floor((f + d * 0.5 + e * 0.5) * 65536.0 + 0.5)
        y = np.arange(height, dtype=np.int64)[:, None]
        x = np.arange(width, dtype=np.int64)[None, :]
        # Integer sums are exact, so closed forms equal C's running sums; >> 16 floors like C's.
        columns = (a2 + y * a1 + x * a0) >> 16
        rows = (a5 + y * a4 + x * a3) >> 16
        columns = np.where((columns >= 0) & (columns < width), columns, -1)
        rows = np.where((rows >= 0) & (rows < height), rows, -1)
    else:
        row_starts_x = _steps(c + b * 0.5 + a * 0.5, b, height)
        row_starts_y = _steps(f + e * 0.5 + d * 0.5, e, height)
        columns = np.add.accumulate(np.column_stack([row_starts_x, np.full((height, width - 1), a)]), axis=1)
        rows = np.add.accumulate(np.column_stack([row_starts_y, np.full((height, width - 1), d)]), axis=1)
        columns, rows = _pixel_index(columns, width), _pixel_index(rows, height)
    inside = (columns >= 0) & (rows >= 0)
    return np.where(inside, rows, -1), np.where(inside, columns, -1)


def _affine(image: np.ndarray, matrix: list[float]) -> np.ndarray:
    """Pillow's `Image.transform(size, AFFINE, matrix, NEAREST, fillcolor=0)` of `[H, W, 3]`."""
    height, width = image.shape[:2]
    rows, columns = _source_pixels(matrix, width, height)
    inside = rows >= 0
    output = np.zeros_like(image)
    output[inside] = image[rows[inside], columns[inside]]
    return output


def _shear(image: np.ndarray, shear_degrees: tuple[float, float]) -> np.ndarray:
    """torchvision's `F.affine(image, 0, [0, 0], 1, shear_degrees, center=[0, 0])` on PIL."""
    return _affine(image, _inverse_affine_matrix((0, 0), 0.0, (0, 0), shear_degrees))


def _translate(image: np.ndarray, pixels: tuple[int, int]) -> np.ndarray:
    """torchvision's `F.affine(image, 0, pixels, 1, [0, 0])` on PIL (about the image centre)."""
    height, width = image.shape[:2]
    return _affine(image, _inverse_affine_matrix((width * 0.5, height * 0.5), 0.0, pixels, (0.0, 0.0)))


def _rotate(image: np.ndarray, degrees: float) -> np.ndarray:
    """Pillow's `Image.rotate(degrees, NEAREST, fillcolor=0)`, its exact-transpose shortcuts included."""
    height, width = image.shape[:2]
    angle = degrees % 360.0
    if angle == 0:
        return image.copy()
    if angle == 180:
        return np.rot90(image, 2).copy()
    if angle in (90, 270) and width == height:
        return np.rot90(image, 1 if angle == 90 else -1).copy()
    return _affine(image, _pil_rotation_matrix(angle, width, height))


# --- Enhancers: Pillow's ImageEnhance, each a float32 blend of the image with a degenerate one.


def _blend(degenerate: np.ndarray, image: np.ndarray, factor: float) -> np.ndarray:
    """Pillow's `Image.blend(degenerate, image, factor)` (Blend.c): float32 arithmetic with a
    float32 factor, clipped to [0, 255] when extrapolating, then truncated."""
    alpha = np.float32(factor)
    start = degenerate.astype(np.float32)
    mixed = start + alpha * (image.astype(np.float32) - start)
    return np.clip(mixed, 0.0, 255.0).astype(np.uint8)


def _grayscale(image: np.ndarray) -> np.ndarray:
    """uint8 `[H, W]`: Pillow's RGB -> L (ITU-R 601-2 in 16.16 fixed point, rounded)."""
    channels = image.astype(np.int32)
    luma = channels[..., 0] * 19595 + channels[..., 1] * 38470 + channels[..., 2] * 7471 + 0x8000
    return (luma >> 16).astype(np.uint8)


def _smooth(image: np.ndarray) -> np.ndarray:
    """Pillow's `ImageFilter.SMOOTH` (Filter.c's 3x3 kernel [1 1 1; 1 5 1; 1 1 1] / 13): float32
    weights, +0.5 then truncation; the 1-pixel border is copied. The sums follow Filter.c's
    order (row below, own row, row above; left to right), as float32 rounding depends on it."""
    height, width = image.shape[:2]
    if height < 3 or width < 3:
        return image.copy()
    edge = np.float32(1) / np.float32(13)
    centre = np.float32(5) / np.float32(13)
    pixels = image.astype(np.float32)

    def row_sum(rows: np.ndarray, middle_weight: np.float32) -> np.ndarray:
        return rows[:, :-2] * edge + rows[:, 1:-1] * middle_weight + rows[:, 2:] * edge

    total = np.float32(0.5) + row_sum(pixels[2:], edge)
    total = total + row_sum(pixels[1:-1], centre)
    total = total + row_sum(pixels[:-2], edge)
    smoothed = image.copy()
    smoothed[1:-1, 1:-1] = np.clip(total, 0.0, 255.0).astype(np.uint8)
    return smoothed


def _grayscale_rgb(image: np.ndarray) -> np.ndarray:
    """`ImageEnhance.Color`'s degenerate image: RGB -> L -> RGB."""
    return np.repeat(_grayscale(image)[..., None], 3, axis=-1)


def _mean_gray(image: np.ndarray) -> np.ndarray:
    """`ImageEnhance.Contrast`'s degenerate image: the L image's mean, rounded half up, everywhere."""
    gray = _grayscale(image)
    mean = int(gray.sum(dtype=np.int64)) / gray.size  # ImageStat's mean: an exact sum, one division
    return np.full_like(image, int(mean + 0.5))


# --- Lookup-table ops: Pillow's ImageOps, one 256-entry table per channel.


def _apply_tables(image: np.ndarray, tables: np.ndarray) -> np.ndarray:
    """`image` `[H, W, 3]` through `tables` `[3, 256]` (or one shared `[256]`), clipped to
    [0, 255] as `Image.point` does."""
    tables = np.clip(np.broadcast_to(tables, (3, 256)), 0, 255).astype(np.uint8)
    return tables[np.arange(3), image]


def _channel_histograms(image: np.ndarray) -> np.ndarray:
    """int64 `[3, 256]`: each channel's pixel counts, as `Image.histogram`."""
    return np.stack([np.bincount(image[..., channel].ravel(), minlength=256) for channel in range(3)])


def _posterize(image: np.ndarray, bits: int) -> np.ndarray:
    if not 1 <= bits <= 8:  # Pillow's range (torchvision's would allow 0, which Pillow rejects)
        raise ValueError(f"Posterize keeps 1 to 8 bits, got {bits}")
    return _apply_tables(image, np.arange(256) & ~(2 ** (8 - bits) - 1))


def _solarize(image: np.ndarray, threshold: float) -> np.ndarray:
    levels = np.arange(256)
    return _apply_tables(image, np.where(levels < threshold, levels, 255 - levels))


def _autocontrast(image: np.ndarray) -> np.ndarray:
    """ImageOps.autocontrast: per channel, stretch [lowest, highest] present level to [0, 255]."""
    tables = np.tile(np.arange(256, dtype=np.int64), (3, 1))
    for channel, histogram in enumerate(_channel_histograms(image)):
        present = np.flatnonzero(histogram)
        low, high = int(present[0]), int(present[-1])
        if high > low:
            scale = 255.0 / (high - low)
            offset = -low * scale
            tables[channel] = np.trunc(np.arange(256) * scale + offset)  # Python's int(): toward zero
    return _apply_tables(image, tables)


def _equalize(image: np.ndarray) -> np.ndarray:
    """ImageOps.equalize: per channel, each level to its rounded share of the pixels below it."""
    tables = np.tile(np.arange(256, dtype=np.int64), (3, 1))
    for channel, histogram in enumerate(_channel_histograms(image)):
        counts = histogram[histogram > 0]
        step = (int(counts.sum()) - int(counts[-1])) // 255 if counts.size > 1 else 0
        if step:
            below = np.concatenate([[0], np.cumsum(histogram)[:-1]])
            tables[channel] = (step // 2 + below) // step
    return _apply_tables(image, tables)


# op -> function of (image, magnitude), with torchvision's parameters (its _apply_op).
_OP_FUNCTIONS: dict[str, Callable[[np.ndarray, float], np.ndarray]] = {
    "Identity": lambda image, _: image.copy(),
    "ShearX": lambda image, level: _shear(image, (math.degrees(math.atan(level)), 0.0)),
    "ShearY": lambda image, level: _shear(image, (0.0, math.degrees(math.atan(level)))),
    "TranslateX": lambda image, level: _translate(image, (int(level), 0)),
    "TranslateY": lambda image, level: _translate(image, (0, int(level))),
    "Rotate": _rotate,
    "Brightness": lambda image, level: _blend(np.zeros_like(image), image, 1.0 + level),
    "Color": lambda image, level: _blend(_grayscale_rgb(image), image, 1.0 + level),
    "Contrast": lambda image, level: _blend(_mean_gray(image), image, 1.0 + level),
    "Sharpness": lambda image, level: _blend(_smooth(image), image, 1.0 + level),
    "Posterize": lambda image, level: _posterize(image, int(level)),
    "Solarize": _solarize,
    "AutoContrast": lambda image, _: _autocontrast(image),
    "Equalize": lambda image, _: _equalize(image),
}
