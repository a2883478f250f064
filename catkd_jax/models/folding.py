"""The inference form of a network: every BatchNorm that follows a convolution folded into it.

A frozen teacher only ever runs BatchNorm with its running statistics, which is the affine map
`y = x * a + b` with `a = scale / sqrt(var + eps)` and `b = bias - mean * a`. Folded into the
preceding convolution (kernel `* a` per output channel, bias `b`), the network computes the same
function with one pass less over every activation, and an accelerator compiler can fuse the
bias and ReLU into the convolution itself.

This works for every architecture without touching the model code: the conv -> BatchNorm pairs
are found by tracing the model once (a BatchNorm that is the only user of a convolution's
output), and `apply_folded` runs the unchanged model with the folded convolutions adding their
new bias and the folded BatchNorms skipped.
"""

from __future__ import annotations

import collections
import functools
from typing import Any, Sequence

import flax
import flax.linen as nn
import jax
import jax.extend.core as jax_core
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

from catkd_jax.models.layers import BatchNorm
from catkd_jax.models.stages import COLLECTION, Path, Stages, stages_from
from catkd_jax.types import Variables

_SEPARATOR = "/"  # module names contain dots (PyTorch paths) but never slashes


def conv_batch_norm_pairs(model: nn.Module, variables: Variables, image_shape: tuple[int, ...]) -> list[tuple[Path, Path]]:
    """`(conv path, BatchNorm path)` of every BatchNorm that is the only user of a conv's output.

    A conv output used elsewhere too (a pre-activation block's identity shortcut) or recorded as a
    stage (`catkd_jax.models.stages`: the WideResNets' stem conv) is not folded, so that folded
    variables give every stage too. Paths are tuples of submodule names, as in the variables
    pytree; `image_shape` is `[H, W, 3]`. A function of the network and its variables' shapes
    only, found once per process for each (it traces the whole network: half a second for a
    resnet8, at every run's start).
    """
    shapes = jax.tree_util.tree_map(lambda leaf: jax.ShapeDtypeStruct(jnp.shape(leaf), jnp.result_type(leaf)), variables)
    leaves, structure = jax.tree_util.tree_flatten(shapes)
    return list(_conv_batch_norm_pairs(model, structure, tuple(leaves), tuple(image_shape)))


@functools.lru_cache(maxsize=None)
def _conv_batch_norm_pairs(model: nn.Module, structure: Any, leaves: tuple[jax.ShapeDtypeStruct, ...],
                           image_shape: tuple[int, ...]) -> tuple[tuple[Path, Path], ...]:
    """`conv_batch_norm_pairs` of variables of `structure` with `leaves`' shapes, found from the
    model's jaxpr, in which every conv output and BatchNorm input is tagged with its module path."""

    def tag(next_fun, args, kwargs, context):
        module = context.module
        if context.method_name != "__call__" or not isinstance(module, (nn.Conv, BatchNorm)):
            return next_fun(*args, **kwargs)
        path = _SEPARATOR.join(module.path)
        if isinstance(module, BatchNorm):
            return next_fun(checkpoint_name(args[0], f"bn{_SEPARATOR}{path}"), *args[1:], **kwargs)
        return checkpoint_name(next_fun(*args, **kwargs), f"conv{_SEPARATOR}{path}")

    def trace(variables, images):
        with nn.intercept_methods(tag):  # the stages are outputs too
            return model.apply(variables, images, train=False, mutable=[COLLECTION])

    images = jax.ShapeDtypeStruct((1, *image_shape), jnp.float32)
    jaxpr = jax.make_jaxpr(trace)(jax.tree_util.tree_unflatten(structure, leaves), images).jaxpr
    users = collections.defaultdict(list)
    for equation in jaxpr.eqns:
        for var in equation.invars:
            if isinstance(var, jax_core.Var):
                users[var].append(equation)
    outputs = {var for var in jaxpr.outvars if isinstance(var, jax_core.Var)}
    pairs = []
    for equation in jaxpr.eqns:
        kind, _, conv_path = equation.params.get("name", "").partition(_SEPARATOR)
        if equation.primitive.name != "name" or kind != "conv":
            continue
        (conv_output,) = equation.outvars
        consumers = users[conv_output]
        if conv_output in outputs or len(consumers) != 1 or consumers[0].primitive.name != "name":
            continue
        kind, _, norm_path = consumers[0].params["name"].partition(_SEPARATOR)
        if kind == "bn":
            pairs.append((tuple(conv_path.split(_SEPARATOR)), tuple(norm_path.split(_SEPARATOR))))
    return tuple(pairs)


def fold_batch_norm(model: nn.Module, variables: Variables, image_shape: tuple[int, ...]) -> Variables:
    """`{"params", "batch_stats"}` of the inference form of `model` with `variables` (see the module doc).

    Folded convolutions gain (or update) a `bias`; folded BatchNorms disappear; everything else
    (the classifier, a BatchNorm that follows no convolution, as in pre-activation blocks) is
    unchanged. Run it with `apply_folded`.
    """
    params = flax.traverse_util.flatten_dict(flax.core.unfreeze(variables["params"]))
    stats = flax.traverse_util.flatten_dict(flax.core.unfreeze(variables["batch_stats"]))
    for conv_path, norm_path in conv_batch_norm_pairs(model, variables, image_shape):
        variance = stats.pop((*norm_path, "var"))
        scale = params.pop((*norm_path, "scale")) * jax.lax.rsqrt(variance + BatchNorm.epsilon)
        shift = params.pop((*norm_path, "bias")) - stats.pop((*norm_path, "mean")) * scale
        kernel = params[(*conv_path, "kernel")]
        conv_bias = params.get((*conv_path, "bias"), jnp.zeros_like(shift))
        params[(*conv_path, "kernel")] = kernel * scale  # HWIO: the last axis is the output channel
        params[(*conv_path, "bias")] = conv_bias * scale + shift
    unflatten = flax.traverse_util.unflatten_dict
    return {"params": unflatten(params), "batch_stats": unflatten(stats)}


def apply_folded(
    model: nn.Module, folded: Variables, images: jax.Array, *, mutable: Sequence[str] = ()
) -> Any:
    """`model`'s inference-mode `(logits, features)` from its folded variables (`fold_batch_norm`).

    With `mutable` collections (e.g. `stages.COLLECTION`) it returns, like `model.apply`,
    `((logits, features), updated collections)`.
    """
    params = flax.traverse_util.flatten_dict(flax.core.unfreeze(folded["params"]))

    def run_folded(next_fun, args, kwargs, context):
        module = context.module
        if context.method_name != "__call__":
            return next_fun(*args, **kwargs)
        if isinstance(module, BatchNorm) and (*module.path, "scale") not in params:
            return args[0]
        output = next_fun(*args, **kwargs)
        if isinstance(module, nn.Conv) and not module.use_bias and (*module.path, "bias") in params:
            output = output + params[(*module.path, "bias")].astype(output.dtype)
        return output

    with nn.intercept_methods(run_folded):
        return model.apply(folded, images, train=False, mutable=list(mutable) or False)


def apply_folded_with_stages(
    model: nn.Module, folded: Variables, images: jax.Array
) -> tuple[tuple[jax.Array, jax.Array], Stages]:
    """`apply_folded` that also returns the stages (`catkd_jax.models.stages`): `((logits,
    features), stages)`, equal to the unfolded inference's; a stage that is a folded BatchNorm's
    output is the folded convolution's."""
    outputs, collections = apply_folded(model, folded, images, mutable=[COLLECTION])
    return outputs, stages_from(collections)
