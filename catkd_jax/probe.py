"""Linear probing: how well a frozen network's features transfer to another data set.

`run(config, checkpoint, workdir)` is `main.py --mode linear_probe`: the network saved at
`checkpoint` is frozen; its pooled penultimate features (the global average of its `features`
output, i.e. the vector its classifier sees) are computed once for the training and test
splits of `config.probe.data` (the source's `train_eval_batches()` and `eval_batches()`), in
inference mode and without augmentation; then a linear classifier (a Dense `[K, C]` with bias)
is trained on the cached features with SGD and its top-1 test accuracy is written to
`workdir/linear_probe.json`.

This is the transfer experiment of CRD (Tian et al., ICLR 2020), which CAT-KD repeats: a
CIFAR-100 student probed on STL-10 and TinyImageNet, all images downsampled to 32x32. The
recipe (`config.probe`): 40 epochs, batch 128, SGD with momentum 0.9, learning rate 0.1
divided by 10 after epochs 10, 20 and 30, no weight decay, a new shuffle each epoch.

* `extract_features(model, variables, batches) -> (features [N, K], labels [N])`
* `fit_linear_probe(train_features, train_labels, test_features, test_labels, num_classes,
  config) -> {"top1", "per_epoch", ...}`

Because the features are cached, the probe itself is one small jitted program per epoch: a
`lax.scan` over that epoch's batches of feature rows.
"""

from __future__ import annotations

import copy
import functools
import json
import math
import os
import pathlib
import re
import time
from typing import Any, Iterable

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from catkd_jax import console, outputs, runs, sharding, training
from catkd_jax.data import DATASETS, SHAPES_CLASSES, create_source
from catkd_jax.types import Variables
from catkd_jax.errors import ConfigError, InputError, UserError


RESULT_FILE = "linear_probe.json"

# Random streams of the probe, derived from config.seed: the classifier's initialisation and
# each epoch's shuffle never share a key.
_INIT, _SHUFFLE = range(2)


# --- Data ----------------------------------------------------------------------------------


def probe_source_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """A copy of `config` whose `data` section is `config.probe.data`, for `create_source`.

    Fields that `config.probe.data` does not name are taken from `config.data`, so the probe
    section needs only the fields that describe its data set. The global batch size is the
    probe's (a data set smaller than one probe batch is refused by the source).
    """
    probe_config = copy.deepcopy(config)
    data = copy.deepcopy(config.data)
    with data.unlocked(), data.ignore_type():
        for name, value in config.probe.data.items():
            data[name] = value
    with probe_config.unlocked(), probe_config.ignore_type():
        probe_config.data = data
        probe_config.batch_size = config.probe.batch_size
    return probe_config


def probe_source(config: ml_collections.ConfigDict):
    """The data source of `config.probe.data` (`probe_source_config`); an error in it names the
    probe's fields (`--config.probe.data.dir`), which the user sets, not the training data's."""
    try:
        return create_source(probe_source_config(config))
    except UserError as error:
        raise type(error)(re.sub(r"(?<![\w.])((?:--)?(?:config\.)?)data\.", r"\1probe.data.", str(error))) from error


# --- Features ------------------------------------------------------------------------------


def resize_images(images: jax.Array, image_size: int) -> jax.Array:
    """`[N, H, W, 3] -> [N, image_size, image_size, 3]`, bilinear with antialiasing.

    `image_size=0`, or images already of that size, leave them as they are. The images may be
    normalised already: the interpolation weights sum to one, so resizing commutes with the
    per-channel normalisation `(x - mean) / std`.
    """
    if not image_size or images.shape[1:3] == (image_size, image_size):
        return images
    shape = (images.shape[0], image_size, image_size, images.shape[3])
    return jax.image.resize(images, shape, method="linear", antialias=True)


def pooled_features(
    model: flax.linen.Module, variables: Variables, images: jax.Array, image_size: int = 0
) -> jax.Array:
    """`images [N, H, W, 3] -> [N, K]` float32: the global average of the model's `features`.

    The model runs in inference mode (BatchNorm with its running statistics); this is the
    vector its classifier sees, averaged in float32 whatever the activation dtype.
    """
    _, features = model.apply(variables, resize_images(images, image_size), train=False)
    return jnp.mean(features.astype(jnp.float32), axis=(1, 2))


@functools.lru_cache(maxsize=None)
def _feature_step(mesh: jax.sharding.Mesh) -> Any:
    """`(model, image_size, variables, batch) -> (features, labels, mask)`, jitted once per
    (model, image_size) and batch shape, whichever split; the outputs replicated on `mesh`."""

    def features_of(model, image_size, variables, batch):
        return pooled_features(model, variables, batch["image"], image_size), batch["label"], batch["mask"]

    return jax.jit(features_of, static_argnums=(0, 1), out_shardings=sharding.replicated(mesh))


def extract_features(
    model: flax.linen.Module,
    variables: Variables,
    batches: Iterable[dict[str, np.ndarray]],
    *,
    image_size: int = 0,
    mesh: jax.sharding.Mesh | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Pooled features of every unmasked example of `batches`, in order, on the host.

    Args:
      model, variables: the frozen network (`{"params", "batch_stats"}`).
      batches: this process's batches {"image": float32 `[B, H, W, 3]` normalised, "label":
        int32 `[B]`, optionally "mask": bool `[B]`, False on padding} (other keys are ignored),
        as `source.eval_batches()` or `source.train_eval_batches()` yield them; B a multiple
        of the local device count.
      image_size: resize the images to `image_size x image_size` first (0: as they are).
      mesh: the device mesh (default `sharding.create_mesh()`); batches are split over it.
    Returns:
      `(features, labels)`: float32 `[N, K]` and int32 `[N]`, the N unmasked examples of the
      global batches (every process gets all of them).
    """
    mesh = sharding.create_mesh() if mesh is None else mesh
    variables = sharding.replicate(variables, mesh)
    step = functools.partial(_feature_step(mesh), model, int(image_size or 0))

    def host_batches():
        for batch in batches:
            mask = batch.get("mask")
            yield {
                "image": batch["image"],
                "label": np.asarray(batch["label"], np.int32),
                "mask": np.ones(len(batch["label"]), bool) if mask is None else np.asarray(mask, bool),
            }

    # Dispatched asynchronously; one transfer to the host at the end.
    outputs = [step(variables, batch) for batch in sharding.prefetch(host_batches(), mesh)]
    if not outputs:
        raise ValueError("no batches to extract features from")
    features, labels, masks = (np.concatenate(parts) for parts in zip(*jax.device_get(outputs)))
    return features[masks].astype(np.float32), labels[masks].astype(np.int32)


# --- The linear classifier -----------------------------------------------------------------


def learning_rate_schedule(probe: ml_collections.ConfigDict, steps_per_epoch: int) -> optax.Schedule:
    """`probe.lr`, times `probe.decay_rate` after each epoch of `probe.decay_epochs`.

    Constant within an epoch: with the defaults, 0.1 in epochs 1-10, 0.01 in 11-20, 0.001 in
    21-30 and 0.0001 in 31-40.
    """
    return training.epoch_step_schedule(probe.lr, probe.decay_epochs, probe.decay_rate, steps_per_epoch)


def _logits(params: Variables, features: jax.Array) -> jax.Array:
    kernel = params["kernel"]
    return jnp.dot(features, kernel, precision=jax.lax.Precision.HIGHEST) + params["bias"]


def _check_split(name: str, features: np.ndarray, labels: np.ndarray, num_classes: int) -> None:
    if features.ndim != 2 or labels.shape != (features.shape[0],):
        raise ValueError(f"{name} features must be [N, K] with labels [N], got {features.shape} and {labels.shape}")
    if features.shape[0] == 0:
        raise ValueError(f"the {name} split is empty")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(f"{name} labels span {labels.min()}..{labels.max()}, outside 0..{num_classes - 1}")


def fit_linear_probe(
    train_features: np.ndarray,
    train_labels: np.ndarray,
    test_features: np.ndarray,
    test_labels: np.ndarray,
    num_classes: int,
    config: ml_collections.ConfigDict,
) -> dict[str, Any]:
    """Trains a linear classifier on fixed features; its test accuracy after each epoch.

    The classifier is `features @ kernel + bias` (kernel `[K, C]` from N(0, 0.01^2), bias
    zero), trained with mean softmax cross-entropy over batches of `config.probe.batch_size`
    rows, reshuffled every epoch (the last, smaller batch is kept, as a PyTorch DataLoader
    does), by SGD with `config.probe.momentum` and L2 `config.probe.weight_decay` added to the
    gradient, like `torch.optim.SGD`; see `learning_rate_schedule` for the learning rate.
    Initialisation and shuffles derive from `config.seed`.

    Args:
      train_features, test_features: float `[N, K]` and `[M, K]`.
      train_labels, test_labels: integer `[N]` and `[M]` in `0 .. num_classes - 1`.
      num_classes: C.
      config: the experiment config; reads `config.probe` (epochs, batch_size, lr,
        decay_epochs, decay_rate, momentum, weight_decay) and `config.seed`.
    Returns:
      {"top1": test accuracy (%) after the last epoch, "best_top1", "best_epoch",
      "per_epoch": [{"epoch", "lr", "train_loss", "train_acc", "test_acc"}, ...],
      "num_train", "num_test", "num_features", "num_classes"}.
    """
    probe = config.probe
    train_features = np.asarray(train_features, np.float32)
    test_features = np.asarray(test_features, np.float32)
    train_labels = np.asarray(train_labels, np.int32)
    test_labels = np.asarray(test_labels, np.int32)
    _check_split("train", train_features, train_labels, num_classes)
    _check_split("test", test_features, test_labels, num_classes)
    if test_features.shape[1] != train_features.shape[1]:
        raise ValueError(f"train features have {train_features.shape[1]} dimensions, test {test_features.shape[1]}")
    if probe.epochs < 1:
        raise ConfigError(f"config.probe.epochs must be >= 1, got {probe.epochs}")
    batch_size = int(probe.batch_size)
    if batch_size < 1:
        raise ConfigError(f"config.probe.batch_size must be >= 1, got {probe.batch_size}")
    num_train, num_features = train_features.shape
    steps = math.ceil(num_train / batch_size)
    schedule = learning_rate_schedule(probe, steps)
    tx = training.torch_sgd(schedule, probe.momentum, probe.weight_decay)
    key = jax.random.key(config.seed)
    params = {
        "kernel": 0.01 * jax.random.normal(jax.random.fold_in(key, _INIT), (num_features, num_classes)),
        "bias": jnp.zeros((num_classes,), jnp.float32),
    }
    opt_state = tx.init(params)
    shuffle_key = jax.random.fold_in(key, _SHUFFLE)

    @jax.jit
    def run_epoch(params, opt_state, epoch, train_x, train_y, test_x, test_y):
        order = jax.random.permutation(jax.random.fold_in(shuffle_key, epoch), num_train)
        padding = steps * batch_size - num_train
        order = jnp.concatenate([order, jnp.zeros((padding,), order.dtype)]).reshape(steps, batch_size)
        valid = (jnp.arange(steps * batch_size) < num_train).reshape(steps, batch_size)

        def step(carry, batch):
            params, opt_state = carry
            ids, mask = batch
            features, labels = train_x[ids], train_y[ids]
            weights = mask.astype(jnp.float32)
            count = jnp.sum(weights)

            def loss_fn(params):
                logits = _logits(params, features)
                losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
                return jnp.sum(losses * weights) / count, logits

            (loss, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
            updates, opt_state = tx.update(grads, opt_state, params)
            params = optax.apply_updates(params, updates)
            correct = jnp.sum((jnp.argmax(logits, axis=-1) == labels) * weights)
            return (params, opt_state), (loss * count, correct)

        (params, opt_state), (losses, corrects) = jax.lax.scan(step, (params, opt_state), (order, valid))
        test_correct = jnp.sum(jnp.argmax(_logits(params, test_x), axis=-1) == test_y)
        return params, opt_state, (jnp.sum(losses), jnp.sum(corrects), test_correct)

    arrays = (train_features, train_labels, test_features, test_labels)
    train_x, train_y, test_x, test_y = (jnp.asarray(array) for array in arrays)
    sums = []
    for epoch in range(1, probe.epochs + 1):
        params, opt_state, epoch_sums = run_epoch(params, opt_state, epoch, train_x, train_y, test_x, test_y)
        sums.append(epoch_sums)  # stays on device; fetched once below
    per_epoch = []
    for epoch, (loss, correct, test_correct) in enumerate(jax.device_get(sums), start=1):
        per_epoch.append({
            "epoch": epoch,
            "lr": float(schedule((epoch - 1) * steps)),
            "train_loss": float(loss) / num_train,
            "train_acc": 100.0 * float(correct) / num_train,
            "test_acc": 100.0 * float(test_correct) / len(test_labels),
        })
    best = max(per_epoch, key=lambda record: record["test_acc"])
    return {
        "top1": per_epoch[-1]["test_acc"],
        "best_top1": best["test_acc"],
        "best_epoch": best["epoch"],
        "per_epoch": per_epoch,
        "num_train": int(num_train),
        "num_test": int(len(test_labels)),
        "num_features": int(num_features),
        "num_classes": int(num_classes),
    }


# --- The command ---------------------------------------------------------------------------


def _student_num_classes(config: ml_collections.ConfigDict) -> int:
    """The class count of the student's own training data (`config.data`), for a `.pth`."""
    if config.data.source == "shapes":
        return len(SHAPES_CLASSES)
    if config.data.name in DATASETS:
        return DATASETS[config.data.name].num_classes
    raise ConfigError(
        f"a .pth does not say its class count and config.data.name={config.data.name!r} is not one of "
        f"{', '.join(DATASETS)}; convert it with `python -m catkd_jax.convert` first"
    )


def load_frozen_network(
    config: ml_collections.ConfigDict, checkpoint: str | os.PathLike
) -> tuple[flax.linen.Module, Variables, dict[str, Any]]:
    """`(model, variables, info)` of the network at `checkpoint`, as `training.load_network`.

    Any form `checkpoints.load_variables` reads; the class count and architecture come from the
    checkpoint, except for a `.pth`, which takes `config.student.arch` and the class count of
    `config.data` (the student's own training data, not the probe's).
    """
    path = pathlib.Path(checkpoint)
    if path.is_dir() and not (path / "checkpoints").exists() and runs.run_directories(path):
        raise InputError(
            f"{path} holds several runs ({', '.join(p.name for p in runs.run_directories(path))}); "
            "probe one of them: --checkpoint " + str(path / "run_0")
        )
    num_classes = _student_num_classes(config) if str(checkpoint).endswith(".pth") else None
    return training.load_network(checkpoint, config.student.arch, num_classes, training.activation_dtype(config))


def _check_probe_data(config: ml_collections.ConfigDict) -> None:
    data = config.probe.data
    if data.get("source") != "shapes" and data.get("name") not in DATASETS:
        raise ConfigError(
            f"config.probe.data.name={data.get('name')!r} is not a data set the input pipeline knows "
            f"({', '.join(DATASETS)}). For image folders (TinyImageNet) name the "
            "normalisation to use, e.g. 'cifar100', the student's own"
        )


def run(config: ml_collections.ConfigDict, checkpoint: str | os.PathLike, workdir: str | os.PathLike) -> dict[str, Any]:
    """Linear probe of the network at `checkpoint` on `config.probe.data`; `main.py --mode linear_probe`.

    Extracts the frozen network's pooled features of both probe splits once (images resized
    to `config.probe.data.image_size`), fits `fit_linear_probe`, writes the result with the
    recipe to `workdir/linear_probe.json` and prints
    `linear probe top1 A (N test images, K features)`.

    Returns:
      `fit_linear_probe`'s result plus "checkpoint", "arch", "data" (the probe data section),
      "recipe" (`config.probe` less data), "seed", "extract_seconds", "fit_seconds".
    """
    _check_probe_data(config)
    result_path = pathlib.Path(workdir) / RESULT_FILE
    existed = outputs.check_writable(result_path) if jax.process_index() == 0 else False
    mesh = sharding.create_mesh()
    sharding.check_batch_size(config.eval_batch_size, mesh, "eval_batch_size")
    model, variables, info = load_frozen_network(config, checkpoint)  # before the (slower) data
    source = probe_source(config)
    image_size = int(config.probe.data.get("image_size", 0) or 0)

    started = time.time()
    extract = functools.partial(extract_features, model, variables, image_size=image_size, mesh=mesh)
    train_features, train_labels = extract(source.train_eval_batches())
    test_features, test_labels = extract(source.eval_batches())
    extracted = time.time()
    result = fit_linear_probe(train_features, train_labels, test_features, test_labels, source.num_classes, config)
    recipe = {name: value for name, value in config.probe.to_dict().items() if name != "data"}
    result.update(
        checkpoint=str(checkpoint),
        arch=info["arch"],
        data=config.probe.data.to_dict(),
        recipe={name: list(value) if isinstance(value, tuple) else value for name, value in recipe.items()},
        seed=config.seed,
        extract_seconds=extracted - started,
        fit_seconds=time.time() - extracted,
    )
    if jax.process_index() == 0:
        result_path.parent.mkdir(parents=True, exist_ok=True)
        result_path.write_text(json.dumps(result, indent=2) + "\n")
    console.report(f"linear probe top1 {result['top1']:.2f} ({result['num_test']} test images, "
                   f"{result['num_features']} features) -> {result_path}{outputs.replaced_note(result_path, existed)}")
    return result
