"""Tests of catkd_jax.data.trivial_augment: every op, bin and sign equals torchvision-on-PIL
(the Pillow calls torchvision's PIL backend makes, with torchvision's parameters), the
magnitude table equals torchvision's, and the draw is TrivialAugment Wide's."""

from __future__ import annotations

import collections
import math

import numpy as np
import pytest
from PIL import Image, ImageEnhance, ImageOps

from catkd_jax.data.trivial_augment import (
    NUM_BINS,
    OPS,
    SIGNED,
    apply_op,
    draw,
    magnitude,
    trivial_augment,
)

_RNG = np.random.default_rng(20230618)
# Random 32x32 images (CIFAR's size), a low-contrast and a constant one (AutoContrast's and
# Equalize's edge cases), a non-square one (Rotate by 90 degrees goes through the affine
# sampler), and images smaller than Sharpness's 3x3 kernel or only one row high.
IMAGES = {
    **{f"random{i}": _RNG.integers(0, 256, (32, 32, 3), dtype=np.uint8) for i in range(3)},
    "low_contrast": _RNG.integers(120, 128, (32, 32, 3), dtype=np.uint8),
    "constant": np.full((32, 32, 3), 77, dtype=np.uint8),
    "non_square": _RNG.integers(0, 256, (24, 40, 3), dtype=np.uint8),
    "tiny": _RNG.integers(0, 256, (3, 3, 3), dtype=np.uint8),
    "one_row": _RNG.integers(0, 256, (1, 5, 3), dtype=np.uint8),
}
# Coordinates past 32767 make Pillow sample shears and rotations in floating point instead of
# 16.16 fixed point (translations take its separable sampler at any size).
STRIPS = {
    "wide": _RNG.integers(0, 256, (2, 33000, 3), dtype=np.uint8),
    "tall": _RNG.integers(0, 256, (33000, 2, 3), dtype=np.uint8),
}
STRIP_OPS = ("ShearX", "ShearY", "Rotate")

# torchvision's TrivialAugmentWide magnitudes, float32 as torch.linspace returns them on
# AVX2 / AVX-512 CPUs (torch 2.13): e.g. TranslateX's bin 15 is 15.999999, not 16.
LINSPACE_0_099 = np.array(
    [0.0, 0.033, 0.066, 0.099, 0.132, 0.16499999, 0.198, 0.231, 0.264, 0.297, 0.32999998, 0.363, 0.396, 0.429,
     0.462, 0.495, 0.528, 0.561, 0.594, 0.62700003, 0.66, 0.693, 0.726, 0.759, 0.792, 0.825, 0.85800004,
     0.89100003, 0.924, 0.957, 0.99],
    dtype=np.float32,
)  # fmt: skip
LINSPACE_0_32 = np.array(
    [0.0, 1.0666667, 2.1333334, 3.2000003, 4.266667, 5.3333335, 6.4000006, 7.466667, 8.533334, 9.6, 10.666667,
     11.733334, 12.800001, 13.866668, 14.933334, 15.999999, 17.066666, 18.133333, 19.199999, 20.266666,
     21.333332, 22.4, 23.466667, 24.533333, 25.6, 26.666666, 27.733334, 28.8, 29.866667, 30.933332, 32.0],
    dtype=np.float32,
)  # fmt: skip
EXPECTED_MAGNITUDES = {
    "Identity": np.zeros(NUM_BINS),
    "ShearX": LINSPACE_0_099,
    "ShearY": LINSPACE_0_099,
    "TranslateX": LINSPACE_0_32,
    "TranslateY": LINSPACE_0_32,
    "Rotate": 4.5 * np.arange(NUM_BINS),
    "Brightness": LINSPACE_0_099,
    "Color": LINSPACE_0_099,
    "Contrast": LINSPACE_0_099,
    "Sharpness": LINSPACE_0_099,
    "Posterize": np.repeat([8, 7, 6, 5, 4, 3, 2], [3, 5, 5, 5, 5, 5, 3]),
    "Solarize": 255 - 8.5 * np.arange(NUM_BINS),
    "AutoContrast": np.zeros(NUM_BINS),
    "Equalize": np.zeros(NUM_BINS),
}


def _inverse_affine_matrix(center, angle, translate, shear):
    """torchvision's `_get_inverse_affine_matrix(center, angle, translate, 1.0, shear)` (its
    division by the scale, 1.0, changes no bit and is left out)."""
    rotation = math.radians(angle)
    shear_x, shear_y = math.radians(shear[0]), math.radians(shear[1])
    (center_x, center_y), (translate_x, translate_y) = center, translate
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


def pillow_reference(image: np.ndarray, op: str, value: float) -> np.ndarray:
    """torchvision's `_apply_op(PIL image, op, value, NEAREST, fill=None)`, as the Pillow calls
    its functional PIL backend makes (fill None becomes fillcolor (0, 0, 0))."""
    pil = Image.fromarray(image, "RGB")
    width, height = pil.size
    fill = {"fillcolor": (0, 0, 0)}

    def affine(center, translate, shear):  # F.affine(angle=0, scale=1) -> F_pil.affine
        matrix = _inverse_affine_matrix(center, 0.0, translate, shear)
        return pil.transform(pil.size, Image.Transform.AFFINE, matrix, Image.Resampling.NEAREST, **fill)

    image_center = [width * 0.5, height * 0.5]  # F.affine's default center on PIL images
    if op == "Identity":
        result = pil
    elif op == "ShearX":
        result = affine([0, 0], [0, 0], [math.degrees(math.atan(value)), 0.0])
    elif op == "ShearY":
        result = affine([0, 0], [0, 0], [0.0, math.degrees(math.atan(value))])
    elif op == "TranslateX":
        result = affine(image_center, [int(value), 0], [0.0, 0.0])
    elif op == "TranslateY":
        result = affine(image_center, [0, int(value)], [0.0, 0.0])
    elif op == "Rotate":
        result = pil.rotate(value, Image.Resampling.NEAREST, False, None, **fill)
    elif op == "Brightness":
        result = ImageEnhance.Brightness(pil).enhance(1.0 + value)
    elif op == "Color":
        result = ImageEnhance.Color(pil).enhance(1.0 + value)
    elif op == "Contrast":
        result = ImageEnhance.Contrast(pil).enhance(1.0 + value)
    elif op == "Sharpness":
        result = ImageEnhance.Sharpness(pil).enhance(1.0 + value)
    elif op == "Posterize":
        result = ImageOps.posterize(pil, int(value))
    elif op == "Solarize":
        result = ImageOps.solarize(pil, value)
    elif op == "AutoContrast":
        result = ImageOps.autocontrast(pil)
    elif op == "Equalize":
        result = ImageOps.equalize(pil)
    else:
        raise AssertionError(op)
    return np.asarray(result)


def signed_magnitudes(op: str) -> list[tuple[int, float]]:
    """(bin, value) for every bin, negated too (-0.0 included) where torchvision draws a sign."""
    pairs = [(bin_index, magnitude(op, bin_index)) for bin_index in range(NUM_BINS)]
    if op in SIGNED:
        pairs += [(bin_index, -value) for bin_index, value in pairs]
    return pairs


def _assert_matches_pillow(images: dict[str, np.ndarray], op: str) -> None:
    for name, image in images.items():
        for bin_index, value in signed_magnitudes(op):
            np.testing.assert_array_equal(
                apply_op(image, op, value),
                pillow_reference(image, op, value),
                err_msg=f"{op} bin {bin_index} magnitude {value!r} on {name}",
            )


@pytest.mark.parametrize("op", OPS)
def test_op_matches_pillow_on_every_bin_and_sign(op):
    _assert_matches_pillow(IMAGES, op)


@pytest.mark.parametrize("op", STRIP_OPS)
def test_geometric_op_matches_pillow_past_fixed_point_range(op):
    _assert_matches_pillow(STRIPS, op)


def test_magnitude_table_is_torchvisions():
    assert len(OPS) == 14 and len(set(OPS)) == 14
    assert SIGNED == set(OPS[1:10])  # ShearX .. Sharpness
    for op in OPS:
        values = [magnitude(op, bin_index) for bin_index in range(NUM_BINS)]
        assert all(type(value) is float for value in values), op
        np.testing.assert_array_equal(values, EXPECTED_MAGNITUDES[op].astype(np.float32), err_msg=op)
    # torchvision translates by int() of the magnitude: bin 15 moves 15 pixels, not 16.
    assert int(magnitude("TranslateX", 15)) == 15


def test_draw_covers_every_op_bin_and_sign_uniformly():
    rng = np.random.default_rng(0)
    draws = 28000
    seen = collections.defaultdict(list)
    for _ in range(draws):
        op, value = draw(rng)
        seen[op].append(value)
    assert set(seen) == set(OPS)
    for op, values in seen.items():
        assert abs(len(values) - draws / len(OPS)) < 0.1 * draws / len(OPS), op
        values = np.array(values)
        assert set(np.abs(values)) == set(EXPECTED_MAGNITUDES[op].astype(np.float32).tolist()), op
        negative = np.signbit(values)  # bin 0's -0.0 counts as negative
        if op in SIGNED:
            assert 0.4 < negative.mean() < 0.6, op
        else:
            assert not negative.any(), op


def test_trivial_augment_applies_the_drawn_op():
    image = IMAGES["random0"]
    augment_rng, draw_rng = np.random.default_rng(7), np.random.default_rng(7)
    ops_seen = set()
    for _ in range(300):
        op, value = draw(draw_rng)
        ops_seen.add(op)
        np.testing.assert_array_equal(trivial_augment(image, augment_rng), apply_op(image, op, value), err_msg=op)
    assert ops_seen == set(OPS)


def test_apply_op_returns_a_new_array():
    image = IMAGES["random1"]
    before = image.copy()
    for op in OPS:
        result = apply_op(image, op, magnitude(op, NUM_BINS - 1))
        assert result is not image and result.dtype == np.uint8 and result.shape == image.shape, op
    np.testing.assert_array_equal(image, before)


@pytest.mark.parametrize(
    "image, op, message",
    [
        (np.zeros((4, 4, 3), np.float32), "Identity", "uint8"),
        (np.zeros((4, 4), np.uint8), "Identity", r"\[H, W, 3\]"),
        (np.zeros((4, 4, 4), np.uint8), "Identity", r"\[H, W, 3\]"),
        (np.zeros((0, 4, 3), np.uint8), "Identity", r"\[H, W, 3\]"),
        (np.zeros((4, 4, 3), np.uint8), "Invert", "unknown op 'Invert'"),
        (np.zeros((4, 4, 3), np.uint8), "Posterize", "1 to 8 bits"),  # Pillow's bounds
    ],
)
def test_apply_op_rejects_bad_input(image, op, message):
    with pytest.raises(ValueError, match=message):
        apply_op(image, op, 0.0)


def test_magnitude_rejects_bad_arguments():
    with pytest.raises(ValueError, match="unknown op"):
        magnitude("Invert", 0)
    with pytest.raises(ValueError, match="bin_index"):
        magnitude("Rotate", NUM_BINS)
