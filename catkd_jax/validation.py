"""The config's values, checked in one place before a command writes anything.

Every field whose values are a fixed set of names, a count, or a list of seeds or epochs is
checked here against what `catkd_jax/default_config.py` documents, so that a value no code
path can use is one line naming the field, not an error (or silently wrong results) after the
workdir was written. Checks that need the data, the devices or a file stay with the code that
reads them.
"""

from __future__ import annotations

from typing import Any

import ml_collections

from catkd_jax.data import AUGMENTATIONS, DATASETS, SOURCES
from catkd_jax.data.base import CONTRAST_MODES
from catkd_jax.errors import ConfigError
from catkd_jax.methods import METHODS

# Dotted field -> the values it may take.
CHOICES: dict[str, tuple[str, ...]] = {
    "pipeline": ("single", "quickstart"),
    "method": tuple(METHODS),
    "dtype": ("float32", "bfloat16"),
    "data.source": SOURCES,
    "data.augment": AUGMENTATIONS,
    "probe.data.source": SOURCES,
    "runs.vectorize": ("auto", "vmap", "unroll"),
    "cat_kd.cam_strategy": ("top", "bottom"),
    "cat_kd.class_weighting": ("uniform", "teacher_prob"),
    "cat_kd.teacher_cams": ("classifier", "gradcam"),
    "crd.mode": CONTRAST_MODES,
}
# Dotted field -> its smallest value, for integer fields.
MINIMUMS: dict[str, int] = {
    "seed": 0,
    "num_epochs": 1,
    "batch_size": 1,
    "eval_batch_size": 1,
    "log_every_steps": 0,
    "cat_kd.resolution": 1,
    "cat_kd.num_cams": 0,
    "dkd.warmup_epochs": 0,
    "kdsvd.k": 1,
    "reviewkd.warmup_epochs": 1,
    "ofd.connector_kernel_size": 1,
    "crd.feat_dim": 1,
    "crd.num_negatives": 1,
    "optim.lr_batch_size": 0,
    "teacher.num_epochs": 0,
    "checkpoint.every_epochs": 1,
    "checkpoint.keep": 1,
    "probe.epochs": 1,
    "probe.batch_size": 1,
}
# Dotted field -> (the smallest value of its items, an example), for sequences of integers.
INTEGER_SEQUENCES: dict[str, tuple[int, str]] = {
    "runs.seeds": (0, "(0,1,2)"),
    "optim.decay_epochs": (1, "(150,180,210)"),
    "probe.decay_epochs": (1, "(10,20,30)"),
    "fitnet.input_size": (1, "(32,32)"),
    "vid.input_size": (1, "(32,32)"),
    "reviewkd.shapes": (1, "(1,8,16,32)"),
    "reviewkd.out_shapes": (1, "(1,8,16,32)"),
    "reviewkd.in_channels": (1, "(64,128,256,256)"),
    "reviewkd.out_channels": (1, "(64,128,256,256)"),
}


def _field(config: ml_collections.ConfigDict, dotted: str) -> tuple[bool, Any]:
    """`(present, value)` of a dotted field; a config made before the field existed lacks it."""
    value: Any = config
    for name in dotted.split("."):
        if name not in value:
            return False, None
        value = value[name]
    return True, value


def _is_integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_config(config: ml_collections.ConfigDict) -> None:
    """Raises `ConfigError` naming the first field whose value no code path can use."""
    for dotted, choices in CHOICES.items():
        present, value = _field(config, dotted)
        if present and value not in choices:
            raise ConfigError(f"config.{dotted}={value!r} is unknown; use one of {', '.join(choices)}")
    present, name = _field(config, "data.name")
    if present and config.data.source != "shapes" and name not in DATASETS:  # 'shapes' has its own classes
        raise ConfigError(f"config.data.name={name!r} is unknown; use one of {', '.join(DATASETS)}")
    for dotted, minimum in MINIMUMS.items():
        present, value = _field(config, dotted)
        if present and (not _is_integer(value) or value < minimum):
            raise ConfigError(f"config.{dotted} must be an integer >= {minimum}, got {value!r}")
    for dotted, (minimum, example) in INTEGER_SEQUENCES.items():
        present, value = _field(config, dotted)
        if present and (not isinstance(value, (tuple, list))
                        or not all(_is_integer(item) and item >= minimum for item in value)):
            raise ConfigError(f"config.{dotted} must be a tuple of integers >= {minimum}, got {value!r}; "
                              f"on the command line: --config.{dotted}='{example}'")
