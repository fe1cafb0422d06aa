"""GGUF-native matmul kernels (``gguf_matmul.c``): y = x W^T with W as ggml blocks.

The C source is built per instruction set on first use and cached like the softmax kernel
(``native.open_isa_library``: ``avx512``, ``avx2`` or ``portable``; the best this CPU runs,
``THINKSTREAM_ISA`` forces one, ``THINKSTREAM_NATIVE=0`` disables all: then
``load_gguf_kernels`` returns None and callers keep the dense path). Each build links
OpenMP when the compiler has it (torch's own ``libgomp`` once torch is loaded) and splits
weight rows across ``torch.get_num_threads()`` threads, so the engine's per-step thread
scope applies to it too. On CPUs with AVX512_VNNI the avx512 build adds ``-mavx512vnni``
(the int8 mode's vpdpbusd); a CPU without it never gets that build.
"""

from __future__ import annotations

import ctypes
import functools
from dataclasses import dataclass
from pathlib import Path

import torch

from thinkstream.kernels.cpu import CpuInfo, detect_cpu
from thinkstream.kernels.native import open_isa_library, wanted_isa

_SRC = Path(__file__).with_name("gguf_matmul.c")

# ggml type id -> (values per block, bytes per block), the types the kernels decode
BLOCKS: dict[int, tuple[int, int]] = {
    2: (32, 18),  # Q4_0
    3: (32, 20),  # Q4_1
    6: (32, 22),  # Q5_0
    7: (32, 24),  # Q5_1
    8: (32, 34),  # Q8_0
    12: (256, 144),  # Q4_K
    13: (256, 176),  # Q5_K
    14: (256, 210),  # Q6_K
}

# ``gguf_matmul_ex``'s ``act``: the activations' precision inside the kernel. F32: float32
# (the dequantized model's arithmetic up to summation order; logits within 1e-3 of the
# float32 model's). I16: int16 per 32-value block for the one or two rows where that is
# faster, float32 above (relative error ~1e-5 of a block's largest |x|; on SmolLM2 logits
# move by up to 2e-2). I8: int8 per block, any row count (llama.cpp's Q8 activations).
ACT_F32, ACT_I16, ACT_I8 = 32, 16, 8
ACTS = (ACT_F32, ACT_I16, ACT_I8)
# the ``quantization`` setting (config.GGUF_MODES) -> the kernels' ``act``
ACT_OF_MODE = {"gguf": ACT_F32, "gguf-q16": ACT_I16, "gguf-q8": ACT_I8}
# ``act`` -> the C entry point with gguf_matmul's signature that computes with it
ENTRY_OF_ACT = {ACT_F32: "gguf_matmul", ACT_I16: "gguf_matmul_i16", ACT_I8: "gguf_matmul_i8"}
# the float32 product's algorithm (``gguf_matmul_path``): by row count (dot products for few
# rows, the register-blocked GEMM of ``gguf_gemm.h`` for many), or forced (tests, benchmarks)
PATHS = {"auto": 0, "dot": 1, "gemm": 2}
# rows from which the float32 product runs as the GEMM (gguf_matmul.c's GEMM_MIN_ROWS, in the
# builds that have it): fewer rows run as dot products, each row summed in the order of a
# one-row product, so a verification of drafts gives bitwise a one-row decode's logits
GEMM_MIN_ROWS = 13


@dataclass(frozen=True)
class GGUFKernels:
    """The loaded build of the kernels for one instruction set."""

    isa: str  # "avx512" | "avx2" | "portable"
    openmp: bool
    lib: ctypes.CDLL
    vnni: bool = False  # built with AVX512_VNNI (the int8 mode's vpdpbusd)

    def supports(self, qtype: int) -> bool:
        return qtype in BLOCKS

    @property
    def gemm(self) -> bool:
        """This build has the GEMM for many rows (``gguf_gemm.h``: AVX2 and AVX-512; the
        portable build has only the dot products)."""
        return self.isa != "portable"

    @property
    def exact_rows(self) -> int | None:
        """Rows up to which each row of a float32 product is bitwise the one-row product
        (the dot products; the GEMM sums in another order: logits ~6e-5 apart on SmolLM2,
        enough to flip a near tie, more after a bfloat16 KV cache rounds them). None: every
        row count (the portable build's dot products)."""
        return GEMM_MIN_ROWS - 1 if self.gemm else None

    def matmul(self, qtype: int, blocks: torch.Tensor, k: int, x: torch.Tensor,
               out: torch.Tensor | None = None, threads: int | None = None,
               act: int = ACT_F32, path: str = "auto") -> torch.Tensor:
        """x (M, K) float32 @ W^T -> (M, N) float32 (written into ``out``, a (M, N) float32
        tensor whose rows may be strided, when given). ``blocks``: (N, bytes per row) uint8,
        contiguous. ``act``: the activations' precision in the kernel (``ACTS``; the
        portable build always computes in float32). ``path``: the float32 product's
        algorithm (``PATHS``: "auto" by row count, "dot" products or "gemm"; the portable
        build runs "dot" for all). Raises ValueError on a type, shape, dtype, ``act`` or
        ``path`` it cannot take."""
        n, row_bytes = blocks.shape
        if x.dtype != torch.float32 or x.dim() != 2 or x.shape[1] != k or x.stride(1) != 1:
            raise ValueError("gguf matmul: x must be (M, K) float32 with unit column stride")
        m = x.shape[0]
        if out is None:
            out = torch.empty(m, n, dtype=torch.float32)
        elif out.shape != (m, n) or out.dtype != torch.float32 or out.stride(1) != 1:
            raise ValueError("gguf matmul: out must be (M, N) float32 with unit column stride")
        if m == 0 or n == 0:
            return out
        if act not in ACTS:
            raise ValueError(f"gguf matmul: act must be one of {ACTS}, got {act!r}")
        if path not in PATHS:
            raise ValueError(f"gguf matmul: path must be one of {tuple(PATHS)}, got {path!r}")
        rc = self.lib.gguf_matmul_path(qtype, blocks.data_ptr(), row_bytes, n, k, x.data_ptr(), m,
                                       x.stride(0), out.data_ptr(), out.stride(0),
                                       threads or torch.get_num_threads(), act, PATHS[path])
        if rc != 0:
            raise ValueError(f"gguf matmul: type {qtype} with {row_bytes} bytes for {k} values "
                             f"is not supported (code {rc})")
        return out

    def dequantize(self, qtype: int, blocks: torch.Tensor, k: int) -> torch.Tensor:
        """(N, bytes per row) uint8 blocks -> (N, K) float32."""
        n, row_bytes = blocks.shape
        out = torch.empty(n, k, dtype=torch.float32)
        if n and self.lib.gguf_dequantize(qtype, blocks.data_ptr(), row_bytes, n, k, out.data_ptr()):
            raise ValueError(f"gguf dequantize: type {qtype} with {row_bytes} bytes for {k} values "
                             "is not supported")
        return out


def _open(isa: str, vnni: bool = False, src: Path = _SRC) -> GGUFKernels | None:
    """The ``isa`` build, with AVX512_VNNI's dot products when ``vnni`` (an avx512 build for
    a CPU the caller checked has them; without, the int8 mode uses vpmaddubsw). ``src``:
    another version of ``gguf_matmul.c`` with the same entry points (a benchmark's
    baseline; its headers beside it)."""
    lib = open_isa_library(src, isa, "gguf_isa", ("-mavx512vnni",) if vnni else ())
    if lib is None:
        return None
    i64, ptr = ctypes.c_int64, ctypes.c_void_p
    lib.gguf_matmul.restype = ctypes.c_int
    lib.gguf_matmul.argtypes = [ctypes.c_int, ptr, i64, i64, i64, ptr, i64, i64, ptr, i64,
                                ctypes.c_int]
    lib.gguf_matmul_ex.restype = ctypes.c_int
    lib.gguf_matmul_ex.argtypes = [*lib.gguf_matmul.argtypes, ctypes.c_int]
    lib.gguf_matmul_path.restype = ctypes.c_int
    lib.gguf_matmul_path.argtypes = [*lib.gguf_matmul_ex.argtypes, ctypes.c_int]
    lib.gguf_dequantize.restype = ctypes.c_int
    lib.gguf_dequantize.argtypes = [ctypes.c_int, ptr, i64, i64, i64, ptr]
    return GGUFKernels(isa, bool(lib.gguf_openmp()), lib, bool(lib.gguf_vnni()))


def open_source(src: Path, isa: str, vnni: bool = False) -> GGUFKernels | None:
    """Another version of ``gguf_matmul.c`` (``src``, its headers beside it) built for
    ``isa``: a benchmark's baseline (``bench/gemm.py --baseline``). None where it cannot be
    built or loaded."""
    return _open(isa, vnni, src)


@functools.cache
def _load(isa: str, vnni: bool = False) -> GGUFKernels | None:
    return _open(isa, vnni)


def load_gguf_kernels(cpu: CpuInfo | None = None) -> GGUFKernels | None:
    """The kernels for this CPU (``THINKSTREAM_ISA`` forces a build), or None where
    they cannot be built or run, or ``THINKSTREAM_NATIVE=0``."""
    cpu = cpu or detect_cpu()
    isa = wanted_isa(cpu)
    return None if isa is None else _load(isa, isa == "avx512" and "avx512_vnni" in cpu.flags)
