"""PyTorch checkpoints (mdistiller toolbox, torchvision model zoo) <-> Flax variables.

The Flax models name every submodule after the PyTorch module it mirrors, so the mapping is
mechanical: the PyTorch key of a Flax leaf is its module path joined with dots plus

    params/kernel      -> weight   (conv: HWIO -> OIHW; dense: [K, C] -> [C, K])
    params/scale       -> weight   (BatchNorm)
    params/bias        -> bias
    batch_stats/mean   -> running_mean
    batch_stats/var    -> running_var

and every BatchNorm also has a `num_batches_tracked` buffer (read and ignored; written as 0).
The classifier is 'classifier' here and `model.torch_classifier_name` there ('fc', 'linear',
'classifier', 'classifier.0'). The ImageNet models are named like torchvision's ResNets
(`conv1`, `layer2.0.downsample.0`, `fc`) and mdistiller's MobileNetV1 (`model.3.4`, `fc`), so
torchvision's published ResNet state dicts import as they are.

Two layouts are read. The plain layout (published teachers) has a linear classifier with a
bias. The CAM-head layout of the CAT-KD code replaces it by `conv_test.weight` `[C, K, 1, 1]`
without bias, whose output is pooled into the logits; it imports as a classifier with that
kernel and a zero bias (or no bias with `classifier_bias=False`), which gives identical logits.
Where a CAM-head file still carries the unused linear classifier (MobileNetV2), it is ignored.

The command line (`convert.cli`) writes a converted `.pth` as a model directory:
    python -m catkd_jax.convert --arch resnet32x4 --checkpoint in.pth --output DIR
This package never imports `catkd_jax.checkpoints` (which reads `.pth` files through it).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Iterator, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from catkd_jax.models import canonical_name, create_model
from catkd_jax.models import stages as model_stages
from catkd_jax.types import Variables
from catkd_jax.errors import InputError, MissingInputError


_CAM_HEAD_KEY = "conv_test.weight"
_LEAF_NAMES = {
    ("params", "kernel"): "weight",
    ("params", "scale"): "weight",
    ("params", "bias"): "bias",
    ("batch_stats", "mean"): "running_mean",
    ("batch_stats", "var"): "running_var",
}
# The collections a PyTorch state dict holds (parameters and BatchNorm buffers).
MODULE_COLLECTIONS = ("params", "batch_stats")


class CheckpointMismatchError(InputError):
    """A state dict does not fit the architecture; the message lists every problem."""


@dataclasses.dataclass(frozen=True)
class _Leaf:
    collection: str
    path: tuple[str, ...]  # module path, then the leaf name
    shape: tuple[int, ...]  # Flax shape


def _torch_module_name(module_path: tuple[str, ...], classifier_name: str) -> str:
    if module_path == ("classifier",):
        return classifier_name
    return ".".join(module_path)


def _to_torch_layout(array: np.ndarray) -> np.ndarray:
    if array.ndim == 4:  # conv kernel HWIO -> OIHW
        return np.transpose(array, (3, 2, 0, 1))
    if array.ndim == 2:  # dense kernel [K, C] -> [C, K]
        return array.T
    return array


def _from_torch_layout(array: np.ndarray) -> np.ndarray:
    if array.ndim == 4:  # OIHW -> HWIO
        return np.transpose(array, (2, 3, 1, 0))
    if array.ndim == 2:
        return array.T
    return array


def torch_shape(flax_shape: tuple[int, ...]) -> tuple[int, ...]:
    return _to_torch_layout(np.empty(flax_shape, np.bool_)).shape


def torch_layout(
    arch: str, num_classes: int | None = None, classifier_bias: bool = True
) -> dict[str, _Leaf]:
    """PyTorch key -> the Flax leaf it maps to, for architecture `arch` (no computation).

    `num_classes=None` is the architecture's default (100 CIFAR, 1000 ImageNet). Parameter
    shapes do not depend on the input size, so a 32x32 input serves every architecture.
    """
    model = create_model(arch, num_classes=num_classes, classifier_bias=classifier_bias)
    shapes = jax.eval_shape(
        lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3), jnp.float32), train=False)
    )
    layout: dict[str, _Leaf] = {}
    for key_path, leaf in jax.tree_util.tree_flatten_with_path(shapes)[0]:
        collection, *module_path, leaf_name = (entry.key for entry in key_path)
        module = _torch_module_name(tuple(module_path), model.torch_classifier_name)
        layout[f"{module}.{_LEAF_NAMES[(collection, leaf_name)]}"] = _Leaf(
            collection, (*module_path, leaf_name), tuple(leaf.shape)
        )
    return layout


def _batch_norm_modules(layout: Mapping[str, _Leaf]) -> list[str]:
    return [key.removesuffix(".running_mean") for key in layout if key.endswith(".running_mean")]


def _set_nested(tree: dict, path: tuple[str, ...], value: Any) -> None:
    for name in path[:-1]:
        tree = tree.setdefault(name, {})
    tree[path[-1]] = value


def _describe(problems: list[str], what: str, limit: int = 20) -> str:
    shown = "\n  ".join(problems[:limit])
    more = f"\n  ... and {len(problems) - limit} more" if len(problems) > limit else ""
    return f"{len(problems)} {what}:\n  {shown}{more}"


def has_cam_head(state_dict: Mapping[str, Any]) -> bool:
    """Whether a state dict is of the CAM-head layout (a bias-free `conv_test` classifier)."""
    return any(key.removeprefix("module.") == _CAM_HEAD_KEY for key in state_dict)


def from_torch_state_dict(
    state_dict: Mapping[str, Any],
    arch: str,
    num_classes: int | None = None,
    classifier_bias: bool = True,
) -> Variables:
    """A PyTorch state dict (plain or CAM-head layout) -> `{"params", "batch_stats"}`.

    Arrays may be numpy arrays or anything `np.asarray` accepts (CPU torch tensors).
    `num_classes=None` is the architecture's default (100 CIFAR, 1000 ImageNet).
    Raises `CheckpointMismatchError` listing every missing, unexpected and mis-shaped key.
    """
    arch = canonical_name(arch)
    num_classes = create_model(arch, num_classes).num_classes
    layout = torch_layout(arch, num_classes, classifier_bias)
    classifier = create_model(arch).torch_classifier_name
    state = {key.removeprefix("module."): value for key, value in state_dict.items()}

    expected = dict(layout)
    ignored = {f"{bn}.num_batches_tracked" for bn in _batch_norm_modules(layout)}
    cam_head = _CAM_HEAD_KEY in state
    if cam_head:
        # The classifier comes from conv_test; a leftover linear classifier is ignored.
        ignored |= {f"{classifier}.weight", f"{classifier}.bias"}
        kernel_leaf = expected.pop(f"{classifier}.weight")
        expected.pop(f"{classifier}.bias", None)
        expected[_CAM_HEAD_KEY] = kernel_leaf

    missing = [key for key in expected if key not in state]
    unexpected = [key for key in state if key not in expected and key not in ignored]
    mis_shaped = []
    variables: Variables = {"params": {}, "batch_stats": {}}
    for key, leaf in expected.items():
        if key not in state:
            continue
        value = np.asarray(state[key], dtype=np.float32)
        if key == _CAM_HEAD_KEY:
            want = (leaf.shape[1], leaf.shape[0], 1, 1)
            converted = value[:, :, 0, 0].T if value.shape == want else None
        else:
            want = torch_shape(leaf.shape)
            converted = _from_torch_layout(value) if value.shape == want else None
        if converted is None:
            mis_shaped.append(f"{key}: checkpoint {tuple(value.shape)}, {arch} expects {want}")
            continue
        _set_nested(variables[leaf.collection], leaf.path, np.ascontiguousarray(converted))

    if cam_head and classifier_bias and not missing:
        _set_nested(
            variables["params"], ("classifier", "bias"), np.zeros((num_classes,), np.float32)
        )
    problems = []
    if missing:
        problems.append(_describe(missing, "missing keys"))
    if unexpected:
        problems.append(_describe(unexpected, "unexpected keys"))
    if mis_shaped:
        problems.append(_describe(mis_shaped, "mis-shaped keys"))
    if problems:
        raise CheckpointMismatchError(
            f"the state dict does not fit architecture {arch!r} with {num_classes} classes "
            f"({'CAM-head' if cam_head else 'plain'} layout). Check --arch and the class count.\n"
            + "\n".join(problems)
        )
    return variables


def to_torch_state_dict(variables: Mapping[str, Any], arch: str) -> dict[str, np.ndarray]:
    """`{"params", "batch_stats"}` -> a state dict in the plain (published) layout.

    A classifier without bias is written with a zero bias, which gives the same logits.
    """
    arch = canonical_name(arch)
    kernel = np.asarray(variables["params"]["classifier"]["kernel"])
    num_classes = kernel.shape[1]
    layout = torch_layout(arch, num_classes, classifier_bias=True)
    classifier = create_model(arch).torch_classifier_name
    has_bias = "bias" in variables["params"]["classifier"]
    batch_norms = set(_batch_norm_modules(layout))
    state: dict[str, np.ndarray] = {}
    for key, leaf in layout.items():
        if key == f"{classifier}.bias" and not has_bias:
            state[key] = np.zeros((num_classes,), np.float32)
        else:
            value = np.asarray(model_stages.at_path(variables[leaf.collection], leaf.path), np.float32)
            if value.shape != leaf.shape:
                raise CheckpointMismatchError(
                    f"{'/'.join(leaf.path)} has shape {value.shape}, {arch} expects {leaf.shape}"
                )
            state[key] = np.ascontiguousarray(_to_torch_layout(value))
        module = key.rsplit(".", 1)[0]
        if key.endswith(".running_var") and module in batch_norms:
            state[f"{module}.num_batches_tracked"] = np.zeros((), np.int64)
    return state


def torch_arrays(variables: Mapping[str, Any], arch: str, cam_head: bool = False) -> dict[str, np.ndarray]:
    """Every leaf of `{"params", "batch_stats"}` under its PyTorch key, in PyTorch's layout.

    Unlike `to_torch_state_dict`, it traces no model: no shape check against `arch` (only its
    classifier's PyTorch name is read), no `num_batches_tracked`, and no bias is added to a
    classifier without one. `cam_head=True` writes the classifier kernel `[K, C]` as the CAM-head
    layout's `conv_test.weight` `[C, K, 1, 1]` (and its bias, if any, under the Linear's name).
    Arrays may be views of the variables (transposed, not copied).
    """
    classifier = create_model(arch).torch_classifier_name
    arrays: dict[str, np.ndarray] = {}
    for collection, module_path, leaf_name, value in _leaves(variables):
        if cam_head and (collection, *module_path, leaf_name) == ("params", "classifier", "kernel"):
            arrays[_CAM_HEAD_KEY] = value.T[:, :, None, None]
            continue
        module = _torch_module_name(module_path, classifier)
        arrays[f"{module}.{_LEAF_NAMES[(collection, leaf_name)]}"] = _to_torch_layout(value)
    return arrays


def module_torch_arrays(variables: Mapping[str, Any], prefix: str) -> dict[str, np.ndarray]:
    """`module_from_torch`'s inverse: every leaf of a module's variables under its PyTorch key
    (`prefix.<module path>.weight`, ...), in PyTorch's layout; collections other than
    `MODULE_COLLECTIONS` (a method's constants) have no key and are left out."""
    return {".".join((prefix, *module_path, _LEAF_NAMES[(collection, leaf_name)])): _to_torch_layout(value)
            for collection, module_path, leaf_name, value in _leaves(variables) if collection in MODULE_COLLECTIONS}


def _leaves(variables: Mapping[str, Any]) -> Iterator[tuple[str, tuple[str, ...], str, np.ndarray]]:
    """`(collection, module path, leaf name, float32 array)` of every leaf of `variables`."""
    for key_path, leaf in jax.tree_util.tree_flatten_with_path(dict(variables))[0]:
        collection, *module_path, leaf_name = (entry.key for entry in key_path)
        yield collection, tuple(module_path), leaf_name, np.asarray(leaf, np.float32)


def module_from_torch(state_dict: Mapping[str, Any], template: Mapping[str, Any], prefix: str) -> Variables:
    """The variables of a module that mirrors PyTorch module `prefix` (e.g. a distiller's
    `conv_reg`), from a state dict holding it (other keys are ignored).

    `template` is the module's variables or their shapes (`jax.eval_shape` of its `init`); its
    leaves name the keys as for networks (`prefix.<module path>.weight`, ...). Raises
    `CheckpointMismatchError` listing every missing or mis-shaped key.
    """
    state = {key.removeprefix("module."): value for key, value in state_dict.items()}
    variables: Variables = {}
    problems = []
    for key_path, leaf in jax.tree_util.tree_flatten_with_path(dict(template))[0]:
        collection, *module_path, leaf_name = (entry.key for entry in key_path)
        key = ".".join((prefix, *module_path, _LEAF_NAMES[(collection, leaf_name)]))
        if key not in state:
            problems.append(f"{key}: missing")
            continue
        value = np.asarray(state[key], np.float32)
        if value.shape != torch_shape(tuple(leaf.shape)):
            problems.append(f"{key}: state dict {tuple(value.shape)}, expected {torch_shape(tuple(leaf.shape))}")
            continue
        _set_nested(variables.setdefault(collection, {}), (*module_path, leaf_name),
                    np.ascontiguousarray(_from_torch_layout(value)))
    if problems:
        raise CheckpointMismatchError(f"the state dict does not hold module {prefix!r} as expected: "
                                      + _describe(problems, "problems"))
    return variables


def checkpoint_num_classes(state_dict: Mapping[str, Any], arch: str) -> int | None:
    """The class count of a state dict's classifier for `arch`, or None if it has none."""
    classifier = create_model(arch).torch_classifier_name
    state = {key.removeprefix("module."): value for key, value in state_dict.items()}
    for key in (_CAM_HEAD_KEY, f"{classifier}.weight"):  # either way, [C, K(, 1, 1)]
        if key in state:
            return int(np.shape(state[key])[0])
    return None


def load_torch_checkpoint(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Reads a `.pth` (`{"model": state_dict, ...}` or a bare state dict) as numpy arrays.

    Published torchvision weights are bare state dicts, mdistiller's checkpoints the wrapped
    form.

    Unpickling is restricted (`weights_only=True`), so an untrusted file cannot run code.
    `module.` prefixes (from DataParallel) are stripped. Needs PyTorch installed.
    """
    try:
        import torch  # pylint: disable=import-outside-toplevel
    except ImportError as error:
        raise ImportError(
            "reading a .pth file needs PyTorch: pip install torch (the CPU build is enough)"
        ) from error
    if not os.path.isfile(path):
        raise MissingInputError(f"no checkpoint file at {path}")
    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises UnpicklingError, RuntimeError, EOFError...
        # Never PyTorch's own advice (retry with weights_only=False): that executes the file's code.
        raise InputError(
            f"{path} is not a PyTorch checkpoint of tensors only (it is another kind of file, damaged, or holds "
            "Python objects besides tensors); nothing in it was executed. Only weights-only .pth files are read. "
            "If you trust its source, re-save its state dict with PyTorch (torch.save(model.state_dict(), ...)) "
            "and use that file"
        ) from error
    state_dict = content.get("model", content) if isinstance(content, dict) else None
    if not isinstance(state_dict, dict) or not all(
        isinstance(value, torch.Tensor) for value in state_dict.values()
    ):
        raise InputError(
            f"{path} holds neither a state dict nor a {{'model': state_dict}} dictionary of tensors; "
            "save the network's state_dict() and use that file"
        )
    return {
        key.removeprefix("module."): value.detach().cpu().numpy()
        for key, value in state_dict.items()
    }
