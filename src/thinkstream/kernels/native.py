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
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

_SRC = Path(__file__).with_name("softmax_bf16.c")


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "thinkstream" / "kernels"


def build(src: Path, out_dir: Path, compiler: str | None = None) -> Path | None:
    """The shared library of ``src`` (built now if not cached), or None if it cannot be."""
    cc = compiler or os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        return None
    digest = hashlib.sha256(src.read_bytes() + cc.encode()).hexdigest()[:16]
    lib = out_dir / f"{src.stem}-{digest}.so"
    if lib.exists():
        return lib
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=out_dir)
        os.close(fd)
    except OSError:
        return None
    try:
        subprocess.run([cc, "-O3", "-shared", "-fPIC", "-o", tmp, str(src)],
                       check=True, capture_output=True, timeout=120)
        os.replace(tmp, lib)
    except (OSError, subprocess.SubprocessError):
        Path(tmp).unlink(missing_ok=True)
        return None
    for old in out_dir.glob(f"{src.stem}-*.so"):  # builds of earlier sources
        if old != lib:
            old.unlink(missing_ok=True)
    return lib


SoftmaxFn = Callable[[torch.Tensor], torch.Tensor]


@functools.cache
def load_softmax_bf16() -> SoftmaxFn | None:
    """An in-place softmax over the last dim of a contiguous bfloat16 CPU tensor (returns
    it), or None where the native kernel is unavailable (see the module docstring)."""
    if os.environ.get("THINKSTREAM_NATIVE", "1") == "0":
        return None
    path = build(_SRC, cache_dir())
    if path is None:
        return None
    try:
        lib = ctypes.CDLL(str(path))
    except OSError:
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
