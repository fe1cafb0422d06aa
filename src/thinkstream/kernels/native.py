"""Native CPU kernels: C sources in this folder, built on first use with the system C
compiler and called through ctypes (which releases the GIL during the call).

No torch headers and no build step at install: a source file compiles in well under a
second into ``$XDG_CACHE_HOME/thinkstream/kernels/<name>-<hash>.so`` (the hash covers the
source and the compiler, so an edit rebuilds and the earlier build is removed; the file is
written under a temporary name and renamed, so concurrent processes never load half a
library). Where there is no compiler, the build fails, the CPU lacks the instructions, or
``THINKSTREAM_NATIVE=0`` is set, the loaders return None and callers keep their torch path:
the kernels are an optimisation, never a requirement.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

from thinkstream.kernels.cpu import CpuInfo, detect_cpu

_SRC = Path(__file__).with_name("softmax_bf16.c")


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "thinkstream" / "kernels"


def build(src: Path, out_dir: Path, compiler: str | None = None,
          flags: tuple[str, ...] = (), variant: str = "") -> Path | None:
    """The shared library of ``src`` (built now if not cached), or None if it cannot be.
    ``flags`` are added to the compiler's command line; ``variant`` names a build of the
    same source with other flags (``<stem>.<variant>-<hash>.so``), kept beside the others."""
    cc = compiler or os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        return None
    stem = f"{src.stem}.{variant}" if variant else src.stem
    # the hash covers the local headers the source includes too, and theirs (gguf_matmul.c:
    # gguf_simd.h, gguf_gemm.h, kernels_common.h)
    text = _with_headers(src)
    digest = hashlib.sha256(text + cc.encode() + " ".join(flags).encode()).hexdigest()[:16]
    lib = out_dir / f"{stem}-{digest}.so"
    if lib.exists():
        return lib
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=out_dir)
        os.close(fd)
    except OSError:
        return None
    try:
        subprocess.run([cc, "-O3", "-shared", "-fPIC", *flags, "-o", tmp, str(src)],
                       check=True, capture_output=True, timeout=120)
        os.replace(tmp, lib)
    except (OSError, subprocess.SubprocessError):
        Path(tmp).unlink(missing_ok=True)
        return None
    for old in out_dir.glob(f"{stem}-*.so"):  # builds of earlier sources
        if old != lib:
            old.unlink(missing_ok=True)
    return lib


# Builds of the multi-ISA sources (gguf_matmul.c, fq_attention.c): each is written for
# the vector width its flags allow (``#if defined(__AVX512F__)`` ...), so one source gives
# an AVX-512, an AVX2 and a portable library (SSE2 on x86-64, NEON on aarch64).
ISA_ENV = "THINKSTREAM_ISA"
ISAS = ("avx512", "avx2", "portable")
ISA_FLAGS = {
    "avx512": ("-mavx512f", "-mavx512bw", "-mavx512vl", "-mfma", "-mf16c"),
    "avx2": ("-mavx2", "-mfma", "-mf16c"),
    "portable": (),
}
_ISA_RANK = {"portable": 0, "avx2": 1, "avx512": 2}  # also what each build's *_isa() returns


def best_isa(cpu: CpuInfo) -> str:
    """The fastest build ``cpu`` runs."""
    if cpu.arch not in ("x86_64", "AMD64") or not (cpu.avx2 and "f16c" in cpu.flags):
        return "portable"
    return "avx512" if cpu.avx512 else "avx2"


def choose_isa(cpu: CpuInfo, forced: str | None) -> str | None:
    """The build to load: ``forced`` (``THINKSTREAM_ISA``) if this CPU runs it, else the best
    one; None when ``forced`` names a build this CPU cannot run. Raises ValueError for an
    unknown name."""
    if not forced:
        return best_isa(cpu)
    if forced not in ISAS:
        raise ValueError(f"{ISA_ENV} must be one of {', '.join(ISAS)}, got {forced!r}")
    return forced if _ISA_RANK[forced] <= _ISA_RANK[best_isa(cpu)] else None


def wanted_isa(cpu: CpuInfo | None = None) -> str | None:
    """The build the environment asks for on this CPU; None for none (``THINKSTREAM_NATIVE=0``
    or a forced build this CPU cannot run)."""
    if os.environ.get("THINKSTREAM_NATIVE", "1") == "0":
        return None
    return choose_isa(cpu or detect_cpu(), os.environ.get(ISA_ENV) or None)


def _with_headers(src: Path) -> bytes:
    """``src``'s bytes followed by those of every local header it includes, recursively
    (each once, in include order)."""
    seen: set[Path] = set()

    def walk(path: Path) -> bytes:
        seen.add(path)
        text = path.read_bytes()
        out = text
        for name in re.findall(rb'^#include "([^"]+)"', text, flags=re.M):
            header = path.parent / name.decode()
            if header.exists() and header not in seen:
                out += walk(header)
        return out

    return walk(src)


def open_library(src: Path, openmp: bool = False) -> ctypes.CDLL | None:
    """``src`` built without instruction-set flags (cached; with ``openmp``, with OpenMP
    where the compiler has it) and loaded; None where it cannot be built or loaded."""
    for flags in ((("-fopenmp",), ()) if openmp else ((),)):
        path = build(src, cache_dir(), flags=flags, variant="omp" if flags else "")
        if path is None:
            continue
        try:
            return ctypes.CDLL(str(path))
        except OSError:
            continue
    return None


def open_isa_library(src: Path, isa: str, isa_fn: str, extra: tuple[str, ...] = ()) -> ctypes.CDLL | None:
    """``src`` built for ``isa`` (with OpenMP where the compiler has it; ``extra`` flags
    added, e.g. ``-mavx512vnni`` where the caller checked the CPU has it), loaded; None
    where it cannot be built or loaded, or its ``isa_fn()`` disagrees with ``isa``."""
    tag = "".join(f.removeprefix("-m") for f in extra)
    for openmp in (True, False):
        flags = ISA_FLAGS[isa] + extra + (("-fopenmp",) if openmp else ())
        variant = isa + (f"-{tag}" if tag else "") + ("-omp" if openmp else "")
        path = build(src, cache_dir(), flags=flags, variant=variant)
        if path is None:
            continue
        try:
            lib = ctypes.CDLL(str(path))
        except OSError:
            continue
        return lib if getattr(lib, isa_fn)() == _ISA_RANK[isa] else None
    return None


SoftmaxFn = Callable[[torch.Tensor], torch.Tensor]


@functools.cache
def load_softmax_bf16() -> SoftmaxFn | None:
    """An in-place softmax over the last dim of a contiguous bfloat16 CPU tensor (returns
    it), or None where the native kernel is unavailable (see the module docstring)."""
    if os.environ.get("THINKSTREAM_NATIVE", "1") == "0":
        return None
    lib = open_library(_SRC)
    if lib is None:
        return None
    isa = lib.softmax_bf16_isa()
    if isa == 0:
        return None
    fn = lib.softmax_bf16_avx512bf16 if isa == 2 else lib.softmax_bf16_avx512
    fn.restype = None
    fn.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64,
                   ctypes.c_void_p]

    def softmax_(x: torch.Tensor) -> torch.Tensor:
        if x.dtype != torch.bfloat16 or x.device.type != "cpu" or not x.is_contiguous():
            raise ValueError("softmax_bf16: needs a contiguous bfloat16 CPU tensor")
        cols = x.shape[-1]
        if x.numel():
            scratch = torch.empty(cols + 16, dtype=torch.float32)
            fn(x.data_ptr(), x.numel() // cols, cols, cols, scratch.data_ptr())
        return x

    return softmax_


def softmax_last(x: torch.Tensor) -> torch.Tensor:
    """softmax over the last dim; in place with the native kernel where it applies
    (contiguous bfloat16 on CPU, torch on one thread: the kernel runs on the calling thread,
    and with more threads torch's parallel softmax is as fast), else torch's (a new tensor)."""
    if (x.dtype == torch.bfloat16 and x.device.type == "cpu" and x.is_contiguous()
            and torch.get_num_threads() == 1):
        native = load_softmax_bf16()
        if native is not None:
            return native(x)
    return x.softmax(dim=-1)
