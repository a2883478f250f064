"""Shared test settings and fixtures.

Reference data lives in `../shared` beside the repository (present in CI, absent in a user's
fresh clone): tests that need it skip with the reason. `CATKD_SHARED` overrides the location.
"""

from __future__ import annotations

import gc
import json
import os
import pathlib
import shutil
import tempfile

# Tests compile far more than they compute. XLA's CPU fusion emitters (its default) compile
# about a third slower than its older emitters (measured: docs/benchmarks.md). XLA reads
# XLA_FLAGS when JAX first makes its backend, after this; subprocesses inherit them.
_TEST_XLA_FLAGS = "--xla_cpu_use_fusion_emitters=false"
if _TEST_XLA_FLAGS not in os.environ.get("XLA_FLAGS", ""):  # a subprocess importing conftest has them
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_TEST_XLA_FLAGS}".strip()
# OpenBLAS (NumPy's, and the LAPACK behind jnp.linalg.svd on the CPU) spins a thread per core
# waiting for work: with two test processes on two cores, a small SVD took 1 s instead of 3 ms
# (measured: 8 x 512 x 32, loaded machine). One thread each; read when OpenBLAS loads, after
# this, and inherited by subprocesses.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import jax  # pylint: disable=wrong-import-position
import jax.numpy as jnp  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position
import pytest  # pylint: disable=wrong-import-position

from catkd_jax import config_files, training  # pylint: disable=wrong-import-position
from catkd_jax import default_config as default  # pylint: disable=wrong-import-position

# Tests compile many small programs once each; XLA's optimisations cost more than they save.
jax.config.update("jax_disable_most_optimizations", True)

# Tracing allocates many short-lived objects, and each of Python's full collections walks every
# object of the imported libraries and test modules (0.2 s each, two dozen per test file
# measured). Those live for the whole session: frozen once collected (`pytest_collection_finish`),
# no collection walks them; and collections come less often.
gc.set_threshold(10_000, 50, 100)


def xla_flags(*flags: str, fast_compilation: bool = True) -> str:
    """XLA_FLAGS for a subprocess: this process's and `flags` (a number of CPU devices), without
    the tests' compile-time flags for a subprocess whose cost is computing, not compiling."""
    inherited = os.environ["XLA_FLAGS"] if fast_compilation else os.environ["XLA_FLAGS"].replace(_TEST_XLA_FLAGS, "")
    return " ".join(inherited.split() + list(flags))


# Many tests compile the same programs (tiny_config's steps) in fresh closures, and subprocesses
# compile them again: JAX's persistent compilation cache compiles each once per session. Each
# test process (pytest, or each pytest-xdist worker) makes its own directory and passes it on in
# the environment to its subprocesses, which reuse it instead of making their own. Processes do
# not share a directory: JAX writes entries in place, and one could read another's half-written
# file (its locking mode, with a bounded size, scans the directory on every write: measured
# slower). Every session (CI's too) starts cold.
_SESSION_CACHE_VARIABLE = "CATKD_JAX_TESTS_COMPILATION_CACHE_" + os.environ.get("PYTEST_XDIST_WORKER", "main")
_OWNS_COMPILATION_CACHE = _SESSION_CACHE_VARIABLE not in os.environ
if _OWNS_COMPILATION_CACHE:
    os.environ[_SESSION_CACHE_VARIABLE] = tempfile.mkdtemp(prefix="catkd-jax-tests-compilation-cache-")
os.environ.update(JAX_COMPILATION_CACHE_DIR=os.environ[_SESSION_CACHE_VARIABLE],
                  JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
jax.config.update("jax_compilation_cache_dir", os.environ[_SESSION_CACHE_VARIABLE])
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)


def pytest_unconfigure(config: pytest.Config) -> None:
    if _OWNS_COMPILATION_CACHE:
        shutil.rmtree(os.environ[_SESSION_CACHE_VARIABLE], ignore_errors=True)


# The files that take longest, slowest first (measured, docs/benchmarks.md). With several
# workers (`-n 2 --dist loadfile`), each file runs whole on one worker in this order: long files
# start first and short ones fill the end, instead of one long file running on alone. A stale
# list costs only that balance.
_SLOWEST_FILES = ("test_runs.py", "test_multihost.py", "test_training.py", "test_interruption.py", "test_models.py",
                  "test_benchmarks.py", "test_feature_methods.py", "test_data.py", "test_method_parity.py",
                  "test_imagenet_e2e.py", "test_cli.py", "test_convert.py", "test_resume.py", "test_folding.py",
                  "test_quickstart.py", "test_probe.py", "test_readme.py", "test_visualize.py",
                  "test_imagenet_models.py", "test_losses.py", "test_initialization.py", "test_methods.py",
                  "test_stages.py", "test_trivial_augment.py", "test_feature_losses.py")


def pytest_configure(config: pytest.Config) -> None:
    if hasattr(config.option, "loadscopereorder"):  # pytest-xdist: keep our file order, not one by test count
        config.option.loadscopereorder = False


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: index for index, name in enumerate(_SLOWEST_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


def pytest_collection_finish(session: pytest.Session) -> None:
    gc.freeze()


REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED = pathlib.Path(os.environ.get("CATKD_SHARED", REPO_ROOT.parent / "shared"))


def shared_path(relative: str) -> pathlib.Path:
    """A file under ../shared, or skip the test saying what is missing and why."""
    path = SHARED / relative
    if not path.exists():
        pytest.skip(
            f"{path} not found: reference data ships beside the repository in CI "
            "(set CATKD_SHARED to its location to run this test)"
        )
    return path


def tiny_config(**overrides):
    """resnet8 on 64 synthetic CIFAR-10-sized images; 40 test images (the last batch padded)."""
    config = default.get_config()
    config.method = "vanilla"
    config.student.arch = "resnet8"
    config.student.classifier_bias = True
    config.teacher.arch = "resnet8"
    config.data.name = "cifar10"
    config.data.source = "synthetic"
    config.data.synthetic_train_size = 64
    config.data.synthetic_test_size = 40
    config.batch_size = 16
    config.eval_batch_size = 16
    config.num_epochs = 1
    config.optim.lr = 0.05
    config.checkpoint.every_epochs = 1
    return config_files.with_values(config, {name.replace("__", "."): value for name, value in overrides.items()})


def read_metrics(workdir) -> list[dict]:
    return [json.loads(line) for line in (pathlib.Path(workdir) / "metrics.jsonl").read_text().splitlines()]


def timeless_metrics(workdir) -> list[dict]:
    """`read_metrics` without the one field that differs between identical runs: epoch seconds."""
    return [{key: value for key, value in record.items() if key != "epoch_seconds"} for record in read_metrics(workdir)]


@pytest.fixture(scope="session")
def teacher_dir(tmp_path_factory) -> pathlib.Path:
    """A workdir of `tiny_config()` trained once per session: the teacher of tests that distil.

    Tests only read it.
    """
    workdir = tmp_path_factory.mktemp("teacher")
    training.train_and_evaluate(tiny_config(), workdir)
    return workdir


def random_variables(model, image_shape: tuple[int, ...], seed: int = 0, trained_looking: bool = False) -> dict:
    """Variables of `model` (the structure `model.init` gives) drawn with NumPy, so a test does
    not pay for XLA compiling the initialiser (seconds for a deep network).

    Kernels are He-normal over their fan-in and biases zero; BatchNorms are at their initial
    values (scale 1, statistics 0 and 1) or, with `trained_looking`, far from them, as in a
    trained network.
    """
    structure = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, *image_shape)), train=False))
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        shape, name = leaf.shape, path[-1].key
        if name == "kernel":
            return (rng.standard_normal(shape) * np.sqrt(2.0 / np.prod(shape[:-1]))).astype(leaf.dtype)
        if trained_looking and name in ("var", "scale"):
            return rng.uniform(0.5, 2.0 if name == "var" else 1.5, shape).astype(leaf.dtype)
        if trained_looking and name in ("mean", "bias"):
            return (0.1 * rng.standard_normal(shape)).astype(leaf.dtype)
        return np.ones(shape, leaf.dtype) if name in ("var", "scale") else np.zeros(shape, leaf.dtype)

    return jax.tree_util.tree_map_with_path(draw, structure)
