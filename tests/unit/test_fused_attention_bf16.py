"""The fused attention kernel's bfloat16 dot products (``kernels/fq_bf16.h``: vdpbf16ps, the
avx512 build made with ``-mavx512bf16`` where the CPU has avx512_bf16) against a float64
reference on the same bfloat16-rounded queries, keys and values; the builds without them
(plain avx512, avx2) keep widening the caches to float32; float32 caches give the same bits
in both avx512 builds.

The dot-product path rounds the pre-scaled queries and the probabilities P to bfloat16
(round to nearest even). The queries' rounding is replayed in the reference; P's is not
(its running max is the kernel's), and it bounds the error: each weight p_j moves by at most
2^-8 of itself, so an output moves by at most 2^-8 x max |v| of the keys it sees. Measured
over these tests: at most 0.25 of the bound (3.9e-3 absolute with max |v| = 3.9; typically
0.5-3e-3); the float32 scores, softmax and sums add ~1e-6."""

from __future__ import annotations

import math
import shutil

import pytest
import torch
from helpers.attention_ref import reference_attention as reference
from helpers.attention_ref import run_parts

from thinkstream.kernels import attention as ka
from thinkstream.kernels.cpu import CpuInfo, detect_cpu

CPU = detect_cpu()
HAS_CC = shutil.which("cc") is not None or shutil.which("gcc") is not None
HAS_DOT = HAS_CC and CPU.avx512 and "avx512_bf16" in CPU.flags and "f16c" in CPU.flags
needs_dot = pytest.mark.skipif(not HAS_DOT, reason="needs a compiler and a CPU with avx512_bf16")
P_ROUNDING = 2.0 ** -8  # bfloat16's relative rounding error (8-bit significand, nearest even)
LOG2E = 1.4426950408889634


def rounded_queries(q: torch.Tensor, scale: float) -> torch.Tensor:
    """The queries the dot-product path multiplies: q x scale x log2(e) rounded to bfloat16
    (as float64, scaled back)."""
    c = scale * LOG2E
    return (q * c).to(torch.bfloat16).double() / c


@pytest.fixture(scope="module")
def dot() -> ka.FusedAttention:
    if not HAS_DOT:
        pytest.skip("needs a compiler and a CPU with avx512_bf16")
    got = ka._load("avx512", True)
    assert got is not None and got.isa == "avx512" and got.bf16_dot
    return got


def check(kernel, q, kc, vc, slots, mask, scale) -> float:
    """Runs the dot-product path; asserts the error bound; returns the largest error."""
    got = kernel(q, kc, vc, slots, mask, scale)
    want = reference(rounded_queries(q, scale), kc, vc, slots, mask, scale)
    err = (got.double() - want).abs().max().item()
    assert err <= P_ROUNDING * vc.float().abs().max().item() + 1e-5
    return err


def random_case(g, b, nq, h, kvh, d, length):
    kc = torch.randn(length + 40, kvh, d, generator=g).to(torch.bfloat16)
    vc = torch.randn(length + 40, kvh, d, generator=g).to(torch.bfloat16)
    slots = torch.stack([torch.randperm(length + 40, generator=g)[:length] for _ in range(b)])
    q = torch.randn(b, nq, h, d, generator=g) * 2  # peaked softmaxes: the max moves
    return q, kc, vc, slots


# query counts x key counts (around the 64-key block, an odd count: a last pair of keys with
# one key) with SmolLM2's GQA (9 heads over 3) and random masks, whole 16-key tiles hidden
@needs_dot
@pytest.mark.parametrize("nq", [1, 3, 17, 64, 200])
@pytest.mark.parametrize("length", [1, 63, 64, 65, 4100])
def test_dot_products_match_the_rounded_reference(dot, nq, length) -> None:
    b = 2 if nq * length <= 20_000 else 1
    nq = min(nq, 80_000 // length)  # (the reference's cost: 4,100 keys take up to 19 queries)
    g = torch.Generator().manual_seed(nq * 10_000 + length)
    q, kc, vc, slots = random_case(g, b, nq, 9, 3, 64, length)
    mask = torch.rand(b, nq, length, generator=g) > 0.3
    mask[..., :16] &= torch.rand(b, nq, 1, generator=g) > 0.5
    mask[..., -1] = True  # never a whole row hidden
    err = check(dot, q, kc, vc, slots, mask, 0.125)
    assert length == 1 or err > 0  # rounded: not the float32 path's result


def chunk_mask(nq: int, length: int, window: int | None = None) -> torch.Tensor:
    """(1, nq, length): a chunk's causal tail, with a sliding ``window`` if given."""
    pos = torch.arange(length - nq, length)[:, None]
    keys = torch.arange(length)[None]
    mask = keys <= pos
    if window is not None:
        mask &= keys > pos - window
    return mask[None]


# the question's 18 rows over a document, Gemma 3's head size 256 with its 512-key window
# (whole blocks hidden from some rows), a head size of 96 (64 + a 32-dim remainder), odd
# head counts without grouping, and a prompt (more rows than one pass over the keys takes)
@needs_dot
@pytest.mark.parametrize(("nq", "h", "kvh", "d", "length", "window"),
                         [(18, 9, 3, 64, 1000, None), (18, 4, 1, 256, 1000, 512),
                          (5, 3, 1, 96, 130, 40), (7, 5, 5, 32, 77, None),
                          (300, 9, 3, 64, 300, None)])
def test_dot_products_with_windows_and_head_sizes(dot, nq, h, kvh, d, length, window) -> None:
    g = torch.Generator().manual_seed(length + d)
    q, kc, vc, slots = random_case(g, 1, nq, h, kvh, d, length)
    check(dot, q, kc, vc, slots, chunk_mask(nq, length, window), d ** -0.5)


@needs_dot
def test_rows_that_see_no_key_give_zeros(dot) -> None:
    g = torch.Generator().manual_seed(1)
    q, kc, vc, slots = random_case(g, 1, 3, 2, 1, 32, 100)
    mask = torch.ones(1, 3, 100, dtype=torch.bool)
    mask[0, 1] = False
    got = dot(q, kc, vc, slots, mask, 0.25)
    assert torch.equal(got[0, 1], torch.zeros(2, 32))
    keep = torch.tensor([0, 2])
    check(dot, q[:, keep], kc, vc, slots, mask[:, keep], 0.25)


@needs_dot
@pytest.mark.parametrize("parts", [1, 2, 4, 7])
def test_parts_compute_what_one_call_does(dot, parts: int) -> None:
    """``fq_attention_part`` (the native stack's threads) over bfloat16 caches: decode rows
    of 2 sequences x 3 key/value heads, the shares filling one call's output bit for bit."""
    g = torch.Generator().manual_seed(parts)
    q, kc, vc, slots = random_case(g, 2, 1, 9, 3, 64, 90)
    mask = torch.rand(2, 1, 90, generator=g) > 0.1
    want = dot(q, kc, vc, slots, mask, 0.3)
    assert torch.equal(run_parts(dot, q, kc, vc, slots, mask, 0.3, parts), want)


@needs_dot
def test_threads_give_one_threads_bits(dot) -> None:
    """fq_attention's OpenMP threads (runs of (sequence, key/value head) pairs) over
    bfloat16 caches: the same output as one thread, bit for bit."""
    g = torch.Generator().manual_seed(11)
    q, kc, vc, slots = random_case(g, 3, 4, 6, 2, 32, 150)
    mask = torch.rand(3, 4, 150, generator=g) > 0.2
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = dot(q, kc, vc, slots, mask, 0.2)
        torch.set_num_threads(2)
        two = dot(q, kc, vc, slots, mask, 0.2)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(one, two)
    check(dot, q, kc, vc, slots, mask, 0.2)


@needs_dot
@pytest.mark.parametrize("isa", ["avx512", "avx2"])
def test_builds_without_dot_products_widen(dot, isa) -> None:
    """The plain avx512 and the avx2 builds widen bfloat16 caches: float32 arithmetic, within
    float32 rounding of the reference on the caches' values; the dot-product build's result
    lies within P's bound of the same reference. Head sizes that are no multiple of 32 take
    the widening path in the dot-product build too."""
    wide = ka._load(isa)
    assert wide is not None and not wide.bf16_dot
    g = torch.Generator().manual_seed(7)
    q, kc, vc, slots = random_case(g, 1, 18, 9, 3, 64, 300)
    mask = chunk_mask(18, 300)
    want = reference(q, kc, vc, slots, mask, 0.125)
    assert (wide(q, kc, vc, slots, mask, 0.125).double() - want).abs().max() < 1e-5
    assert (dot(q, kc, vc, slots, mask, 0.125).double() - want).abs().max() < P_ROUNDING * 5
    q, kc, vc, slots = random_case(g, 1, 4, 4, 2, 48, 100)  # d = 48: widened
    mask = chunk_mask(4, 100)
    want = reference(q, kc, vc, slots, mask, 0.2)
    assert (dot(q, kc, vc, slots, mask, 0.2).double() - want).abs().max() < 1e-5


@needs_dot
def test_float32_caches_give_the_same_bits_in_both_avx512_builds(dot) -> None:
    g = torch.Generator().manual_seed(3)
    q, kc, vc, slots = random_case(g, 2, 18, 9, 3, 64, 500)
    kc, vc = kc.float() + 0.01 * torch.randn(kc.shape, generator=g), vc.float()
    mask = torch.rand(2, 18, 500, generator=g) > 0.2
    plain = ka._load("avx512")
    assert torch.equal(dot(q, kc, vc, slots, mask, 0.125), plain(q, kc, vc, slots, mask, 0.125))


def test_the_dot_product_build_is_chosen_only_with_avx512_bf16(monkeypatch) -> None:
    zen4 = CpuInfo("x", "x86_64", frozenset({"avx2", "fma", "f16c", "avx512f", "avx512bw",
                                             "avx512vl", "avx512_bf16"}))
    assert ka.wants_bf16_dot("avx512", zen4)
    assert not ka.wants_bf16_dot("avx2", zen4)  # THINKSTREAM_ISA=avx2 on the same CPU
    assert not ka.wants_bf16_dot("avx512", CpuInfo("x", "x86_64", zen4.flags - {"avx512_bf16"}))
    if HAS_DOT:
        monkeypatch.delenv("THINKSTREAM_ISA", raising=False)
        monkeypatch.delenv("THINKSTREAM_NATIVE", raising=False)
        assert ka.load_fq_attention().bf16_dot
        monkeypatch.setenv("THINKSTREAM_ISA", "avx2")
        assert not ka.load_fq_attention().bf16_dot


def test_the_error_bound_is_what_bfloat16_rounding_gives() -> None:
    """P_ROUNDING: the largest relative error of rounding float32 to bfloat16."""
    x = 1.0 + torch.arange(2 ** 16, dtype=torch.float32) * 2.0 ** -16  # [1, 2), exact
    rel = ((x.to(torch.bfloat16).double() - x.double()) / x.double()).abs().max().item()
    assert rel <= P_ROUNDING and rel > P_ROUNDING * 0.99
    assert math.isclose(P_ROUNDING, 1 / 256)
