"""The fused few-query attention kernel (``kernels/attention.py``, ``fq_attention.c``):
every build this CPU runs (AVX-512, AVX2, portable) against a float64 softmax reference over
float32 and bfloat16 caches, paged slots, masks with hidden keys and whole hidden blocks, key
counts that are not a multiple of the 64-key block, many query rows per key/value head, the
threads' split; and the paths of ``few_query`` that take it."""

from __future__ import annotations

import shutil

import pytest
import torch
from helpers.attention_ref import reference_attention as reference
from helpers.attention_ref import run_parts

from thinkstream.attention.few_query import decode, short_chunk
from thinkstream.attention.metadata import AttentionConfig, Precision
from thinkstream.kernels import attention as ka
from thinkstream.kernels import native
from thinkstream.kernels.cpu import detect_cpu

HAS_CC = shutil.which("cc") is not None or shutil.which("gcc") is not None
BUILDS = [isa for isa in native.ISAS if native.choose_isa(detect_cpu(), isa)] if HAS_CC else []


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


def chunk_mask(nq: int, length: int, window: int | None = None) -> torch.Tensor:
    """(1, nq, length): the last ``nq`` keys are the chunk itself (causal), each query sees
    the keys at or before its position, the last ``window`` of them with a sliding window."""
    pos = torch.arange(length - nq, length)[:, None]  # (nq, 1) the queries' positions
    keys = torch.arange(length)[None]
    mask = keys <= pos
    if window is not None:
        mask &= keys > pos - window
    return mask[None]


# Many rows (the G heads x nq queries of one key/value head: 54 for SmolLM2's 18-token
# question, 72 for Gemma 3's 4 heads) over key counts that are not a multiple of the 64-key
# block, with the chunk's causal tail, a sliding window (whole blocks hidden from some rows
# and not others) and paged (scattered) slots. The last two are prompts: 900 and 800 rows
# per key/value head, more than one pass over the keys takes (``rows_per_pass``).
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("nq", "h", "kvh", "d", "length", "window"),
                         [(18, 9, 3, 64, 1000, None), (18, 9, 3, 64, 4100, None),
                          (18, 9, 3, 64, 1000, 300), (18, 4, 1, 256, 1000, 512),
                          (5, 9, 3, 64, 130, 40), (300, 9, 3, 64, 300, None),
                          (200, 4, 1, 256, 520, 128)])
def test_many_rows_over_long_contexts(kernel, dtype, nq, h, kvh, d, length, window) -> None:
    g = torch.Generator().manual_seed(length + nq)
    kc = torch.randn(length + 200, kvh, d, generator=g).to(dtype)
    vc = torch.randn(length + 200, kvh, d, generator=g).to(dtype)
    slots = torch.randperm(length + 200, generator=g)[:length][None]
    mask = chunk_mask(nq, length, window)
    q = torch.randn(1, nq, h, d, generator=g) * 2  # peaked softmaxes: the max moves
    got = kernel(q, kc, vc, slots, mask, d ** -0.5)
    assert (got.double() - reference(q, kc, vc, slots, mask, d ** -0.5)).abs().max() < 1e-5


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_threads_split_sequences_and_heads(kernel, threads: int) -> None:
    """Each thread takes a run of (sequence, key/value head) pairs: whole sequences, a
    sequence's heads split between threads, more threads than pairs of one sequence."""
    g = torch.Generator().manual_seed(threads)
    kc, vc = torch.randn(300, 2, 32, generator=g), torch.randn(300, 2, 32, generator=g)
    slots = torch.randint(0, 300, (3, 150), generator=g)
    mask = torch.rand(3, 4, 150, generator=g) > 0.2
    mask[1, :, 70:] = False  # a shorter sequence, padded
    q = torch.randn(3, 4, 6, 32, generator=g)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        got = kernel(q, kc, vc, slots, mask, 0.2)
    finally:
        torch.set_num_threads(before)
    assert (got.double() - reference(q, kc, vc, slots, mask, 0.2)).abs().max() < 1e-5


@pytest.mark.parametrize("parts", [1, 2, 4, 7])
def test_parts_compute_what_one_call_does(kernel, parts: int) -> None:
    """``fq_attention_part``: the shares 0 .. parts-1 of the (sequence, key/value head) pairs
    (the native stack's threads call one each), run in turn, fill the output of one call bit
    for bit (more parts than the 6 pairs leave some empty); a part outside 0 .. parts-1 is
    refused."""
    g = torch.Generator().manual_seed(parts)
    kc, vc = torch.randn(200, 3, 32, generator=g), torch.randn(200, 3, 32, generator=g)
    slots = torch.randint(0, 200, (2, 90), generator=g)
    mask = torch.rand(2, 1, 90, generator=g) > 0.1
    q = torch.randn(2, 1, 9, 32, generator=g)
    want = kernel(q, kc, vc, slots, mask, 0.3)
    out = run_parts(kernel, q, kc, vc, slots, mask, 0.3, parts)
    assert torch.equal(out, want)
    args = (2, 1, 9, 3, 32, kc.data_ptr(), vc.data_ptr(), 0, slots.data_ptr(), 90, 90,
            mask.data_ptr(), mask.stride(0), mask.stride(1), 0.3)
    assert kernel.lib.fq_attention_part(q.data_ptr(), out.data_ptr(), *args, parts, parts) == -1
    assert kernel.lib.fq_attention_part(q.data_ptr(), out.data_ptr(), *args, 0, 0) == -1


def test_rows_that_see_no_key_give_zeros(kernel) -> None:
    g = torch.Generator().manual_seed(5)
    kc, vc = torch.randn(100, 1, 16, generator=g), torch.randn(100, 1, 16, generator=g)
    slots = torch.arange(100)[None]
    mask = torch.ones(1, 3, 100, dtype=torch.bool)
    mask[0, 1] = False
    q = torch.randn(1, 3, 2, 16, generator=g)
    got = kernel(q, kc, vc, slots, mask, 0.25)
    assert torch.equal(got[0, 1], torch.zeros(2, 16))
    keep = torch.tensor([0, 2])
    want = reference(q[:, keep], kc, vc, slots, mask[:, keep], 0.25)
    assert (got[:, keep].double() - want).abs().max() < 1e-5


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


def test_bad_shapes_are_refused_and_empty_calls_do_nothing(kernel) -> None:
    lib, null = kernel.lib, None
    assert lib.fq_attention(null, null, 1, 1, 4, 0, 16, null, null, 0, null, 0, 8, null, 0, 0, 1.0, 1) == -1
    assert lib.fq_attention(null, null, 1, 1, 4, 2, 24, null, null, 0, null, 0, 8, null, 0, 0, 1.0, 1) == -1
    assert lib.fq_attention(null, null, 1, 1, 3, 2, 16, null, null, 0, null, 0, 8, null, 0, 0, 1.0, 1) == -1
    assert lib.fq_attention(null, null, 0, 1, 4, 2, 16, null, null, 0, null, 0, 8, null, 0, 0, 1.0, 1) == 0
    assert lib.fq_attention(null, null, 2, 0, 4, 2, 16, null, null, 0, null, 0, 8, null, 0, 0, 1.0, 2) == 0
