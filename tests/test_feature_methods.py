"""The mdistiller toolbox's feature methods in training: each trains in a multi-run program (a sweep
of its loss weight), its own modules and state train, are saved and resume bit for bit after a
SIGTERM mid-epoch, and stay out of what evaluation and export see."""

from __future__ import annotations

import json
import signal

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from catkd_jax import checkpoints, interruption, methods, runs, training
from catkd_jax.errors import ConfigError
from catkd_jax.models import stages as model_stages
from conftest import read_metrics, timeless_metrics, tiny_config
from signalling import signal_at_step

FEATURE_METHODS = ("fitnet", "at", "nst", "pkt", "kdsvd", "rkd", "sp", "vid")
WITH_MODULES = ("fitnet", "vid")


def _config(method: str, teacher_dir):
    """Two runs (the method's loss weight swept) of `tiny_config` on its teacher, vmapped: one
    compiled program; 4 steps of 8 images, 16 test images. (Few: a CPU runs the runs' vmapped
    convolutions, grouped ones, slowly.)"""
    feat_weight = tiny_config()[method].feat_weight  # the method's default, and half of it
    return tiny_config(method=method, teacher__checkpoint=str(teacher_dir), runs__vectorize="vmap",
                       runs__sweep=f"{method}.feat_weight={feat_weight:g},{feat_weight / 2:g}",
                       data__synthetic_train_size=32, batch_size=8, data__synthetic_test_size=16)


def _saved_states(workdir) -> list[dict]:
    """Each run's newest saved training state, as saved (method fields included)."""
    states = []
    for run in ("run_0", "run_1"):
        with ocp.CheckpointManager(workdir / run / "checkpoints", item_names=("state", "meta")) as manager:
            restored = manager.restore(manager.latest_step(), args=ocp.args.Composite(state=ocp.args.StandardRestore()))
        states.append(restored.state)
    return states


@pytest.fixture(scope="module")
def sweep_runs(teacher_dir, tmp_path_factory):
    """`method -> (workdir, printed)` of `_config(method)` trained once (on first use)."""
    done = {}

    def run(method: str, capsys) -> tuple:
        if method not in done:
            capsys.readouterr()
            workdir = tmp_path_factory.mktemp(method)
            training.train_and_evaluate(_config(method, teacher_dir), workdir)
            done[method] = workdir, capsys.readouterr().out
        return done[method]

    return run


@pytest.mark.parametrize("method", FEATURE_METHODS)
def test_each_method_trains_a_sweep_of_its_loss_weight(method, sweep_runs, capsys, teacher_dir):
    workdir, printed = sweep_runs(method, capsys)
    for run in ("run_0", "run_1"):
        (record,) = read_metrics(workdir / run)
        assert np.isfinite(record["train_loss_kd"]) and record["train_loss_kd"] > 0
        assert record["train_loss"] == pytest.approx(record["train_loss_ce"] + record["train_loss_kd"], rel=1e-5)
    field, values = runs.parse_sweep(_config(method, teacher_dir))
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["field"] == field and [run[field] for run in summary["runs"]] == list(values)
    states = _saved_states(workdir)
    # The sweep's two loss weights trained two different students.
    assert not np.array_equal(states[0]["params"]["conv1"]["kernel"], states[1]["params"]["conv1"]["kernel"])
    if method in WITH_MODULES:
        count = sum(np.size(leaf) for leaf in jax.tree_util.tree_leaves(states[0]["method_params"]))
        assert count > 0 and f"Extra parameters of {method}: {count}" in printed
        # Evaluation and export see the student only.
        variables, _ = checkpoints.load_variables(workdir / "run_0")
        assert set(variables) == {"params", "batch_stats"}
        assert jax.tree_util.tree_structure(variables["params"]) == jax.tree_util.tree_structure(states[0]["params"])
    else:
        assert "method_params" not in states[0] and "Extra parameters" not in printed


@pytest.mark.parametrize("method", WITH_MODULES)
def test_a_method_with_modules_resumes_bit_identically_after_sigterm_mid_epoch(method, sweep_runs, capsys,
                                                                            teacher_dir, tmp_path, monkeypatch):
    uninterrupted, _ = sweep_runs(method, capsys)
    with monkeypatch.context() as patch:
        signal_at_step(patch.setattr, 2, signal.SIGTERM)
        with pytest.raises(interruption.Interrupted, match="at epoch 1, step 2:"):
            training.train_and_evaluate(_config(method, teacher_dir), tmp_path)
    training.train_and_evaluate(_config(method, teacher_dir), tmp_path)
    for a, b in zip(_saved_states(uninterrupted), _saved_states(tmp_path)):
        assert set(a) == set(b) and {"method_params", "method_state", "method_opt_state"} <= set(a)
        jax.tree_util.tree_map(np.testing.assert_array_equal, a, b)
    for run in ("run_0", "run_1"):
        assert timeless_metrics(tmp_path / run) == timeless_metrics(uninterrupted / run)


def test_kdsvd_on_stages_of_unequal_widths_is_refused_in_one_line():
    def outputs(widths):
        feats = tuple(jnp.ones((2, width, width, 4)) for width in widths)
        stages = model_stages.Stages(feats=feats, preact_feats=feats, pooled_feat=jnp.ones((2, 4)))
        return methods.Outputs(jnp.zeros((2, 10)), feats[-1], jnp.zeros((4, 10)), None, stages)

    method = methods.create(tiny_config(method="kdsvd"), None, None)
    with pytest.raises(ConfigError, match=r"^KDSVD compares stages of equal widths, but the student's feats\[2\] is 8 "
                                          r"wide and the teacher's 4 \(the original fails on such pairs too\); choose"):
        method.loss_terms(outputs((16, 16, 8)), outputs((16, 16, 4)), jnp.zeros(2, jnp.int32), jnp.float32(1))
