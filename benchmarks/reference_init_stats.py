"""Per-tensor statistics of the original PyTorch networks' initialisation: the reference that
`tests/test_initialization.py` compares this project's initialisation with.

    python benchmarks/reference_init_stats.py --code DIR --out tests/data/init_statistics.json [--seed 0]

DIR holds the original code's `mdistiller` package (github.com/GzyAftermath/CAT-KD), e.g.
`git -C CAT-KD archive HEAD mdistiller | tar -x -C DIR`; it is imported from there, not copied
into this project. For every architecture of `catkd_jax.models.list_models()` it builds, after
`torch.manual_seed(seed)`, the original's network of that name in two variants:
- `plain`: the network with its linear classifier (`cifar_model_dict[name]`; the ImageNet ResNets
  and MobileNetV1 from `imagenet_model_dict`, where the MobileNetV1 is called "MobileNetV2");
- `cam_head`: the CAT-KD network whose classifier is the bias-free 1x1 convolution `conv_test`
  (`{name}_test`). Where the original registers no `_test` network of that name (resnet8/14/44,
  ResNet18, wrn_16_1, vgg11/16/19), it is its family's `_test` class built with the arguments the
  plain network's builder gives its class.
and writes, under the state dict's keys, each tensor's element count, mean, standard deviation
(population) and largest absolute value, rounded to 6 significant digits.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import json
import re
from typing import Callable

import numpy as np
import torch

import original_code  # the sibling module: python puts this directory first on the path
from catkd_jax.models import create_model, list_models

# Our ImageNet architectures under the original's `imagenet_model_dict` names.
_IMAGENET_NAMES = {
    "imagenet_resnet18": "ResNet18",
    "imagenet_resnet34": "ResNet34",
    "imagenet_resnet50": "ResNet50",
    "imagenet_mobilenet_v1": "MobileNetV2",  # mdistiller's ImageNet "MobileNetV2" is a MobileNetV1
}
# Module of the CIFAR families without a `_test` network of every name -> (plain class, CAM-head class).
_CAM_HEAD_CLASSES = {
    "mdistiller.models.cifar.resnet": ("ResNet", "ResNet_test"),
    "mdistiller.models.cifar.resnetv2": ("ResNet", "ResNet_test"),
    "mdistiller.models.cifar.wrn": ("WideResNet", "WideResNet_test"),
    "mdistiller.models.cifar.vgg": ("VGG", "VGG_test"),
}


def _cam_head_builder(plain_builder: Callable[..., torch.nn.Module]) -> Callable[..., torch.nn.Module]:
    """The plain builder with its module's plain class swapped for the family's CAM-head class:
    the `_test` network that the original would register under that name."""
    module = importlib.import_module(plain_builder.__module__)
    plain_class, cam_head_class = _CAM_HEAD_CLASSES[plain_builder.__module__]

    def build(**kwargs) -> torch.nn.Module:
        original = getattr(module, plain_class)
        setattr(module, plain_class, getattr(module, cam_head_class))
        try:
            return plain_builder(**kwargs)
        finally:
            setattr(module, plain_class, original)

    return build


def reference_builders(arch: str) -> dict[str, tuple[str, Callable[[], torch.nn.Module]]]:
    """`{"plain": (source, build), "cam_head": (source, build)}` for our architecture `arch`;
    `source` says which original network it is. Needs the original's `mdistiller` importable."""
    from mdistiller.models import cifar_model_dict, imagenet_model_dict  # pylint: disable=import-outside-toplevel

    num_classes = create_model(arch).num_classes
    if arch in _IMAGENET_NAMES:
        name, models = _IMAGENET_NAMES[arch], imagenet_model_dict
        plain, cam_head = models[name], models[name + "_test"]
        cam_source = f"imagenet_model_dict[{name + '_test'!r}]"
    else:
        name, models = arch, cifar_model_dict
        plain = models[name][0]
        if name + "_test" in models:
            cam_head, cam_source = models[name + "_test"][0], f"cifar_model_dict[{name + '_test'!r}]"
        else:
            cam_head = _cam_head_builder(plain)
            cam_source = f"{_CAM_HEAD_CLASSES[plain.__module__][1]} with {plain.__name__}'s arguments"
    return {
        "plain": (f"{'imagenet' if arch in _IMAGENET_NAMES else 'cifar'}_model_dict[{name!r}]",
                  lambda: plain(num_classes=num_classes)),
        "cam_head": (cam_source, lambda: cam_head(num_classes=num_classes)),
    }


def _significant(value: float) -> float | int:
    rounded = float(f"{value:.6g}")
    return int(rounded) if rounded.is_integer() else rounded  # 1, not 1.0: a smaller file


def tensor_statistics(state_dict: dict[str, torch.Tensor]) -> dict[str, list[float]]:
    """`{key: [count, mean, std, max |x|]}`, in float64, rounded to 6 significant digits."""
    statistics = {}
    for key, tensor in state_dict.items():
        values = tensor.detach().cpu().double().numpy().ravel()
        statistics[key] = [int(values.size), *(_significant(float(v)) for v in
                                               (values.mean(), values.std(), np.abs(values).max()))]
    return statistics


def collect(seed: int) -> dict:
    networks = {}
    for arch in list_models():
        networks[arch] = {}
        for variant, (source, build) in reference_builders(arch).items():
            torch.manual_seed(seed)
            with contextlib.redirect_stdout(io.StringIO()):  # the CIFAR MobileNetV2 prints its settings
                network = build()
            networks[arch][variant] = {"source": source, "tensors": tensor_statistics(network.state_dict())}
    return {"about": __doc__.split("\n\n")[0].replace("\n", " "), "torch": torch.__version__, "seed": seed,
            "statistics": "count, mean, std, max |x|", "networks": networks}


def dumps(content: dict) -> str:
    """JSON with each tensor's statistics on a line of its own, without indentation."""
    text = json.dumps(content, indent=0, separators=(",", ":"))
    return re.sub(r"\[\n([^\[\]{}]*?)\n\]", lambda m: "[" + m.group(1).replace("\n", "") + "]", text) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return original_code.reference_arguments(__doc__, "the JSON file to write", "torch.manual_seed before each network", argv)


def main() -> None:
    args = parse_args()
    text = dumps(collect(args.seed))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(f"wrote {args.out} ({len(text) / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
