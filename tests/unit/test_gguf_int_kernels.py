"""The integer-activation paths of the GGUF kernels (``gguf_simd.h``): x rounded per
32-value block to int16 (``act=ACT_I16``, ``quantization="gguf-q16"``: one or two rows) or
int8 (``act=ACT_I8``, ``"gguf-q8"``), against a float64 reference on random blocks of every
type.

The bound is the rounding's own: each x value moves by at most half its block's step
(max|x_block| / 32767 or / 127), so |error| <= sum_c |W[n, c]| * step(c) / 2, plus
float32 rounding of the sums. Shapes: one block per row, weight rows not a multiple of 16,
1..8 x rows, strided x and y; extremes: zero blocks, one huge outlier, tiny values, inf.
"""

from __future__ import annotations

import pytest
import torch
from test_gguf_kernels import BUILDS, NAMES, needs_cc, random_blocks, reference

from thinkstream.kernels import gguf as kg

QMAX = {kg.ACT_I16: 32767.0, kg.ACT_I8: 127.0}


@pytest.fixture(scope="module", params=BUILDS)
def kernels(request) -> kg.GGUFKernels:
    isa, _, vnni = request.param.partition("+")
    got = kg._load(isa, bool(vnni))
    assert got is not None
    return got


def rounding_bound(x: torch.Tensor, w: torch.Tensor, act: int) -> torch.Tensor:
    """(M, N) float64: the largest error rounding x per 32-value block can cause, plus
    float32 summation rounding."""
    m, k = x.shape
    step = x.double().abs().reshape(m, k // 32, 32).amax(-1) / QMAX[act]  # (M, K / 32)
    half_step = (step / 2).repeat_interleave(32, dim=1)  # (M, K)
    exact = (x.abs().double() @ w.abs().double().t())
    return half_step @ w.abs().double().t() * 1.001 + 1e-6 * exact + 1e-30


def int16_rows(kernels: kg.GGUFKernels, qtype: int) -> int:
    """Up to how many rows ``ACT_I16`` rounds to int16 (float32 above; act_mode)."""
    return 0 if kernels.isa == "portable" else 2 if qtype in (2, 3, 6, 7) else 1


def check(kernels: kg.GGUFKernels, qtype: int, blocks: torch.Tensor, w: torch.Tensor,
          x: torch.Tensor, act: int) -> None:
    got = kernels.matmul(qtype, blocks, w.shape[1], x, act=act).double()
    want = x.double() @ w.double().t()
    if kernels.isa == "portable" or (act == kg.ACT_I16 and x.shape[0] > int16_rows(kernels, qtype)):
        bound = 1e-5 * (x.abs().double() @ w.abs().double().t()) + 1e-30
    else:
        bound = rounding_bound(x, w, act)
    assert ((got - want).abs() <= bound).all(), (NAMES[qtype], act, tuple(x.shape))


@needs_cc
@pytest.mark.parametrize("qtype", sorted(kg.BLOCKS), ids=lambda q: NAMES[q])
def test_int_activations_within_their_rounding(kernels: kg.GGUFKernels, qtype: int) -> None:
    values = kg.BLOCKS[qtype][0]
    g = torch.Generator().manual_seed(qtype)
    for n, k in ((37, values), (21, 3 * values)):  # one block per row; rows not a multiple of 16
        blocks = torch.from_numpy(random_blocks(qtype, n, k, seed=qtype + k))
        w = reference(qtype, blocks.numpy(), k)
        for m in range(1, 9):
            x = torch.randn(m, k, generator=g) * torch.rand(m, k // 32, 1, generator=g).repeat(1, 1, 32).reshape(m, k)
            for act in (kg.ACT_I16, kg.ACT_I8):
                check(kernels, qtype, blocks, w, x, act)


@needs_cc
@pytest.mark.parametrize("qtype", [3, 8, 14], ids=lambda q: NAMES[q])
def test_extreme_blocks(kernels: kg.GGUFKernels, qtype: int) -> None:
    """A block of zeros, a block with one outlier 1e4 x its neighbours, tiny values (1e-20),
    huge ones (1e30): every block keeps its own step, nothing overflows or turns nan."""
    values = kg.BLOCKS[qtype][0]
    k = max(values, 128)
    blocks = torch.from_numpy(random_blocks(qtype, 19, k, seed=7))
    w = reference(qtype, blocks.numpy(), k)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(4, k, generator=g)
    x[0, :32] = 0.0
    x[1, 40] = 1e4
    x[2] *= 1e-20
    x[3, 64:96] *= 1e30
    for act in (kg.ACT_I16, kg.ACT_I8):
        check(kernels, qtype, blocks, w, x, act)
    assert (kernels.matmul(qtype, blocks, k, torch.zeros(2, k), act=kg.ACT_I16) == 0).all()


@needs_cc
def test_non_finite_x_gives_nan_as_float32_does(kernels: kg.GGUFKernels) -> None:
    blocks = torch.from_numpy(random_blocks(3, 5, 64, seed=4))
    for bad in (float("inf"), float("nan")):
        x = torch.ones(2, 64)
        x[1, 33] = bad
        for act in (kg.ACT_I16, kg.ACT_I8):
            y = kernels.matmul(3, blocks, 64, x, act=act)
            assert y[0].isfinite().all() and not y[1].isfinite().any(), (bad, act)


@needs_cc
def test_strided_rows_and_columns(kernels: kg.GGUFKernels) -> None:
    blocks = torch.from_numpy(random_blocks(2, 24, 64, seed=1))
    w = reference(2, blocks.numpy(), 64)
    xs = torch.randn(3, 100)[:, 10:74]  # rows strided by 100
    for act in (kg.ACT_I16, kg.ACT_I8):
        out = torch.full((3, 40), 7.0)
        kernels.matmul(2, blocks, 64, xs, out=out[:, 8:32], act=act)
        assert ((out[:, 8:32].double() - xs.double() @ w.double().t()).abs()
                <= rounding_bound(xs, w, act)).all()
        assert (out[:, :8] == 7).all() and (out[:, 32:] == 7).all()


@needs_cc
@pytest.mark.parametrize("qtype", [3, 8], ids=lambda q: NAMES[q])
def test_int16_for_few_rows_float32_above_and_by_default(kernels: kg.GGUFKernels, qtype: int) -> None:
    """``ACT_I16``: int16 for one row (two for the 4/5-bit 32-value types, where that is
    faster), float32 above; no ``act``: float32; the portable build: float32 always."""
    blocks = torch.from_numpy(random_blocks(qtype, 33, 96, seed=5))
    x = torch.randn(4, 96, generator=torch.Generator().manual_seed(5))
    for m in range(1, 5):
        f32 = kernels.matmul(qtype, blocks, 96, x[:m], act=kg.ACT_F32)
        assert torch.equal(kernels.matmul(qtype, blocks, 96, x[:m]), f32)
        i16 = kernels.matmul(qtype, blocks, 96, x[:m], act=kg.ACT_I16)
        assert torch.equal(i16, f32) == (m > int16_rows(kernels, qtype)), m  # they differ


@needs_cc
def test_threads_split_rows_without_changing_results(kernels: kg.GGUFKernels) -> None:
    blocks = torch.from_numpy(random_blocks(3, 100, 64, seed=6))
    x = torch.randn(2, 64)
    for act in kg.ACTS:
        one = kernels.matmul(3, blocks, 64, x, act=act, threads=1)
        assert torch.equal(one, kernels.matmul(3, blocks, 64, x, act=act, threads=3))
