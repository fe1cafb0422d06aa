"""The GEMM path of the GGUF kernels (``gguf_gemm.h``, ``path="gemm"``): every build this CPU
runs (the AVX2 one forced too; the portable build answers with its dot products) against a
float64 product of gguf's dequantization of random blocks of every type.

Shapes cover the GEMM's edges: x rows 1..40, 47 and 63 (each tile width: 8, 16, 24 and 32
rows a block on AVX-512, 4 / 8 / 16 on AVX2; blocks of 16 / 32 with zero-filled rows past
m; a last block of 15 or 31 rows), weight rows not a multiple of a panel (12 rows on
AVX-512, 6 on AVX2), K of one block, of several and past one 256-column chunk of a decoded
panel (288 = 256 + 32), strided x and y, and the weight panels split across threads.
"""

from __future__ import annotations

import pytest
import torch
from test_gguf_kernels import BUILDS, NAMES, needs_cc, random_blocks, reference

from thinkstream.kernels import gguf as kg


@pytest.fixture(scope="module", params=[b for b in BUILDS if "+" not in b])  # VNNI: int paths only
def kernels(request) -> kg.GGUFKernels:
    got = kg._load(request.param)
    assert got is not None and got.isa == request.param
    return got


def shapes(qtype: int) -> list[tuple[int, int]]:
    """(weight rows, K): one block, several blocks, past a 256-column chunk."""
    values = kg.BLOCKS[qtype][0]
    return [(15, values), (37, 2 * values), (29, 288 if values == 32 else 3 * values)]


def relative_error(got: torch.Tensor, x: torch.Tensor, w: torch.Tensor) -> float:
    """max |got - x w^T| / (|x| |w|^T), the product's float32 rounding scale."""
    want = x.double() @ w.double().t()
    scale = (x.abs().double() @ w.abs().double().t()).clamp_min(1e-30)
    return ((got.double() - want).abs() / scale).max().item()


@needs_cc
@pytest.mark.parametrize("qtype", sorted(kg.BLOCKS), ids=lambda q: NAMES[q])
def test_gemm_matches_the_reference_for_1_to_63_rows(kernels: kg.GGUFKernels, qtype: int) -> None:
    g = torch.Generator().manual_seed(qtype)
    for n, k in shapes(qtype):
        blocks = random_blocks(qtype, n, k, seed=qtype + k)
        w, bt = reference(qtype, blocks, k), torch.from_numpy(blocks)
        x = torch.randn(63, k, generator=g)
        for m in [*range(1, 41), 47, 63]:
            got = kernels.matmul(qtype, bt, k, x[:m], path="gemm")
            assert got.shape == (m, n)
            assert relative_error(got, x[:m], w) < 1e-5, (NAMES[qtype], n, k, m)


@needs_cc
@pytest.mark.parametrize("qtype", sorted(kg.BLOCKS), ids=lambda q: NAMES[q])
def test_gemm_rows_are_bit_identical_whichever_tile_they_fall_in(kernels: kg.GGUFKernels, qtype: int) -> None:
    """Batch invariance: a row's output from an m-row GEMM equals, bit for bit, the same row
    alone (one row: the narrowest tile), for m = 1..40, 47, 63 (every tile width, rows in
    a first or a last block), so a speculative verification on the GEMM computes each row
    as a one-row call would (the dot kernel's own invariance: test_gguf_kernels.py)."""
    k = 288 if kg.BLOCKS[qtype][0] == 32 else 512
    bt = torch.from_numpy(random_blocks(qtype, 29, k, seed=qtype))
    x = torch.randn(63, k, generator=torch.Generator().manual_seed(qtype))
    alone = torch.cat([kernels.matmul(qtype, bt, k, x[i:i + 1], path="gemm") for i in range(63)])
    for m in [*range(1, 41), 47, 63]:
        assert torch.equal(kernels.matmul(qtype, bt, k, x[:m], path="gemm"), alone[:m]), (NAMES[qtype], m)


@needs_cc
def test_auto_path_is_exact_on_both_sides_of_the_crossover(kernels: kg.GGUFKernels) -> None:
    """"auto" (what GGUFLinear, the head and the stack call) agrees with both forced paths
    within float32 rounding at every row count from 1 to 40."""
    blocks = torch.from_numpy(random_blocks(3, 45, 64, seed=5))
    w = reference(3, blocks.numpy(), 64)
    x = torch.randn(40, 64, generator=torch.Generator().manual_seed(5))
    for m in range(1, 41):
        auto = kernels.matmul(3, blocks, 64, x[:m])
        for path in ("dot", "gemm"):
            assert torch.allclose(auto, kernels.matmul(3, blocks, 64, x[:m], path=path), rtol=1e-5, atol=1e-5)
        assert relative_error(auto, x[:m], w) < 1e-5


@needs_cc
def test_gemm_reads_strided_rows_and_writes_strided_output_columns(kernels: kg.GGUFKernels) -> None:
    blocks = torch.from_numpy(random_blocks(8, 24, 64, seed=1))
    w = reference(8, blocks.numpy(), 64)
    xs = torch.randn(35, 100)[:, 10:74]  # 35 rows strided by 100
    out = torch.full((35, 40), 7.0)
    kernels.matmul(8, blocks, 64, xs, out=out[:, 8:32], path="gemm")
    assert relative_error(out[:, 8:32], xs, w) < 1e-5
    assert (out[:, :8] == 7).all() and (out[:, 32:] == 7).all()


@needs_cc
def test_gemm_threads_split_panels_without_changing_a_bit(kernels: kg.GGUFKernels) -> None:
    """Each output is one panel's accumulation, whichever thread runs it: 1, 2 and 3
    threads give identical results (51 weight rows: panels split unevenly)."""
    blocks = torch.from_numpy(random_blocks(12, 51, 512, seed=3))
    x = torch.randn(33, 512, generator=torch.Generator().manual_seed(3))
    one = kernels.matmul(12, blocks, 512, x, threads=1, path="gemm")
    for threads in (2, 3):
        assert torch.equal(kernels.matmul(12, blocks, 512, x, threads=threads, path="gemm"), one)


@needs_cc
def test_gemm_propagates_non_finite_inputs(kernels: kg.GGUFKernels) -> None:
    """An inf / nan in a row of x makes that row's outputs non-finite and leaves the other
    rows (and the zero-filled padding rows of its block) alone."""
    blocks = torch.from_numpy(random_blocks(2, 20, 64, seed=4))
    x = torch.randn(20, 64, generator=torch.Generator().manual_seed(4))
    x[3, 5] = float("nan")
    x[17, 0] = float("inf")
    got = kernels.matmul(2, blocks, 64, x, path="gemm")
    bad = ~torch.isfinite(got)
    assert bad[3].all() and bad[17].all()
    bad[3] = bad[17] = False
    assert not bad.any()


@needs_cc
def test_bad_path_raises(kernels: kg.GGUFKernels) -> None:
    blocks = torch.from_numpy(random_blocks(8, 4, 64, seed=2))
    with pytest.raises(ValueError, match="path must be one of"):
        kernels.matmul(8, blocks, 64, torch.randn(2, 64), path="blas")
