"""The fused few-query attention kernel (``kernels/attention.py``, ``fq_attention.c``):
every build this CPU runs against a float64 softmax reference over float32 and bfloat16
caches, paged slots, masks with hidden keys and whole hidden tiles, key counts that are not
a multiple of the 16-key tile; and the paths of ``few_query`` that take it."""

from __future__ import annotations

import shutil

import pytest
import torch

from thinkstream.attention.few_query import decode, short_chunk
from thinkstream.attention.metadata import AttentionConfig, Precision
from thinkstream.kernels import attention as ka
from thinkstream.kernels import native
from thinkstream.kernels.cpu import detect_cpu

HAS_CC = shutil.which("cc") is not None or shutil.which("gcc") is not None
BUILDS = [isa for isa in native.ISAS if native.choose_isa(detect_cpu(), isa)] if HAS_CC else []


def reference(q, kc, vc, slots, mask, scale) -> torch.Tensor:
    """q (B, Q, H, D), slots (B, L), mask (B, Q, L) -> (B, Q, H, D), in float64."""
    b, _, h, _ = q.shape
    g = h // kc.shape[1]
    out = []
    for i in range(b):
        k = kc[slots[i]].double().repeat_interleave(g, 1)  # (L, H, D)
        v = vc[slots[i]].double().repeat_interleave(g, 1)
        s = torch.einsum("qhd,lhd->hql", q[i].double(), k) * scale
        s = s.masked_fill(~mask[i][None], float("-inf"))
        out.append(torch.einsum("hql,lhd->qhd", s.softmax(-1), v))
    return torch.stack(out)


@pytest.fixture(scope="module", params=BUILDS)
def kernel(request) -> ka.FusedAttention:
    got = ka._load(request.param)
    assert got is not None and got.isa == request.param
    return got


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("b", "nq", "h", "kvh", "d", "length"),
                         [(3, 1, 9, 3, 64, 37), (1, 5, 4, 1, 256, 70), (2, 3, 4, 2, 16, 16),
                          (1, 7, 6, 2, 32, 50)])
def test_kernel_matches_reference(kernel, dtype, b, nq, h, kvh, d, length) -> None:
    g = torch.Generator().manual_seed(length)
    kc = torch.randn(200, kvh, d, generator=g).to(dtype)
    vc = torch.randn(200, kvh, d, generator=g).to(dtype)
    slots = torch.randint(0, 200, (b, length), generator=g)
    mask = torch.rand(b, nq, length, generator=g) > 0.3
    mask[..., :16] &= torch.rand(b, nq, 1, generator=g) > 0.5  # whole first tiles hidden ...
    mask[..., -1] = True  # ... but never a whole row
    q = torch.randn(b, nq, h, d, generator=g)
    got = kernel(q, kc, vc, slots, mask, 0.125)
    assert got.dtype == torch.float32
    assert (got.double() - reference(q, kc, vc, slots, mask, 0.125)).abs().max() < 2e-5


def test_few_query_paths_take_the_kernel_and_agree_with_torch() -> None:
    if ka.load_fq_attention() is None:
        pytest.skip("no fused kernel here")
    g = torch.Generator().manual_seed(3)
    kc, vc = torch.randn(64, 2, 16, generator=g), torch.randn(64, 2, 16, generator=g)
    q = torch.randn(3, 4, 16, generator=g)
    slots = torch.randint(0, 64, (3, 20), generator=g)
    mask = torch.ones(3, 1, 1, 20, dtype=torch.bool)
    mask[1, ..., 15:] = False  # a shorter sequence, padded
    fused = decode(q, kc, vc, slots, mask, 0.25, fused=True)
    plain = decode(q, kc, vc, slots, mask, 0.25)
    assert torch.allclose(fused, plain, atol=1e-5)
    chunk_slots, cmask = slots[0], torch.ones(5, 20, dtype=torch.bool).tril(15)  # causal tail
    qc = torch.randn(5, 4, 16, generator=g)
    fused = short_chunk(qc, kc, vc, chunk_slots, None, cmask, 16, 0.25, fused=True)
    plain = short_chunk(qc, kc, vc, chunk_slots, None, cmask, 16, 0.25, fused=False)
    assert torch.allclose(fused, plain, atol=1e-5)


def test_parity_mode_takes_short_chunks_only_with_the_fused_kernel() -> None:
    assert AttentionConfig(Precision.PARITY).short_limit == 0
    assert AttentionConfig(Precision.PARITY, fused=True).short_limit == 32
    assert AttentionConfig.for_engine("auto", torch.float32, fused=True).fused


def test_disabled_or_unrunnable_means_none(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("THINKSTREAM_NATIVE", "0")
    assert ka.load_fq_attention() is None
