"""The original networks' intermediate features (their `feats` dict) on fixed random weights and
images: the reference that `tests/test_stages.py` compares `catkd_jax.models.stages` with.

    python benchmarks/reference_stages.py --code DIR --out tests/data/stage_references.npz [--seed 0]

DIR holds the original code's `mdistiller` package (see `benchmarks/reference_init_stats.py`,
whose `reference_builders` pick the original network of each of our architectures, plain and
CAM-head). For every architecture and variant it fills the original network's state dict with
`catkd_jax.testing.random_torch_state_dict(rows, seed)`, runs it in eval mode on
`catkd_jax.testing.random_images(size, seed)` (2 images, 32x32 for CIFAR, 224x224 for ImageNet:
the original ImageNet networks' AvgPool2d(7) needs a 7x7 last map) and stores, under
`{arch}/{variant}/`:
- `meta` (JSON): `source` (which original network), `rows` (the state dict's `[name, shape,
  dtype]` rows, which the test fills again), `shapes` (NHWC, of each `feats`, `preact_feats` entry
  and of `pooled_feat`), `stage_channels` (`get_stage_channels()`, null where the original has
  none) and `bn_before_relu` (the module names of `get_bn_before_relu()`, null where it raises);
- `feats`, `preact_feats`, `pooled_feat`, `logits`: the `catkd_jax.testing.summarize` vectors of
  those arrays, concatenated in order. The ImageNet CAM-head networks return no `pooled_feat`;
  theirs is the logits (what our models record for every CAM-head network).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json

import numpy as np
import torch

import original_code  # the sibling module: python puts this directory first on the path
from reference_init_stats import reference_builders
from catkd_jax import testing
from catkd_jax.models import list_models


def image_size(arch: str) -> int:
    return 224 if arch.startswith("imagenet_") else 32


def _nhwc(tensor: torch.Tensor) -> np.ndarray:
    array = tensor.detach().numpy()
    return array.transpose(0, 2, 3, 1) if array.ndim == 4 else array


def references(network: torch.nn.Module, size: int, seed: int) -> tuple[dict, dict[str, np.ndarray]]:
    """One network's `meta` and summary vectors (see the module doc)."""
    rows = testing.state_dict_rows(network.state_dict())
    state = testing.random_torch_state_dict(rows, seed)
    network.load_state_dict({name: torch.from_numpy(value) for name, value in state.items()})
    network.eval()
    images = torch.from_numpy(testing.random_images(size, seed).transpose(0, 3, 1, 2).copy())
    with torch.no_grad():
        logits, feats = network(images)
    stages = {kind: [_nhwc(value) for value in feats.get(kind, ())] for kind in ("feats", "preact_feats")}
    stages["pooled_feat"] = [_nhwc(feats.get("pooled_feat", logits))]
    stages["logits"] = [logits.numpy()]
    arrays = {kind: np.concatenate([testing.summarize(v) for v in values] or [np.zeros(0, np.float32)])
              for kind, values in stages.items()}
    meta = {"rows": rows, "shapes": {kind: [list(v.shape) for v in values] for kind, values in stages.items()}}
    meta["stage_channels"] = list(network.get_stage_channels()) if hasattr(network, "get_stage_channels") else None
    try:
        norms = network.get_bn_before_relu()
    except NotImplementedError:
        norms = None
    names = {id(module): name for name, module in network.named_modules()}
    meta["bn_before_relu"] = None if norms is None else [names[id(norm)] for norm in norms]
    return meta, arrays


def collect(seed: int) -> dict[str, np.ndarray]:
    arrays = {"seed": np.asarray(seed)}
    for arch in list_models():
        for variant, (source, build) in reference_builders(arch).items():
            with contextlib.redirect_stdout(io.StringIO()):  # the CIFAR MobileNetV2 prints its settings
                network = build()
            meta, summaries = references(network, image_size(arch), seed)
            arrays[f"{arch}/{variant}/meta"] = np.asarray(json.dumps({"source": source, **meta}))
            for kind, summary in summaries.items():
                arrays[f"{arch}/{variant}/{kind}"] = summary
            print(f"{arch} {variant}: {source}", flush=True)
    return arrays


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return original_code.reference_arguments(__doc__, "the .npz file to write", "seed of the weights and images", argv)


def main() -> None:
    args = parse_args()
    arrays = collect(args.seed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out, **arrays)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
