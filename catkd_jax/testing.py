"""Helpers of the parity tests against the original PyTorch code: the same random weights on
both sides.

A reference script fills the original network's state dict with `random_torch_state_dict` (from
the rows of `model.state_dict()`), runs it, and stores the rows with its results; the test fills
the same rows again and loads them into our model with `catkd_jax.convert.from_torch_state_dict`.
Drawn from numpy only, so both sides get the same values on any machine.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Sequence

import numpy as np

# One state-dict entry: (name, shape, dtype name), as in `shared/reference/*_state_dicts.json`.
Row = tuple[str, Sequence[int], str]


def state_dict_rows(state_dict: dict) -> list[tuple[str, list[int], str]]:
    """The `(name, shape, dtype)` rows of a state dict of numpy arrays or torch tensors, in order."""
    return [(name, list(value.shape), str(value.dtype).removeprefix("torch.")) for name, value in state_dict.items()]


def random_torch_state_dict(rows: Iterable[Row], seed: int) -> dict[str, np.ndarray]:
    """A state dict of the PyTorch layout `rows`, filled deterministically with values that keep
    activations of order one through any depth.

    Entry `index` is drawn from `np.random.default_rng([seed, index])`: conv/linear weights
    (`weight` of 2 or more dimensions) N(0, sqrt(2 / fan_in)), fan_in = the product of all but the
    first dimension; BatchNorm weights (1-dimensional `weight`) U(0.5, 1.5); biases N(0, 0.1);
    `running_mean` N(0, 0.1); `running_var` U(0.5, 1.5); `num_batches_tracked` 0 (int64); CRD's
    memory banks `memory_*` `[M, D]` U(+-1 / sqrt(D / 3)).
    """
    state: dict[str, np.ndarray] = {}
    for index, (name, shape, dtype) in enumerate(rows):
        rng = np.random.default_rng([seed, index])
        shape = tuple(shape)
        leaf = name.rsplit(".", 1)[-1]
        if leaf == "num_batches_tracked":
            value = np.zeros(shape, np.int64)
        elif leaf == "weight" and len(shape) >= 2:
            value = rng.normal(0.0, math.sqrt(2.0 / math.prod(shape[1:])), shape)
        elif leaf in ("weight", "running_var"):
            value = rng.uniform(0.5, 1.5, shape)
        elif leaf in ("bias", "running_mean"):
            value = rng.normal(0.0, 0.1, shape)
        elif leaf.startswith("memory_"):  # CRD's banks, as the original initialises them
            bound = 1.0 / math.sqrt(shape[1] / 3)
            value = rng.uniform(-bound, bound, shape)
        else:
            raise ValueError(f"{name}: no rule for a state-dict entry named {leaf!r}")
        state[name] = value.astype(np.dtype(dtype))
    return state


def random_images(size: int, seed: int, count: int = 2) -> np.ndarray:
    """`[count, size, size, 3]` float32 standard-normal images (NHWC), the same on every machine."""
    return np.random.default_rng(seed).standard_normal((count, size, size, 3), dtype=np.float32)


# Summaries keep at most this many positions a side (block means over larger maps) and this many
# channel values (fixed random projections of more).
_SUMMARY_SIDE = 8
_SUMMARY_CHANNELS = 16


def _project_channels(values: np.ndarray) -> np.ndarray:
    """`[..., K] -> [..., min(K, 16)]`: onto 16 fixed random directions (drawn from K) if K > 16."""
    channels = values.shape[-1]
    if channels <= _SUMMARY_CHANNELS:
        return values
    directions = np.random.default_rng([channels, _SUMMARY_CHANNELS]).standard_normal((channels, _SUMMARY_CHANNELS))
    return values @ (directions / np.sqrt(channels))


def summarize(array: np.ndarray) -> np.ndarray:
    """A short float32 vector that a wrong stage changes (a ReLU too many or too few, a shifted
    window, mixed channels): of an NHWC map `[N, h, w, K]`, the channel means and mean squares
    over N, h, w (projected to 16 values each if K > 16), then the sum over channels at each
    position averaged over f x f blocks, f = ceil(max(h, w) / 8) (f must divide h and w); of a
    `[N, K]` array, its rows projected like the channels. Accumulated in float64.
    """
    values = np.asarray(array, np.float64)
    if values.ndim == 2:
        return _project_channels(values).ravel().astype(np.float32)
    batch, height, width, _ = values.shape
    factor = -(-max(height, width) // _SUMMARY_SIDE)
    if height % factor or width % factor:
        raise ValueError(f"a {height}x{width} map cannot be summarized in {factor}x{factor} blocks")
    spatial = values.sum(axis=-1).reshape(batch, height // factor, factor, width // factor, factor).mean(axis=(2, 4))
    channel_mean = _project_channels(values.mean(axis=(0, 1, 2)))
    channel_mean_square = _project_channels(np.square(values).mean(axis=(0, 1, 2)))
    return np.concatenate([channel_mean, channel_mean_square, spatial.ravel()]).astype(np.float32)


# The seeds of the distiller parity references' weights and batch (benchmarks/reference_distillers.py).
TEACHER_SEED, STUDENT_SEED, METHOD_SEED, BATCH_SEED = 1, 2, 3, 4


def reference_batch(batch_size: int = 8, num_classes: int = 100) -> tuple[np.ndarray, np.ndarray]:
    """The distiller parity references' batch: `random_images` `[N, 32, 32, 3]` (NHWC; the PyTorch
    side transposes them) and labels `[N]` (int32)."""
    labels = np.random.default_rng([BATCH_SEED, 1]).integers(0, num_classes, batch_size).astype(np.int32)
    return random_images(32, BATCH_SEED, batch_size), labels


def norm_and_projection(array: np.ndarray, index: int) -> np.ndarray:
    """`[norm, projection]` of a tensor (a gradient, a parameter's change) in PyTorch's layout, in
    float64: its l2 norm and its dot product with a standard-normal direction drawn from
    `default_rng([5, index])`. A wrong entry anywhere shows in the projection, on the scale of
    the norm."""
    values = np.asarray(array, np.float64).ravel()
    direction = np.random.default_rng([5, index]).standard_normal(values.size)
    return np.asarray([np.linalg.norm(values), values @ direction])


def reference_method_settings(method: str, teacher_arch: str, student_arch: str) -> dict[str, Any]:
    """The config fields (dotted, `{"reviewkd.shapes": ...}`) that the distiller parity references
    set for a method and pair beyond the defaults: those that must fit the networks
    (`methods.fitted_settings` at the references' 32x32 images: ReviewKD's lists, CRD's embedding
    inputs), and CRD's number of negatives (`CRD_NUM_NEGATIVES`); none for the other methods."""
    from catkd_jax import methods  # pylint: disable=import-outside-toplevel
    from catkd_jax.models import create_model  # pylint: disable=import-outside-toplevel

    fitted = methods.fitted_settings(method, create_model(student_arch, 100), create_model(teacher_arch, 100))
    return fitted | ({"crd.num_negatives": CRD_NUM_NEGATIVES} if method == "crd" else {})


# CRD's references: a memory bank of this many rows, and this many negatives per example.
CRD_NUM_DATA, CRD_NUM_NEGATIVES = 40, 16


def reference_contrast_indices(batch_size: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """CRD's inputs beside `reference_batch`: the examples' distinct bank rows "index" `[N]` and
    their "contrast_index" `[N, 1 + CRD_NUM_NEGATIVES]` (the row itself, then uniform rows),
    int32, of a bank of `CRD_NUM_DATA` rows."""
    rng = np.random.default_rng([BATCH_SEED, 2])
    index = rng.permutation(CRD_NUM_DATA)[:batch_size]
    negatives = rng.integers(0, CRD_NUM_DATA, (batch_size, CRD_NUM_NEGATIVES))
    return index.astype(np.int32), np.concatenate([index[:, None], negatives], axis=1).astype(np.int32)
