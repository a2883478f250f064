"""Stopping and resuming: SIGTERM and SIGINT save a checkpoint at the current step, and the
rerun ends exactly where an uninterrupted run ends (parameters, metrics and logs)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest

from catkd_jax import checkpoints, interruption, sharding, train
from conftest import REPO_ROOT
from test_train import read_metrics, tiny_config

# tiny_config: 64 training images in batches of 16, so 4 steps an epoch.
STEPS_PER_EPOCH = 4


def _signal_at_step(monkeypatch, number: int, *signums: int) -> None:
    """Sends `signums` to this process as the training loop takes the batch of its `number`-th step
    (counted from 1 within this call), so the signal arrives while that step runs: a fixed point
    of the run, whatever the timing."""
    prefetch = sharding.prefetch
    taken = [0]

    def signalling_prefetch(*args, **kwargs):
        for batch in prefetch(*args, **kwargs):
            if "mask" not in batch:  # a training batch (evaluation batches are masked)
                taken[0] += 1
                if taken[0] == number:
                    for signum in signums:
                        os.kill(os.getpid(), signum)
            yield batch

    monkeypatch.setattr(sharding, "prefetch", signalling_prefetch)


def _assert_same_run(resumed, uninterrupted) -> None:
    for directory in [""] if not (uninterrupted / "run_0").is_dir() else ["run_0", "run_1"]:
        a, _ = checkpoints.load_variables(uninterrupted / directory)
        b, _ = checkpoints.load_variables(resumed / directory)
        jax.tree_util.tree_map(np.testing.assert_array_equal, a, b)
        drop_time = lambda records: [{k: v for k, v in r.items() if k != "epoch_seconds"} for r in records]
        assert drop_time(read_metrics(resumed / directory)) == drop_time(read_metrics(uninterrupted / directory))


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("uninterrupted")
    train.train_and_evaluate(tiny_config(num_epochs=2), workdir)
    return workdir


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_mid_epoch_saves_that_step_and_the_rerun_is_bit_identical(signum, uninterrupted, tmp_path,
                                                                           monkeypatch):
    previous_handler = signal.getsignal(signum)
    with monkeypatch.context() as patch:
        _signal_at_step(patch, STEPS_PER_EPOCH + 2, signum)
        with pytest.raises(interruption.Interrupted) as stopped:
            train.train_and_evaluate(tiny_config(num_epochs=2), tmp_path)
    step = STEPS_PER_EPOCH + 2
    assert str(stopped.value) == (f"interrupted at epoch 2, step {step}: checkpoint saved; "
                                  "run the same command to resume")
    assert stopped.value.exit_code == 128 + signum
    assert signal.getsignal(signum) is previous_handler  # restored
    _, meta = checkpoints.load_variables(tmp_path)
    assert (meta["epoch"], meta["step"], meta["epoch_step"]) == (2, step, step - STEPS_PER_EPOCH)
    assert [r["epoch"] for r in read_metrics(tmp_path)] == [1]

    train.train_and_evaluate(tiny_config(num_epochs=2), tmp_path)  # the same command again
    _assert_same_run(tmp_path, uninterrupted)


def test_a_signal_in_the_last_step_of_an_epoch_saves_the_evaluated_epoch(uninterrupted, tmp_path, monkeypatch):
    with monkeypatch.context() as patch:
        _signal_at_step(patch, STEPS_PER_EPOCH, signal.SIGTERM)
        with pytest.raises(interruption.Interrupted, match="at epoch 1, step 4:"):
            train.train_and_evaluate(tiny_config(num_epochs=2), tmp_path)
    _, meta = checkpoints.load_variables(tmp_path)
    assert (meta["epoch"], meta["step"]) == (1, 4) and "epoch_step" not in meta
    assert [r["epoch"] for r in read_metrics(tmp_path)] == [1]
    train.train_and_evaluate(tiny_config(num_epochs=2), tmp_path)
    _assert_same_run(tmp_path, uninterrupted)


def test_a_second_signal_stops_at_once(tmp_path, monkeypatch):
    _signal_at_step(monkeypatch, 2, signal.SIGINT, signal.SIGINT)
    with pytest.raises(KeyboardInterrupt, match="second SIGINT"):
        train.train_and_evaluate(tiny_config(num_epochs=1), tmp_path)


def test_a_multi_run_program_resumes_every_run_mid_epoch_bit_identically(tmp_path, monkeypatch):
    config = lambda: tiny_config(num_epochs=2, runs__seeds=(0, 1))
    train.train_and_evaluate(config(), tmp_path / "uninterrupted")
    with monkeypatch.context() as patch:
        _signal_at_step(patch, 3, signal.SIGTERM)
        with pytest.raises(interruption.Interrupted, match="at epoch 1, step 3:"):
            train.train_and_evaluate(config(), tmp_path / "resumed")
    for run in ("run_0", "run_1"):
        _, meta = checkpoints.load_variables(tmp_path / "resumed" / run)
        assert (meta["step"], meta["epoch_step"]) == (3, 3)
    train.train_and_evaluate(config(), tmp_path / "resumed")
    _assert_same_run(tmp_path / "resumed", tmp_path / "uninterrupted")
    summary = lambda path: json.loads((path / "summary.json").read_text())
    assert summary(tmp_path / "resumed") == summary(tmp_path / "uninterrupted")
