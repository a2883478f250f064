"""The optimiser of the original recipe: torch-style SGD on a step-wise learning-rate schedule."""

from __future__ import annotations

from typing import Sequence

import ml_collections
import optax


def base_learning_rate(config: ml_collections.ConfigDict) -> float:
    """`optim.lr`, scaled linearly to `batch_size` when `optim.lr_batch_size` names its batch."""
    if config.optim.lr_batch_size:
        return config.optim.lr * config.batch_size / config.optim.lr_batch_size
    return config.optim.lr


def epoch_step_schedule(
    lr: float, decay_epochs: Sequence[int], decay_rate: float, steps_per_epoch: int
) -> optax.Schedule:
    """`lr`, constant within an epoch, times `decay_rate` after each epoch in `decay_epochs`.

    Step `s` is in epoch `s // steps_per_epoch + 1`.
    """
    boundaries = {}
    for epoch in sorted(decay_epochs):
        step = int(epoch) * steps_per_epoch
        boundaries[step] = boundaries.get(step, 1.0) * decay_rate
    return optax.piecewise_constant_schedule(lr, boundaries)


def learning_rate_schedule(config: ml_collections.ConfigDict, steps_per_epoch: int) -> optax.Schedule:
    """The training schedule of `config.optim` (`epoch_step_schedule` from `base_learning_rate`)."""
    optim = config.optim
    return epoch_step_schedule(base_learning_rate(config), optim.decay_epochs, optim.decay_rate, steps_per_epoch)


def torch_sgd(
    learning_rate: optax.ScalarOrSchedule, momentum: float, weight_decay: float
) -> optax.GradientTransformation:
    """`torch.optim.SGD(momentum, weight_decay)`: L2 on every parameter, then momentum, then lr."""
    return optax.chain(optax.add_decayed_weights(weight_decay), optax.sgd(learning_rate, momentum=momentum))


def create_optimizer(config: ml_collections.ConfigDict, steps_per_epoch: int) -> optax.GradientTransformation:
    """The training optimiser of `config.optim`: `torch_sgd` on `learning_rate_schedule`."""
    optim = config.optim
    return torch_sgd(learning_rate_schedule(config, steps_per_epoch), optim.momentum, optim.weight_decay)
