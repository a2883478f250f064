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

from catkd_jax import checkpoints, config_files, interruption, methods, runs, testing, training
from catkd_jax.errors import ConfigError
from catkd_jax.models import stages as model_stages
from catkd_jax.models import create_model
from conftest import random_variables, read_metrics, timeless_metrics, tiny_config
from signalling import signal_at_step

FEATURE_METHODS = ("fitnet", "at", "nst", "pkt", "kdsvd", "rkd", "sp", "vid", "ofd", "reviewkd", "crd")
WITH_MODULES = ("fitnet", "vid", "ofd", "reviewkd", "crd")
# The loss weight each method sweeps, named as the original names it (feat_weight: FEAT_WEIGHT).
WEIGHT_FIELDS = {"reviewkd": "reviewkd_weight"}
# Resumed after a SIGTERM: ReviewKD's modules (parameters and BatchNorm statistics, like FitNet's
# regressor) take the same path; resuming them too would add 6 s to the suite.
RESUMED = tuple(method for method in WITH_MODULES if method != "reviewkd")


def _config(method: str, teacher_dir):
    """Two runs (the method's loss weight swept) of `tiny_config` on its teacher, vmapped: one
    compiled program; 4 steps of 8 images, 16 test images. (Few: a CPU runs the runs' vmapped
    convolutions, grouped ones, slowly.)"""
    field = WEIGHT_FIELDS.get(method, "feat_weight")
    weight = tiny_config()[method][field]  # the method's default, and half of it
    config = tiny_config(method=method, teacher__checkpoint=str(teacher_dir), runs__vectorize="vmap",
                         teacher__fold_batch_norm=not methods.get_method(method).teacher_in_train_mode,
                         runs__sweep=f"{method}.{field}={weight:g},{weight / 2:g}",
                         data__synthetic_train_size=32, batch_size=8, data__synthetic_test_size=16)
    # ReviewKD's lists fitted to resnet8 -> resnet8 (the default's fit resnet32x4 -> ShuffleV1);
    # CRD's embedding inputs fitted, and 16 negatives.
    return config_files.with_values(config, testing.reference_method_settings(method, "resnet8", "resnet8"))


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
        if method == "crd":  # the original counts its banks (32 examples x 128) and 5 constants too
            count += 2 * 32 * 128 + 5
        assert count > 0 and f"Extra parameters of {method}: {count}" in printed
        # Evaluation and export see the student only.
        variables, _ = checkpoints.load_variables(workdir / "run_0")
        assert set(variables) == {"params", "batch_stats"}
        assert jax.tree_util.tree_structure(variables["params"]) == jax.tree_util.tree_structure(states[0]["params"])
    else:
        assert "method_params" not in states[0] and "Extra parameters" not in printed


@pytest.mark.parametrize("method", RESUMED)
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


def test_ofd_with_a_folded_teacher_is_refused_in_one_line():
    """OFD runs the teacher in training mode, on the batch's statistics, which folding removes."""
    teacher = create_model("resnet8", 10)
    config = tiny_config(method="ofd")  # fold_batch_norm at its default, True
    with pytest.raises(ConfigError, match=r"^method 'ofd' runs the teacher in training mode .* set "
                                          r"config.teacher.fold_batch_norm=False$"):
        training.teacher_inference_variables(config, teacher, {}, (32, 32, 3))


@pytest.mark.parametrize("teacher_arch, student_arch, problem", [
    ("vgg8", "resnet8", r"margin of a 256-channel stage comes from the teacher's BatchNorm block1.1, which has 128"),
    ("resnet8", "MobileNetV2", r"preact_feats\[1:\] \(0 pairs\)"),
])
def test_ofd_on_pairs_the_original_fails_on_is_refused_in_one_line(teacher_arch, student_arch, problem):
    """Margins indexed from the teacher's first stage, features from the last (the original's
    broadcast fails); a student without pre-ReLU stages (the original's KeyError)."""
    teacher = create_model(teacher_arch, 10)
    with pytest.raises(ConfigError, match=problem):
        method = methods.create(tiny_config(method="ofd"), create_model(student_arch, 10, classifier_bias=True), teacher)
        method.init(jax.random.key(0), random_variables(teacher, (32, 32, 3)))


@pytest.mark.parametrize("settings, message", [
    (dict(method="crd", crd__student_dim=960, crd__teacher_dim=64),
     r"^config.crd.student_dim=960 but the student's pooled_feat has 64 features; set config.crd.student_dim=64$"),
    (dict(method="reviewkd"),  # its defaults fit resnet32x4 -> ShuffleV1
     r"^config.reviewkd does not fit these networks' features: shapes=\(1, 4, 8, 16\) should be \(1, 8, 16, 32\);"),
])
def test_a_method_setting_that_does_not_fit_the_networks_is_refused_before_the_workdir_is_written(
        settings, message, teacher_dir, tmp_path):
    with pytest.raises(ConfigError, match=message):
        training.train_and_evaluate(tiny_config(teacher__checkpoint=str(teacher_dir), **settings), tmp_path / "run")
    assert not (tmp_path / "run").exists()
