"""Reference vectors of the original distillers' `forward_train`, for the methods' parity tests.

    python benchmarks/reference_distillers.py --code DIR [--out tests/data/distiller_references.npz]
        [--methods METHOD ...]

DIR holds the original CAT-KD code's `mdistiller` package (github.com/GzyAftermath/CAT-KD, e.g.
`git -C CAT-KD archive HEAD mdistiller | tar -x -C DIR`); it is imported from there, not copied.
For each method and pair of `PAIRS`, the script builds the original distiller as its
`tools/train.py` does (plain networks, the toolbox's default `CFG`, with ReviewKD's lists
fitted to the pair: `testing.reference_method_settings`), fills the teacher, the
student and the distiller's own modules with `catkd_jax.testing.random_torch_state_dict`, and
runs `forward_train` in training mode (the teacher as the distiller's `train()` leaves it: in
eval mode, OFD's in training mode) on `testing.reference_batch`, then the summed losses' backward, on the CPU in float32. Stored:
- the state-dict rows of the three (the test fills the same weights), and the distiller's
  `get_extra_parameters()`;
- each loss term;
- each gradient, of the student's and of the method's parameters, as `testing.norm_and_projection`'s
  (norm, projection) per tensor, named by its PyTorch key;
- for the methods of `WHOLE_STEP` (those with their own parameters), one step of the original
  trainer (`BaseTrainer.train_iter`, `CRDTrainer`'s for CRD; SGD, lr 0.05, momentum 0.9, weight
  decay 5e-4, over `get_learnable_parameters`), on a copy of the distiller:
  the summaries of every parameter's change and of every BatchNorm's running statistics after it;
- per loss term and summarised tensor, its distance from the same step at float64
  (`<group>_rounding`): the float32 reference's own rounding error.
The original's `mdistiller.engine.cfg` needs `yacs` (`pip install yacs`).
"""

from __future__ import annotations

import argparse
import copy
import json
import pathlib
import unittest.mock

import numpy as np
import torch

import original_code  # the sibling module: python puts this directory first on the path
from catkd_jax import testing

# Pair name -> (teacher, student): one pair within the ResNet family, one across families.
PAIRS = {"resnet20_resnet8": ("resnet20", "resnet8"), "vgg8_resnet8": ("vgg8", "resnet8"),
         "wrn_16_2_resnet8": ("wrn_16_2", "resnet8")}
# The feature methods, checked here (`original_code.DISTILLERS` names their distillers).
METHODS = ("fitnet", "at", "nst", "pkt", "kdsvd", "rkd", "sp", "vid", "ofd", "reviewkd", "crd")
WHOLE_STEP = ("fitnet", "vid", "ofd", "reviewkd", "crd")
# KDSVD decomposes stage pairs of equal widths only (the original's align_rsv fails on VGG's
# smaller maps): its cross-family pair is a WideResNet teacher's. So is VID's: on VGG's 4x4 last
# map, each gradient entry of its last regressor sums only 128 positions, and a ReLU input within
# float32 rounding of 0 (there are two) makes any two float32 implementations differ by 1e-3.
# OFD's too: the original indexes its margins from the teacher's first stage and its features from
# the last, which for VGG's four stages against ResNet's three pairs channels of different counts.
CROSS_FAMILY_PAIR = {"kdsvd": "wrn_16_2_resnet8", "vid": "wrn_16_2_resnet8", "ofd": "wrn_16_2_resnet8"}


# ReviewKD's parity is checked across families only: there its ABFs resize maps up by 2 and 4 and
# down by 2 (on the ResNet pair only up by 2 and 8, or not at all), and that pair alone fails on
# each bug planted so far; the ResNet pair would add 5 s to the suite.
# CRD reads the pooled features alone; OFD's WideResNet pair alone fails on each bug planted in it.
ACROSS_FAMILIES_ONLY = ("reviewkd", "crd", "ofd")


# State-dict entries that are constants, not weights: kept at the distiller's values, not filled.
ORIGINAL_CONSTANTS = ("contrast.params",)
# The non-trainable state compared after a whole step: BatchNorm statistics, CRD's banks and constants.
STATE_AFTER_STEP = ("running_mean", "running_var", "memory_v1", "memory_v2", "contrast.params")


def method_pairs(method: str) -> tuple[str, ...]:
    """The pairs a method's parity is checked on: within a family, across families."""
    across = CROSS_FAMILY_PAIR.get(method, "vgg8_resnet8")
    return (across,) if method in ACROSS_FAMILIES_ONLY else ("resnet20_resnet8", across)
NUM_CLASSES = 100
LR, MOMENTUM, WEIGHT_DECAY = 0.05, 0.9, 5e-4


def _module_state(distiller: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The distiller's own modules' entries of its state dict (no `student.` / `teacher.` keys)."""
    return {key: value for key, value in distiller.state_dict().items()
            if not key.startswith(("student.", "teacher."))}


def _load(module: torch.nn.Module, rows: list, seed: int) -> None:
    state = {name: torch.from_numpy(value) for name, value in testing.random_torch_state_dict(rows, seed).items()}
    missing, unexpected = module.load_state_dict(state, strict=False)
    names = {name for name, _, _ in rows}
    assert not unexpected and not names & set(missing), (missing, unexpected)


def _summaries(arrays: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    names = list(arrays)
    return np.asarray(names), np.stack([testing.norm_and_projection(arrays[name], index) for index, name in enumerate(names)])


def _store(result: dict, raw: dict, name: str, arrays: dict[str, np.ndarray]) -> None:
    """`arrays`' names and summaries in `result` under `name`; the arrays themselves in `raw`."""
    result[f"{name}_names"], result[name] = _summaries(arrays)
    raw[name] = arrays


def _run(method: str, teacher_arch: str, student_arch: str, dtype: torch.dtype) -> tuple[dict, dict]:
    """The original's step for `method` on the pair, at `dtype`: the stored arrays (see the module
    doc), and the summarised arrays themselves by group."""
    from mdistiller.distillers import distiller_dict  # pylint: disable=import-outside-toplevel
    from mdistiller.models import cifar_model_dict  # pylint: disable=import-outside-toplevel

    torch.manual_seed(0)
    teacher = cifar_model_dict[teacher_arch][0](num_classes=NUM_CLASSES)
    student = cifar_model_dict[student_arch][0](num_classes=NUM_CLASSES)
    rows = {"teacher": testing.state_dict_rows(teacher.state_dict()),
            "student": testing.state_dict_rows(student.state_dict())}
    # Loaded before the distiller is built, as a trained teacher is (OFD's constructor computes
    # its margins from the teacher's weights), and again after: FitNet's and VID's constructors
    # run both networks once in training mode (`get_feat_shapes`), which moves their statistics.
    _load(teacher, rows["teacher"], testing.TEACHER_SEED)
    cfg = original_code.original_cfg(testing.reference_method_settings(method, teacher_arch, student_arch))
    # CRD's constructor takes the bank's size (the training set's); its AliasMethod moves itself to
    # a GPU, which this CPU run has not (the trainer never draws from it: the loader gives the rows).
    extra = (testing.CRD_NUM_DATA,) if method == "crd" else ()
    with unittest.mock.patch("mdistiller.distillers.CRD.AliasMethod.cuda", lambda self: self):
        distiller = distiller_dict[original_code.DISTILLERS[method]](student, teacher, cfg, *extra)
    _load(teacher, rows["teacher"], testing.TEACHER_SEED)
    _load(student, rows["student"], testing.STUDENT_SEED)
    module_state = _module_state(distiller)
    # Constants of the original's state that a random fill would break (CRD's K, T, Z and momentum)
    # keep the distiller's values; the test reads them from the references.
    constants = {name: value.clone() for name, value in module_state.items() if name in ORIGINAL_CONSTANTS}
    rows["method"] = testing.state_dict_rows({name: value for name, value in module_state.items()
                                              if name not in constants})
    _load(distiller, rows["method"], testing.METHOD_SEED)
    distiller.to(dtype).train()

    images, labels = testing.reference_batch()
    image = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2))).to(dtype)
    target = torch.from_numpy(labels.astype(np.int64))
    # The whole step runs on a copy, in the original's trainer; the terms and gradients on this one.
    stepped = copy.deepcopy(distiller) if method in WHOLE_STEP else None
    inputs = {}
    if method == "crd":  # what the CRDTrainer passes from its "sample" loader
        index, contrast_index = testing.reference_contrast_indices(len(labels))
        inputs = {"index": torch.from_numpy(index.astype(np.int64)),
                  "contrastive_index": torch.from_numpy(contrast_index.astype(np.int64))}
    _, losses = distiller(image=image, target=target, epoch=1, **inputs)
    loss = sum(value.mean() for value in losses.values())
    loss.backward()

    result = {"rows": np.asarray(json.dumps(rows)), "networks": np.asarray([teacher_arch, student_arch]),
              "constants": np.asarray(json.dumps({name: value.tolist() for name, value in constants.items()})),
              "term_names": np.asarray(list(losses)),
              "extra_parameters": np.asarray(distiller.get_extra_parameters()),
              "terms": np.asarray([float(value.detach().mean()) for value in losses.values()], np.float64)}
    learnable = {id(parameter) for parameter in distiller.get_learnable_parameters()}
    parameters = {name: parameter for name, parameter in distiller.named_parameters() if id(parameter) in learnable}
    student_grads = {name.removeprefix("student."): parameter.grad.numpy().copy()
                     for name, parameter in parameters.items() if name.startswith("student.")}
    method_grads = {name: parameter.grad.numpy().copy()
                    for name, parameter in parameters.items() if not name.startswith("student.")}
    raw = {"terms": {"terms": result["terms"]}}
    _store(result, raw, "student_grads", student_grads)
    if method_grads:
        _store(result, raw, "method_grads", method_grads)
    if method in WHOLE_STEP:
        before = {name: value.detach().clone() for name, value in stepped.named_parameters()}
        _trainer_step(stepped, method, (image, target, *inputs.values()))
        changes = {name: (parameter.detach() - before[name]).numpy()
                   for name, parameter in stepped.named_parameters() if name in parameters}
        statistics = {name: value.numpy().copy() for name, value in stepped.state_dict().items()
                      if name.endswith(STATE_AFTER_STEP) and not name.startswith("teacher.")}
        _store(result, raw, "step_changes", changes)
        _store(result, raw, "step_statistics", statistics)
    return result, raw


def _trainer_step(distiller: torch.nn.Module, method: str, data: tuple) -> None:
    """One `train_iter` of the original's trainer for `method` (`CRDTrainer` for CRD, else
    `BaseTrainer`) on `data`, its loader's tuple (CRD's carries the contrastive rows), with its
    SGD over `get_learnable_parameters()`. The trainer moves the batch to the GPU and casts the
    images to float32: here both stay (the CPU; the step's dtype, float64 for the rounding
    reference). `BaseTrainer`'s loader tuple also holds the examples' indices, which it ignores."""
    from mdistiller.engine.trainer import BaseTrainer, CRDTrainer  # pylint: disable=import-outside-toplevel
    from mdistiller.engine.utils import AverageMeter  # pylint: disable=import-outside-toplevel

    trainer = object.__new__(CRDTrainer if method == "crd" else BaseTrainer)  # without its logs and loaders
    trainer.distiller = distiller
    trainer.optimizer = torch.optim.SGD(distiller.get_learnable_parameters(), lr=LR, momentum=MOMENTUM,
                                        weight_decay=WEIGHT_DECAY)
    if method != "crd":
        data = (*data, torch.zeros(len(data[1]), dtype=torch.int64))
    meters = {name: AverageMeter() for name in ("data_time", "training_time", "losses", "top1", "top5")}
    to_float = torch.Tensor.float
    keep_floats = lambda tensor, *args, **kwargs: tensor if tensor.is_floating_point() else to_float(tensor)
    with unittest.mock.patch.object(torch.Tensor, "cuda", lambda tensor, *args, **kwargs: tensor), \
            unittest.mock.patch.object(torch.Tensor, "float", keep_floats):
        trainer.train_iter(data, 1, meters)


def reference(method: str, teacher_arch: str, student_arch: str) -> dict[str, np.ndarray]:
    """The float32 step's arrays, and `<group>_rounding` of each group: per loss term or tensor,
    the l2 distance of the float32 step's value from the same step's at float64, the original's
    own rounding error (the tests' tolerance where a method is too ill-conditioned for 1e-4 at
    float32, e.g. PKT's KL of near-equal distributions)."""
    result, raw = _run(method, teacher_arch, student_arch, torch.float32)
    _, exact = _run(method, teacher_arch, student_arch, torch.float64)
    for group, arrays in raw.items():
        if group == "terms":
            result["terms_rounding"] = np.abs(arrays["terms"] - exact["terms"]["terms"])
        else:
            result[f"{group}_rounding"] = np.asarray([np.linalg.norm(np.asarray(arrays[name], np.float64) - exact[group][name])
                                                      for name in result[f"{group}_names"]])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    original_code.add_code_argument(parser)
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("tests/data/distiller_references.npz"))
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=METHODS,
                        help="record only these methods; the others' entries in --out are kept")
    args = parser.parse_args()
    original_code.use_code(parser, args.code, "distillers/FitNet.py")
    torch.set_num_threads(1)  # deterministic sums
    arrays = {}
    if set(args.methods) != set(METHODS) and args.out.exists():
        with np.load(args.out) as kept:
            arrays = {name: kept[name] for name in kept.files if name.split("/")[1] not in args.methods}
    for method in args.methods:
        for pair in method_pairs(method):
            teacher, student = PAIRS[pair]
            for name, value in reference(method, teacher, student).items():
                arrays[f"{pair}/{method}/{name}"] = value
            print(f"{pair} {method}: {dict(zip(arrays[f'{pair}/{method}/term_names'], arrays[f'{pair}/{method}/terms']))}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out, **arrays)
    print(f"wrote {args.out} ({args.out.stat().st_size // 1024} KiB)")


if __name__ == "__main__":
    main()
