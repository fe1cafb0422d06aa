"""The fused attention kernel's key segments (``fq_attention.c``, FQ_SEG = 512 keys in
``kernels_common.h``): every path merges each row's segments left to right, so a lone
sequence whose keys are split between threads (``fq_attention_keys`` then
``fq_attention_merge``; ``fq_attention`` with threads when the key/value heads cannot share
them evenly) gives bit for bit what one thread gives, and both the float64 reference."""

from __future__ import annotations

import ctypes
import shutil

import pytest
import torch
from helpers.attention_ref import reference_attention as reference
from helpers.attention_ref import run_parts

from thinkstream.kernels import attention as ka
from thinkstream.kernels import native
from thinkstream.kernels.cpu import detect_cpu

HAS_CC = shutil.which("cc") is not None or shutil.which("gcc") is not None
BUILDS = [isa for isa in native.ISAS if native.choose_isa(detect_cpu(), isa)] if HAS_CC else []
SEG = 512


@pytest.fixture(scope="module", params=BUILDS)
def kernel(request) -> ka.FusedAttention:
    return ka._load(request.param, ka.wants_bf16_dot(request.param, detect_cpu()))


def case(nq: int, length: int, dtype: torch.dtype, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    kc = (torch.randn(length + 8, 3, 64, generator=g) * 2).to(dtype)
    vc = torch.randn(length + 8, 3, 64, generator=g).to(dtype)
    slots = torch.randperm(length + 8, generator=g)[:length][None].contiguous()
    pos = torch.arange(length - nq, length)[:, None]
    mask = (torch.arange(length)[None] <= pos)[None].contiguous()
    mask[..., 700:705] = False  # a hole in the second segment
    q = torch.randn(1, nq, 9, 64, generator=g) * 2
    return q, kc, vc, slots, mask


def by_parts(kernel, q, kc, vc, slots, mask, cuts: list[int]) -> torch.Tensor:
    """fq_attention_keys for the segment ranges between ``cuts``, then one merge."""
    b, nq, h, d = q.shape
    length, nseg = slots.shape[1], -(-slots.shape[1] // SEG)
    partial = torch.full((nseg, b * nq * h, d + 2), float("nan"))
    out = torch.full_like(q, float("nan"))
    f32p = ctypes.POINTER(ctypes.c_float)
    for lo, hi in zip(cuts, cuts[1:], strict=False):
        assert kernel.lib.fq_attention_keys(
            q.data_ptr(), b, nq, h, kc.shape[1], d, kc.data_ptr(), vc.data_ptr(),
            int(kc.dtype == torch.bfloat16), slots.data_ptr(), length, length, mask.data_ptr(),
            mask.stride(0), mask.stride(1), 0.125, lo, hi,
            ctypes.cast(partial.data_ptr(), f32p)) == 0
    rows = b * nq * h
    kernel.lib.fq_attention_merge(ctypes.cast(partial.data_ptr(), f32p), ctypes.cast(out.data_ptr(), f32p),
                                  rows, d, nseg, 0, rows // 2)
    kernel.lib.fq_attention_merge(ctypes.cast(partial.data_ptr(), f32p), ctypes.cast(out.data_ptr(), f32p),
                                  rows, d, nseg, rows // 2, rows)
    return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("nq", "length"), [(1, 1300), (18, 1554), (5, 512), (1, 513)])
def test_split_keys_equal_one_thread_bit_for_bit(kernel, dtype, nq, length) -> None:
    q, kc, vc, slots, mask = case(nq, length, dtype, seed=length)
    torch.set_num_threads(1)
    one = kernel(q, kc, vc, slots, mask, 0.125)
    nseg = -(-length // SEG)
    assert torch.equal(by_parts(kernel, q, kc, vc, slots, mask, [0, nseg]), one)
    assert torch.equal(by_parts(kernel, q, kc, vc, slots, mask, list(range(nseg + 1))), one)
    if nq == 1:  # the native stack's other split: (sequence, key/value head) pairs
        assert torch.equal(run_parts(kernel, q, kc, vc, slots, mask, 0.125, 2), one)
    torch.set_num_threads(2)  # 3 key/value heads over 2 threads: the keys split
    try:
        assert torch.equal(kernel(q, kc, vc, slots, mask, 0.125), one)
    finally:
        torch.set_num_threads(1)
    tol = 2e-5 if dtype == torch.float32 and not kernel.bf16_dot else 2e-2
    assert (one.double() - reference(q, kc, vc, slots, mask, 0.125)).abs().max() < tol


def test_one_segment_is_the_single_pass(kernel) -> None:
    """Up to 512 keys nothing is merged: the result of a 512-key context equals the
    reference as before, and a row that sees no key is 0."""
    q, kc, vc, slots, mask = case(2, 512, torch.float32)
    mask[0, 0] = False
    torch.set_num_threads(1)
    got = kernel(q, kc, vc, slots, mask, 0.125)
    assert torch.equal(got[0, 0], torch.zeros_like(got[0, 0]))
    assert (got[0, 1].double() - reference(q, kc, vc, slots, mask, 0.125)[0, 1]).abs().max() < 2e-5
