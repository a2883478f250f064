"""Step rate of the original PyTorch CAT-KD code, run as its trainer runs it: the reference that
this project's train step (`benchmarks/throughput.py`) is compared with.

    python benchmarks/reference_step.py --code DIR [--pairs resnet32x4:resnet8x4,resnet56:resnet20]
        [--batch-size 64] [--steps 20] [--warmup 3] [--json]
    python benchmarks/reference_step.py --code DIR --pairs ShuffleV1,MobileNetV2   # vanilla students
    python benchmarks/reference_step.py --code DIR --method fitnet,crd --pairs resnet32x4:resnet8x4

DIR holds the original code's `mdistiller` package (github.com/GzyAftermath/CAT-KD), e.g.
`git -C CAT-KD archive HEAD mdistiller | tar -x -C DIR`; it is imported from there, not copied
into this project. A pair is built as its `tools/train.py` builds it: for CAT-KD with `if_test:
True` (the `_test` CAM-head networks, the `CAT_KD` distiller), for another `--method` its
distiller over the plain networks with the toolbox's default `CFG` and the settings that must
fit the pair (`catkd_jax.methods.fitted_settings`; CRD with banks of CIFAR-100's 50,000 examples
and random contrastive rows, as its `CRDTrainer` passes them; the original's config code needs
`yacs`), a student alone as its vanilla run (the plain network, the `Vanilla` distiller);
each in `torch.nn.DataParallel`, with SGD (momentum 0.9,
weight decay 5e-4) and `cudnn.benchmark` on, random weights (the speed does not depend on them)
and the CAT settings of `catkd_jax.default_config`, so that the step is the one throughput.py
times. On the first GPU, else the CPU, from a batch already on the device:
- `trainer`: its `BaseTrainer.train_iter`: zero_grad, forward, the summed losses' backward, the
  SGD step, then top-1/top-5 accuracy and the loss copied to the host (a sync per step);
- `step`: the same without that bookkeeping, synchronised once after the timed steps.
Reported per pair: images/s of each, and the allocator's peak device memory (GPUs).
"""

from __future__ import annotations

import argparse
import json
import time
import types
import unittest.mock
from typing import Callable

import torch

import original_code  # the sibling modules: python puts this directory first on the path
from throughput import CIFAR100_TRAIN_SIZE
from catkd_jax import default_config, methods
from catkd_jax.models import create_model

NUM_CLASSES = 100


def _reference_config() -> types.SimpleNamespace:
    """The original code's `cfg.CAT_KD` fields, from this project's default CAT-KD settings."""
    cat_kd = default_config.get_config().cat_kd
    loss = types.SimpleNamespace(CE_WEIGHT=cat_kd.ce_weight, CAT_loss_weight=cat_kd.beta,
                                 CAM_RESOLUTION=cat_kd.resolution)
    return types.SimpleNamespace(CAT_KD=types.SimpleNamespace(
        LOSS=loss, onlyCAT=cat_kd.ce_weight == 0, IF_NORMALIZE=cat_kd.normalize, IF_BINARIZE=cat_kd.binarize,
        IF_OnlyTransferPartialCAMs=False, CAMs_Nums=0, Strategy=0))


def _seconds_per_step(one_step: Callable[[], object], steps: int, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    started = time.perf_counter()
    for _ in range(steps):
        one_step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - started) / steps


def _network(models: dict, name: str) -> torch.nn.Module:
    if name not in models:
        raise SystemExit(f"reference_step.py: the original code has no network {name}; it has {sorted(models)}")
    return models[name][0](num_classes=NUM_CLASSES)


def _distiller(teacher: str | None, student: str, method: str) -> torch.nn.Module:
    """The module the original trainer calls, as its tools/train.py builds it: `CAT_KD` over the
    `_test` (CAM-head) networks, another method's distiller over the plain networks with the
    toolbox's default `CFG` (which needs `yacs`), or `Vanilla` over the plain student when there
    is no teacher."""
    from mdistiller.models import cifar_model_dict  # pylint: disable=import-outside-toplevel

    if teacher is None:
        from mdistiller.distillers import Vanilla  # pylint: disable=import-outside-toplevel

        return Vanilla(_network(cifar_model_dict, student))
    if method == "cat_kd":
        from mdistiller.distillers import CAT_KD  # pylint: disable=import-outside-toplevel

        networks = [_network(cifar_model_dict, name + "_test") for name in (teacher, student)]
        return CAT_KD(networks[1], networks[0], _reference_config())
    from mdistiller.distillers import distiller_dict  # pylint: disable=import-outside-toplevel

    networks = [_network(cifar_model_dict, name) for name in (teacher, student)]
    # The settings that must fit the pair (ReviewKD's lists, CRD's embedding inputs), as its configs set them.
    cfg = original_code.original_cfg(methods.fitted_settings(method, create_model(student, NUM_CLASSES),
                                                             create_model(teacher, NUM_CLASSES)))
    if method != "crd":
        return distiller_dict[original_code.DISTILLERS[method]](networks[1], networks[0], cfg)
    # CRD's banks hold CIFAR-100's training set; its AliasMethod goes to a GPU (unused: the loader draws).
    with unittest.mock.patch("mdistiller.distillers.CRD.AliasMethod.cuda", lambda self: self):
        return distiller_dict["CRD"](networks[1], networks[0], cfg, CIFAR100_TRAIN_SIZE)


def measure(teacher: str | None, student: str, batch_size: int, steps: int, warmup: int,
            method: str = "cat_kd") -> dict:
    """Images/s of the original train step of `method` from `teacher` (or of a vanilla `student`
    when `teacher` is None), with the original's `mdistiller` importable; see the module docstring."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.backends.cudnn.benchmark = True
    torch.manual_seed(0)
    distiller = torch.nn.DataParallel(_distiller(teacher, student, method).to(device))
    distiller.train()
    optimizer = torch.optim.SGD(distiller.module.get_learnable_parameters(), lr=0.05, momentum=0.9,
                                weight_decay=5e-4)
    image = torch.randn(batch_size, 3, 32, 32, device=device)
    target = torch.randint(0, NUM_CLASSES, (batch_size,), device=device)
    inputs = {}
    if method == "crd" and teacher is not None:  # what its CRDTrainer passes from the "sample" loader
        index = torch.randperm(CIFAR100_TRAIN_SIZE, device=device)[:batch_size]
        negatives = torch.randint(0, CIFAR100_TRAIN_SIZE, (batch_size, distiller.module.contrast.K), device=device)
        inputs = {"index": index, "contrastive_index": torch.cat([index[:, None], negatives], dim=1)}

    def step() -> tuple[torch.Tensor, torch.Tensor]:
        optimizer.zero_grad()
        preds, losses = distiller(image=image, target=target, epoch=1, **inputs)
        loss = sum(value.mean() for value in losses.values())
        loss.backward()
        optimizer.step()
        return preds, loss

    def trainer_iteration() -> tuple[float, float, float]:
        preds, loss = step()
        correct = preds.topk(5, 1, True, True)[1].t().eq(target.view(1, -1))
        top1, top5 = (correct[:k].reshape(-1).float().sum(0) * (100.0 / batch_size) for k in (1, 5))
        return loss.cpu().detach().numpy().mean(), top1.item(), top5.item()

    for _ in range(warmup):
        trainer_iteration()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    trainer_seconds = _seconds_per_step(trainer_iteration, steps, device)
    step_seconds = _seconds_per_step(step, steps, device)
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    return {"teacher": teacher, "student": student, "method": method if teacher else "vanilla",
            "batch_size": batch_size, "dtype": "float32",
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "torch": torch.__version__, "threads": torch.get_num_threads(),
            "trainer_images_per_sec": batch_size / trainer_seconds, "step_images_per_sec": batch_size / step_seconds,
            "peak_device_mib": peak}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    original_code.add_code_argument(parser)
    parser.add_argument("--pairs", default="resnet32x4:resnet8x4,resnet56:resnet20,wrn_40_2:ShuffleV1",
                        type=lambda text: [(*pair.split(":"),) if ":" in pair else (None, pair) for pair in text.split(",")],
                        help="comma-separated teacher:student pairs (CAT-KD), or students alone (vanilla training)")
    parser.add_argument("--method", default=["cat_kd"], type=lambda text: text.split(","),
                        help="the distillation method of the teacher:student pairs, or several, comma-separated: "
                             + ",".join(sorted(set(original_code.DISTILLERS) - {"vanilla"})))
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20, help="timed steps of each kind")
    parser.add_argument("--warmup", type=int, default=3, help="untimed trainer iterations first")
    parser.add_argument("--json", action="store_true", help="print one JSON list")
    args = parser.parse_args(argv)
    unknown = set(args.method) - (set(original_code.DISTILLERS) - {"vanilla"})
    if unknown:
        parser.error(f"--method: {', '.join(sorted(unknown))} is not a distillation method of the original")
    original_code.use_code(parser, args.code, "distillers/CAT_KD.py")
    return args


def main() -> None:
    args = parse_args()
    results = [measure(teacher, student, args.batch_size, args.steps, args.warmup, method)
               for method in args.method for teacher, student in args.pairs]
    if args.json:
        print(json.dumps(results))
        return
    for result in results:
        print(f"{result['method']}, {result['teacher'] or 'no teacher'} -> {result['student']}, batch {result['batch_size']}, "
              f"{result['device']}: "
              f"{result['trainer_images_per_sec']:.1f} images/s as its trainer runs, "
              f"{result['step_images_per_sec']:.1f} without the per-step bookkeeping")


if __name__ == "__main__":
    main()
