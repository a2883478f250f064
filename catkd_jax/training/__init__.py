"""What `train_and_evaluate` is made of, and the public pieces to build your own loop from.

    optim     lr schedule, torch-style SGD (`create_optimizer`)
    state     `TrainState` (the student's and the method's own modules') from a seed
              (`initialize`) or given variables (`create_train_state`)
    steps     pure train/eval steps (`make_loss_fn`, `make_train_step`, `make_eval_step`;
              many runs at once: the same step over a run axis)
    teacher   the frozen teacher: loading, BatchNorm folding
    loop      `train_and_evaluate`: epochs, logs, checkpoints, resume, interruption
    evaluate  `evaluate` a saved network, `load_network`

Applications (probe, visualize, quickstart, the CLI) import from here, not from the modules.
"""

from catkd_jax.training.evaluate import evaluate, load_network, run_evaluation
from catkd_jax.training.loop import train_and_evaluate
from catkd_jax.training.optim import create_optimizer, epoch_step_schedule, learning_rate_schedule, torch_sgd
from catkd_jax.training.state import (
    TrainState,
    activation_dtype,
    create_train_state,
    initial_states,
    initial_weights,
    initialize,
)
from catkd_jax.training.steps import (
    make_eval_step,
    make_loss_fn,
    make_multi_run_eval_step,
    make_multi_run_step,
    make_train_step,
)
from catkd_jax.training.teacher import load_teacher, teacher_inference_variables

__all__ = [
    "TrainState",
    "activation_dtype",
    "create_optimizer",
    "create_train_state",
    "epoch_step_schedule",
    "evaluate",
    "initial_states",
    "initial_weights",
    "initialize",
    "learning_rate_schedule",
    "load_network",
    "load_teacher",
    "make_eval_step",
    "make_multi_run_eval_step",
    "make_loss_fn",
    "make_multi_run_step",
    "make_train_step",
    "run_evaluation",
    "teacher_inference_variables",
    "torch_sgd",
    "train_and_evaluate",
]
