"""Reference vectors of the original code's feature-distillation baselines: the reference that
`tests/test_feature_losses.py` compares `catkd_jax.feature_losses` with.

    python benchmarks/reference_methods.py --code DIR --out tests/data/feature_loss_references.npz

DIR holds the original code's `mdistiller` package (github.com/GzyAftermath/CAT-KD), e.g.
`git -C CAT-KD archive HEAD mdistiller | tar -x -C DIR`; its loss functions are imported from
`mdistiller.distillers`, not copied. For each loss, a few cases of random float32 inputs, run
in float32 on the CPU: the loss and its gradient with respect to the student inputs (for VID,
the regressor's output or the pooled student). Keys are `family/case/...`:
- `student/I`, `teacher/I`: the I-th input, NHWC (`[N, H, W, C]`) or `[N, C]`;
- `grad/I`: d loss / d `student/I`, same layout; `loss`: the scalar;
- family settings (`p`, `k`, `squared`, `eps`, `log_scale`, ...) as arrays.
One function per case family (`*_cases`), each returning its part of that dictionary.
"""

from __future__ import annotations

import argparse
import importlib
import pathlib
import types
from typing import Callable, Sequence

import numpy as np
import torch

import original_code  # the sibling module: python puts this directory first on the path

Cases = dict[str, np.ndarray]


def _distiller_module(name: str) -> types.ModuleType:
    # `mdistiller.distillers` re-exports each class under its module's name, hiding the module.
    return importlib.import_module(f"mdistiller.distillers.{name}")


def _features(rng: np.random.Generator, shape: Sequence[int], relu: bool = True) -> np.ndarray:
    """Random float32 features, NCHW or `[N, C]`; `relu`: non-negative like stage outputs."""
    values = rng.normal(size=shape).astype(np.float32)
    return np.maximum(values, 0) if relu else values


def _nhwc(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x.transpose(0, 2, 3, 1)) if x.ndim == 4 else x


def _record(
    prefix: str,
    loss_fn: Callable[[list[torch.Tensor], list[torch.Tensor]], torch.Tensor],
    student: list[np.ndarray],
    teacher: list[np.ndarray],
) -> Cases:
    """Runs `loss_fn` on NCHW tensors; returns inputs, loss and student gradients in NHWC."""
    student_tensors = [torch.from_numpy(x).requires_grad_() for x in student]
    loss = loss_fn(student_tensors, [torch.from_numpy(x) for x in teacher])
    gradients = torch.autograd.grad(loss.sum(), student_tensors)
    cases: Cases = {f"{prefix}/loss": np.float32(loss.detach().sum().item())}
    for i, (s, g) in enumerate(zip(student, gradients)):
        cases[f"{prefix}/student/{i}"] = _nhwc(s)
        cases[f"{prefix}/grad/{i}"] = _nhwc(g.numpy())
    for i, t in enumerate(teacher):
        cases[f"{prefix}/teacher/{i}"] = _nhwc(t)
    return cases


def fitnet_cases(rng: np.random.Generator) -> Cases:
    """MSE between a (regressed) student hint and the teacher's; any sign."""
    def mse(s: list[torch.Tensor], t: list[torch.Tensor]) -> torch.Tensor:  # FitNet's, on the ConvReg output
        return torch.nn.functional.mse_loss(s[0], t[0])

    return _record("fitnet/hint", mse, [_features(rng, (4, 16, 4, 4), relu=False)], [_features(rng, (4, 16, 4, 4))])


# Stage pairs with the student larger (uneven 6 -> 4 bins) then the teacher larger.
_STAGE_PAIRS = [((4, 8, 6, 6), (4, 16, 4, 4)), ((4, 16, 4, 4), (4, 8, 8, 8))]


def _stage_inputs(rng: np.random.Generator) -> tuple[list[np.ndarray], list[np.ndarray]]:
    return [_features(rng, s) for s, _ in _STAGE_PAIRS], [_features(rng, t) for _, t in _STAGE_PAIRS]


def at_cases(rng: np.random.Generator) -> Cases:
    at_loss = _distiller_module("AT").at_loss
    cases: Cases = {}
    for p in (2, 1):
        student, teacher = _stage_inputs(rng)
        cases |= _record(f"at/p{p}", lambda s, t, p=p: at_loss(s, t, p), student, teacher)
        cases[f"at/p{p}/p"] = np.float32(p)
    return cases


def nst_cases(rng: np.random.Generator) -> Cases:
    student, teacher = _stage_inputs(rng)
    return _record("nst/stages", _distiller_module("NST").nst_loss, student, teacher)


def pkt_cases(rng: np.random.Generator) -> Cases:
    """Pooled features of different widths; and degenerate rows: a teacher row of NaN, which the
    original zeroes after normalising (the loss stays finite), and a student row of norm 1e-7,
    where adding eps 1e-7 to the norm (not clamping it) halves the row's normalised length."""
    pkt_loss = _distiller_module("PKT").pkt_loss

    def loss(s: list[torch.Tensor], t: list[torch.Tensor]) -> torch.Tensor:
        return pkt_loss(s[0], t[0])

    cases = _record("pkt/pooled", loss, [_features(rng, (8, 64))], [_features(rng, (8, 128))])
    teacher = _features(rng, (8, 128))
    teacher[3] = np.nan
    student = _features(rng, (8, 64))
    student[5] *= 1e-7 / np.linalg.norm(student[5])
    return cases | _record("pkt/degenerate_rows", loss, [student], [teacher])


def kdsvd_cases(rng: np.random.Generator) -> Cases:
    """`k1`: resnet8 vs resnet20 stage shapes (feats[1:]: widths 32, 16, 8), channels / 8,
    batch 2, non-negative like the stage outputs (the SVD's rows are C*H of the NCHW view, so
    with fewer channels the matrices stay tall). `k2`: two stages, signed values, k = 2, where
    the singular-value scaling and the sign alignment matter. Each also stores the teacher's
    `svd(f_t, k)` right singular vectors (`teacher_vectors/I`, `[N, W, k]`): their signs are
    LAPACK's choice, on which the loss depends."""
    module = _distiller_module("KDSVD")
    cases: Cases = {}
    for name, k, relu, shapes in (
        ("k1", 1, True, [(2, 2, 32, 32), (2, 4, 16, 16), (2, 8, 8, 8)]),
        ("k2", 2, False, [(2, 4, 16, 16), (2, 8, 16, 16)]),
    ):
        student = [_features(rng, s, relu) for s in shapes]
        teacher = [_features(rng, s, relu) for s in shapes]
        cases |= _record(f"kdsvd/{name}", lambda s, t, k=k: module.kdsvd_loss(s, t, k), student, teacher)
        cases[f"kdsvd/{name}/k"] = np.int32(k)
        for i, t in enumerate(teacher):
            cases[f"kdsvd/{name}/teacher_vectors/{i}"] = module.svd(torch.from_numpy(t), k)[2].numpy()
    return cases


def rkd_cases(rng: np.random.Generator) -> Cases:
    rkd_loss = _distiller_module("RKD").rkd_loss
    cases: Cases = {}
    for squared in (False, True):
        prefix = f"rkd/squared_{squared}"
        loss = lambda s, t, squared=squared: rkd_loss(s[0], t[0], squared, 1e-12, 25, 50)
        cases |= _record(prefix, loss, [_features(rng, (8, 64))], [_features(rng, (8, 128))])
        cases[f"{prefix}/squared"] = np.bool_(squared)
    return cases


def sp_cases(rng: np.random.Generator) -> Cases:
    """Last stages of different sizes (the Gram matrices are `[N, N]` either way)."""
    return _record(
        "sp/last_stage",
        _distiller_module("SP").sp_loss,
        [_features(rng, (8, 16, 4, 4))],
        [_features(rng, (8, 32, 2, 2))],
    )


def vid_cases(rng: np.random.Generator) -> Cases:
    """`vid_loss` with the log scales the original's VID initialises: with the teacher pooled
    and a stand-in regressor returning a given `pred_mean` (gradient w.r.t. it), at
    init_pred_var 0.1 and eps 0.01 (eps a tenth of the variance, so that it shows); and with the
    student pooled and the identity regressor (gradient w.r.t. the unpooled student), at the
    original's defaults 5 and 1e-5."""
    module = _distiller_module("VID")
    channels = 8

    def log_scale(init_pred_var: float, eps: float) -> torch.Tensor:
        holder = types.SimpleNamespace(init_pred_var=init_pred_var, eps=eps)
        module.VID.init_vid_modules(holder, [channels], [channels])
        return holder.log_scales[0]

    cases: Cases = {}
    for case, init_pred_var, eps, student_shape, teacher_shape, pooled in (
        ("teacher_pooled", 0.1, 0.01, (4, channels, 4, 4), (4, channels, 6, 6), False),
        ("student_pooled", 5.0, 1e-5, (4, channels, 6, 6), (4, channels, 4, 4), True),
    ):
        scale = log_scale(init_pred_var, eps)

        def loss(s: list[torch.Tensor], t: list[torch.Tensor], scale=scale, eps=eps, pooled=pooled) -> torch.Tensor:
            if pooled:  # the identity regressor: the loss sees the pooled student
                return module.vid_loss(lambda pooled_student: pooled_student, scale, s[0], t[0], eps)
            return module.vid_loss(lambda _: s[0], scale, torch.zeros(s[0].shape), t[0], eps)

        cases |= _record(f"vid/{case}", loss, [_features(rng, student_shape, relu=pooled)], [_features(rng, teacher_shape)])
        cases |= {
            f"vid/{case}/log_scale": scale.detach().numpy(),
            f"vid/{case}/eps": np.float32(eps),
            f"vid/{case}/init_pred_var": np.float32(init_pred_var),
        }
    return cases


CASE_FAMILIES = (fitnet_cases, at_cases, nst_cases, pkt_cases, kdsvd_cases, rkd_cases, sp_cases, vid_cases)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    original_code.add_code_argument(parser)
    parser.add_argument("--out", type=pathlib.Path, required=True, help="the .npz to write")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    original_code.use_code(parser, args.code, "distillers/KDSVD.py")
    torch.set_num_threads(1)
    rng = np.random.default_rng(args.seed)
    cases: Cases = {}
    for family in CASE_FAMILIES:
        cases |= family(rng)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out, **cases)
    print(f"wrote {len(cases)} arrays to {args.out}")


if __name__ == "__main__":
    main()
