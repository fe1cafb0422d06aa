"""The fused few-query attention kernel (``fq_attention.c``): decode rows and short chunks
over the paged KV cache in one pass over the keys (online softmax), float32 arithmetic;
bfloat16 caches on a CPU with AVX512_BF16 take bfloat16 dot products (``fq_bf16.h``: the
avx512 build made with ``-mavx512bf16``, q and the probabilities rounded to bfloat16, float32
sums), elsewhere they are widened to float32.

Built per instruction set like the GGUF kernels (``native.open_isa_library``; the best
build for this CPU, ``THINKSTREAM_ISA`` forces one, ``THINKSTREAM_NATIVE=0`` disables it:
then ``load_fq_attention`` returns None and ``attention/few_query.py`` keeps its torch path).
"""

from __future__ import annotations

import ctypes
import functools
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from thinkstream.kernels.cpu import CpuInfo, detect_cpu
from thinkstream.kernels.native import ISA_ENV, open_isa_library, wanted_isa

_SRC = Path(__file__).with_name("fq_attention.c")


@dataclass(frozen=True)
class FusedAttention:
    isa: str
    lib: ctypes.CDLL
    bf16_dot: bool = False  # bfloat16 caches use vdpbf16ps (head sizes that are multiples of 32)

    @staticmethod
    def accepts(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                slots: torch.Tensor, mask: torch.Tensor) -> bool:
        """Whether ``__call__`` takes these (CPU tensors, float32 / bfloat16 contiguous
        caches, a head size divisible by 16, int64 slots and a bool mask with unit stride
        along the keys)."""
        return (q.device.type == "cpu" and k_cache.device.type == "cpu"
                and k_cache.dtype in (torch.float32, torch.bfloat16) and v_cache.dtype == k_cache.dtype
                and k_cache.is_contiguous() and v_cache.is_contiguous() and q.shape[-1] % 16 == 0
                and q.shape[-2] % k_cache.shape[1] == 0 and slots.dtype == torch.int64
                and slots.stride(-1) == 1 and mask.dtype == torch.bool and mask.stride(-1) == 1
                and mask.shape[-1] == slots.shape[-1])

    def __call__(self, q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                 slots: torch.Tensor, mask: torch.Tensor, scale: float) -> torch.Tensor:
        """q (B, Q, H, D); caches (slots, KVH, D) float32 or bfloat16, contiguous; slots
        (B, L) int64 (row-strided allowed); mask (B, Q, L) bool, True = visible (strides of
        0 allowed on B and Q, unit stride on L). Returns (B, Q, H, D) float32. Raises
        ValueError on shapes or dtypes it cannot take."""
        b, nq, h, d = q.shape
        kvh = k_cache.shape[1]
        bf16 = k_cache.dtype == torch.bfloat16
        if not self.accepts(q, k_cache, v_cache, slots, mask):
            raise ValueError("fused attention: unsupported shapes, dtypes or layouts")
        qf = q.to(torch.float32).contiguous()
        out = torch.empty_like(qf)
        if qf.numel() == 0:
            return out
        rc = self.lib.fq_attention(
            qf.data_ptr(), out.data_ptr(), b, nq, h, kvh, d, k_cache.data_ptr(), v_cache.data_ptr(),
            int(bf16), slots.data_ptr(), slots.stride(0) if slots.dim() > 1 else 0,
            slots.shape[-1], mask.data_ptr(), mask.stride(0), mask.stride(1), float(scale),
            torch.get_num_threads())
        if rc != 0:
            raise ValueError(f"fused attention failed (code {rc})")
        return out


@functools.cache
def _load(isa: str, bf16_dot: bool = False) -> FusedAttention | None:
    """The ``isa`` build; with ``bf16_dot`` (avx512 only, for a CPU the caller checked has
    avx512_bf16) the one made with ``-mavx512bf16``."""
    lib = open_isa_library(_SRC, isa, "fq_isa", ("-mavx512bf16",) if bf16_dot else ())
    return None if lib is None else _configure(lib, isa)


def wants_bf16_dot(isa: str, cpu: CpuInfo) -> bool:
    """Whether the ``isa`` build for ``cpu`` is the one with bfloat16 dot products."""
    return isa == "avx512" and "avx512_bf16" in cpu.flags


def _configure(lib: ctypes.CDLL, isa: str) -> FusedAttention:
    """``lib`` (a build of fq_attention.c for ``isa``) with its entry point's C types set."""
    i64, ptr = ctypes.c_int64, ctypes.c_void_p
    lib.fq_attention.restype = ctypes.c_int
    lib.fq_attention.argtypes = [ptr, ptr, i64, i64, i64, i64, i64, ptr, ptr, ctypes.c_int, ptr,
                                 i64, i64, ptr, i64, i64, ctypes.c_float, ctypes.c_int]
    # the same arguments, then (part, parts) instead of threads: one share on the calling
    # thread (the native decoder stack's threads call it)
    lib.fq_attention_part.restype = ctypes.c_int
    lib.fq_attention_part.argtypes = lib.fq_attention.argtypes + [ctypes.c_int]
    # a lone sequence's keys split between threads (FQ_SEG-key segments, kernels_common.h):
    # each computes a range of segments' partials, then each merges a range of rows
    if hasattr(lib, "fq_attention_keys"):
        f32p = ctypes.POINTER(ctypes.c_float)
        lib.fq_attention_keys.restype = ctypes.c_int
        lib.fq_attention_keys.argtypes = [ptr, i64, i64, i64, i64, i64, ptr, ptr, ctypes.c_int, ptr, i64,
                                          i64, ptr, i64, i64, ctypes.c_float, i64, i64, f32p]
        lib.fq_attention_merge.restype = None
        lib.fq_attention_merge.argtypes = [f32p, f32p, i64, i64, i64, i64, i64]
    dot = hasattr(lib, "fq_bf16_dot") and bool(lib.fq_bf16_dot())  # (older sources: none)
    return FusedAttention(isa, lib, dot)


def load_fq_attention() -> FusedAttention | None:
    """The kernel for this CPU, or None (no compiler, disabled, or a forced build this CPU
    cannot run). Called per layer: cached per value of the two environment variables."""
    return _for_env(os.environ.get("THINKSTREAM_NATIVE"), os.environ.get(ISA_ENV))


@functools.lru_cache(maxsize=8)
def _for_env(native: str | None, forced: str | None) -> FusedAttention | None:
    cpu = detect_cpu()
    isa = wanted_isa(cpu)
    return None if isa is None else _load(isa, wants_bf16_dot(isa, cpu))
