"""The frozen teacher: its weights (trained first when asked) and the form the train step runs."""

from __future__ import annotations

import os
import pathlib
from typing import Any, Callable

import flax
import ml_collections

from catkd_jax import checkpoints, config_files, methods
from catkd_jax.console import report
from catkd_jax.models import create_model, folding
from catkd_jax.training.state import activation_dtype
from catkd_jax.types import Variables
from catkd_jax.errors import ConfigError, MissingInputError


def teacher_inference_variables(
    config: ml_collections.ConfigDict, teacher: flax.linen.Module, variables: Variables, image_shape: tuple[int, ...]
) -> Variables:
    """The frozen teacher's variables in the form the train step runs it.

    With `config.teacher.fold_batch_norm`, BatchNorm folded into the convolutions
    (`models.folding`): the same function to float rounding, one pass less per layer (refused
    for a method that runs the teacher in training mode).
    """
    if not config.teacher.fold_batch_norm:
        return variables
    if methods.get_method(config.method).teacher_in_train_mode:
        raise ConfigError(f"method {config.method!r} runs the teacher in training mode (BatchNorm on the batch's "
                          "statistics, as the original), which folded BatchNorm cannot; set "
                          "config.teacher.fold_batch_norm=False")
    return folding.fold_batch_norm(teacher, variables, image_shape)


def _has_checkpoint(path: str) -> bool:
    return bool(path) and pathlib.Path(path).exists()


def load_teacher(
    config: ml_collections.ConfigDict,
    workdir: str | os.PathLike,
    num_classes: int,
    image_shape: tuple[int, ...],
    train_teacher: Callable[[ml_collections.ConfigDict, str], Any],
) -> tuple[flax.linen.Module | None, Variables | None]:
    """The frozen teacher and its variables in inference form (`teacher_inference_variables`).

    `(None, None)` for methods without a teacher. Without a checkpoint at
    `config.teacher.checkpoint` and with `config.teacher.train_if_missing`, the teacher is
    first trained in `workdir/teacher` by `train_teacher(teacher_config, directory)` (the
    training loop passes itself).
    """
    if not methods.needs_teacher(config.method):
        return None, None
    path = config.teacher.checkpoint
    if not _has_checkpoint(path):
        if not config.teacher.train_if_missing:
            where = f"config.teacher.checkpoint={path!r} does not exist" if path else "config.teacher.checkpoint is empty"
            raise ConfigError(
                f"method {config.method!r} needs a teacher but {where}. Point it at a workdir, "
                "checkpoint, converted model or .pth, or set config.teacher.train_if_missing=True"
            )
        path = os.path.join(workdir, "teacher")
        if not os.path.isfile(config.teacher.config):
            problem = f"{config.teacher.config!r} is not a file" if config.teacher.config else "it is empty"
            raise (MissingInputError if config.teacher.config else ConfigError)(
                f"config.teacher.train_if_missing trains the teacher with config.teacher.config, but {problem}; "
                "point it at the teacher's config file (e.g. configs/cifar100_teacher_resnet32x4.py)")
        teacher_config = config_files.load_config(config.teacher.config)
        teacher_config.student.arch = config.teacher.arch
        teacher_config.data = config.data  # the teacher must learn the same classes
        if config.teacher.num_epochs:
            teacher_config.num_epochs = config.teacher.num_epochs
        report(f"Training the teacher {config.teacher.arch} in {path} first.")
        train_teacher(teacher_config, path)
    variables, _ = checkpoints.load_variables(path, arch=config.teacher.arch, num_classes=num_classes,
                                              setting="config.teacher.checkpoint")
    has_bias = "bias" in variables["params"]["classifier"]
    teacher = create_model(config.teacher.arch, num_classes, activation_dtype(config), has_bias)
    return teacher, teacher_inference_variables(config, teacher, variables, image_shape)
