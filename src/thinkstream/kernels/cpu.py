"""What this CPU is: its model name and the instruction sets the kernels and the precision
choice care about (``/proc/cpuinfo`` on Linux; elsewhere what torch reports).

``CpuInfo`` is a plain value so the choices made from it (``kernels/gguf.py``'s build,
``precision.py``'s dtype) are pure functions a test can feed mocked flags.
"""

from __future__ import annotations

import functools
import platform
from dataclasses import dataclass
from pathlib import Path

# The flags shown by ``thinkstream info``, in this order (Linux /proc/cpuinfo names).
FEATURES = ("avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni",
            "avx512_bf16", "amx_bf16", "amx_int8", "asimd")


@dataclass(frozen=True)
class CpuInfo:
    model: str  # "AMD EPYC 9R14", "unknown"
    arch: str  # platform.machine(): "x86_64", "aarch64"
    flags: frozenset[str]  # /proc/cpuinfo names (avx2, avx512f, avx512_bf16, amx_bf16, ...)

    @property
    def avx2(self) -> bool:
        return {"avx2", "fma"} <= self.flags

    @property
    def avx512(self) -> bool:
        return {"avx512f", "avx512bw", "avx512vl"} <= self.flags

    @property
    def native_bf16(self) -> bool:
        """bfloat16 matmuls in hardware: AMX, or AVX-512's bf16 dot products."""
        return bool({"amx_bf16", "avx512_bf16"} & self.flags)

    @property
    def amx(self) -> bool:
        return "amx_bf16" in self.flags

    def describe(self) -> str:
        """One line: the model and the relevant instruction sets it has."""
        have = [f for f in FEATURES if f in self.flags]
        return f"{self.model} ({self.arch}): {' '.join(have) or 'no SIMD extensions detected'}"

    def as_dict(self) -> dict[str, object]:
        return {"model": self.model, "arch": self.arch,
                "isa": [f for f in FEATURES if f in self.flags]}


def parse_cpuinfo(text: str, arch: str) -> CpuInfo:
    """A CpuInfo from the text of ``/proc/cpuinfo`` (the first processor's entry)."""
    model, flags = "unknown", frozenset[str]()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key in ("model name", "Model", "CPU part") and model == "unknown":
            model = value.strip()
        elif key in ("flags", "Features") and not flags:
            flags = frozenset(value.split())
    return CpuInfo(model, arch, flags)


def _torch_flags() -> frozenset[str]:
    """Flags inferred from torch's vector capability, where /proc/cpuinfo is missing."""
    import torch

    cap = torch.backends.cpu.get_cpu_capability()
    return {"AVX2": frozenset({"avx2", "fma", "f16c"}),
            "AVX512": frozenset({"avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl"})}.get(
        cap, frozenset())


@functools.cache
def detect_cpu() -> CpuInfo:
    """This machine's CPU (cached: it does not change while the process runs)."""
    arch = platform.machine()
    try:
        info = parse_cpuinfo(Path("/proc/cpuinfo").read_text(), arch)
    except OSError:
        info = CpuInfo(platform.processor() or "unknown", arch, frozenset())
    if not info.flags and arch in ("x86_64", "AMD64"):
        info = CpuInfo(info.model, arch, _torch_flags())
    return info
