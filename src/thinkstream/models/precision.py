"""``dtype="auto"`` / ``quantization="auto"``: the fastest exact-enough setting for the
hardware, resolved once when an engine is built.

The rules, measured on three CPU classes (docs/benchmarks.md):

- CUDA: bfloat16, no weight quantization.
- CPU, GGUF checkpoint whose matrix types the native kernels decode (``kernels/gguf.py``)
  and a build of them for this CPU: float32 with GGUF-native linears
  (``quantization="gguf"``). Every batch reads the blocks as stored and computes in
  float32, the dequantized float32 model's logits within 1e-3 at a fraction of the bytes:
  dot products for a few rows, a GEMM for more (prefill, big batches; the portable build of
  the kernels has no GEMM and keeps a dense float32 copy for batches above 16 rows). Not a
  bfloat16 copy, although it prefills about 1.7x faster on AVX512_BF16 / AMX: measured on
  Zen 4, it moved prompt log-probs by up to 0.13 and flipped the first answer token of the
  README's own question ("What is the capital of France?": "L'Étoile..." instead of "The
  capital of France is Paris."), and it would make outputs depend on the batch size (kernel
  rows float32, dense rows bfloat16). ``dtype="bfloat16"`` asks for it.
- CPU without them (an HF directory, an unknown type, no compiler): bfloat16 where the CPU
  has bfloat16 matmuls (AMX, AVX512_BF16: decode reads half the bytes, batches ~2x), float32
  elsewhere (AVX2 emulates bfloat16 at 1-25% of float32's speed).

An explicit ``dtype`` is kept; an explicit ``quantization`` too (``"gguf"`` raises
``ValueError`` where it cannot run).

The KV cache (``kv_cache_dtype="auto"``, ``choose_kv_cache``) takes the resolved ``dtype``,
but for a float32 model that ``dtype="auto"`` chose on a CPU with bfloat16 dot products
(AVX512_BF16, AMX) where the fused attention kernel has its bfloat16 build
(``kernels/fq_bf16.h``): there it is bfloat16, as the issue asks of such CPUs and as
llama.cpp (an f16 cache) and vLLM (the model's 16-bit dtype) keep theirs. The linears stay
float32 on the GGUF blocks; only each key and value is rounded once, when written. Measured
on Zen 4 (README "KV cache dtype"): half the cache's bytes, twice the blocks, attention at
long contexts ~0.6x the time; logits within 0.13-0.29 of the float32 cache (SmolLM2),
argmax agreeing at 99.4-100% of positions. An explicit ``dtype`` (the parity tests pin
``"float32"``) or ``kv_cache_dtype`` is kept; the reason line names a cache dtype that
differs from ``dtype``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from thinkstream.config import GGUF_MODES
from thinkstream.kernels.attention import load_fq_attention
from thinkstream.kernels.cpu import CpuInfo, detect_cpu
from thinkstream.kernels.gguf import BLOCKS, GGUFKernels, load_gguf_kernels
from thinkstream.loading.gguf import GGUFBlocks


@dataclass(frozen=True)
class Precision:
    """A resolved setting: what the engine builds."""

    dtype: str  # activations and residual stream: "float32" | "bfloat16" | "float16"
    quantization: str | None  # None | "int8" | "int4" | "gguf" | "gguf-q16" | "gguf-q8"
    dense_dtype: str  # gguf mode: the dense copy's dtype (batches above 16 rows); else = dtype
    reason: str  # one line for ``thinkstream info`` and the logs
    kv_cache_dtype: str | None = None  # the KV cache's elements; None: ``dtype``

    @property
    def kv_dtype(self) -> str:
        """The KV cache's dtype name (resolved)."""
        return self.kv_cache_dtype or self.dtype

    def with_kv_cache(self, kv_cache_dtype: str) -> Precision:
        """This setting with the KV cache in ``kv_cache_dtype`` ("auto": ``dtype``); the
        reason line names a cache dtype that differs from ``dtype``."""
        if kv_cache_dtype in ("auto", self.dtype):
            return replace(self, kv_cache_dtype=None)
        return replace(self, kv_cache_dtype=kv_cache_dtype,
                       reason=f"{self.reason}; KV cache {kv_cache_dtype} (as given)")


def choose_precision(
    dtype: str, quantization: str | None, device: str, cpu: CpuInfo, has_blocks: bool,
    kernels_isa: str | None,
) -> Precision:
    """Resolve ``"auto"`` in ``dtype`` / ``quantization``. ``has_blocks``: the checkpoint
    holds GGUF blocks the kernels decode; ``kernels_isa``: the kernel build that loaded on
    this CPU (None: none). Raises ValueError for a GGUF mode (``GGUF_MODES``) where it cannot
    run. ``"auto"`` never picks the int16 / int8 activation modes."""
    on_cpu = device == "cpu"
    if quantization in GGUF_MODES and not (on_cpu and has_blocks and kernels_isa):
        why = ("it runs on CPU only" if not on_cpu else "the checkpoint has no GGUF blocks of a "
               "supported type" if not has_blocks else "the native kernels could not be built "
               "or are disabled (THINKSTREAM_NATIVE=0)")
        raise ValueError(f"quantization={quantization!r} is not available: {why}")
    if quantization == "auto":
        quantization = "gguf" if on_cpu and has_blocks and kernels_isa else None
    bf16 = "bfloat16" if (not on_cpu or cpu.native_bf16) else "float32"
    if dtype != "auto":
        # an explicit dtype is the dense copy's too (parity runs pin float32)
        return Precision(dtype, quantization, dtype, f"dtype {dtype} as given")
    if not on_cpu:
        return Precision("bfloat16", quantization, "bfloat16", f"{device}: bfloat16")
    if quantization == "gguf":
        rows = ("at every batch size (dot products for few rows, a GEMM for many)"
                if kernels_isa != "portable" else "for up to 16 rows, dense float32 above")
        return Precision("float32", "gguf", "float32",
                         f"float32: GGUF-native {kernels_isa} kernels {rows} (exact: same tokens "
                         "at every batch size)")
    if quantization in GGUF_MODES:
        bits = quantization.removeprefix("gguf-q")
        return Precision("float32", quantization, "float32",
                         f"float32: GGUF-native {kernels_isa} kernels with int{bits} activations "
                         "for up to 16 rows (as asked), dense float32 above")
    why = "bfloat16 matmuls in hardware" if cpu.native_bf16 else "no bfloat16 matmuls in hardware"
    return Precision(bf16, quantization, bf16, f"{bf16}: {why}")


def choose_kv_cache(choice: Precision, kv_cache_dtype: str, dtype: str, cpu: CpuInfo,
                    bf16_attention: bool) -> Precision:
    """``choice`` with its KV cache dtype resolved (``kv_cache_dtype``: "auto", "float32",
    "bfloat16"; ``dtype``: the ``dtype`` asked for; ``bf16_attention``: the fused attention
    kernel's bfloat16 dot-product build loaded on this CPU). Module docstring: the rule."""
    if (kv_cache_dtype == "auto" and dtype == "auto" and choice.dtype == "float32"
            and cpu.native_bf16 and bf16_attention):
        # rounding keys and values to bfloat16 can amplify the GEMM's and the dot products'
        # different summation orders past a near tie: the batch-size claim is float32's
        linears = choice.reason.replace(" (exact: same tokens at every batch size)", "")
        return replace(choice, kv_cache_dtype="bfloat16",
                       reason=f"{linears}; KV cache bfloat16 (auto: bfloat16 dot products "
                              "in attention on this CPU; kv_cache_dtype='float32' keeps it exact)")
    return choice.with_kv_cache(kv_cache_dtype)


def resolve_precision(
    dtype: str, quantization: str | None, device: str, blocks: dict[str, GGUFBlocks],
    kv_cache_dtype: str = "auto",
) -> tuple[Precision, GGUFKernels | None]:
    """``choose_precision`` for this machine and checkpoint (its KV cache in
    ``kv_cache_dtype``), and the kernels it needs (None unless the choice is ``"gguf"``).
    The kernels are built only when they may be used."""
    cpu = detect_cpu()
    usable = {b.qtype for b in blocks.values()} & set(BLOCKS)
    kernels = None
    if device == "cpu" and usable and quantization in ("auto", *GGUF_MODES):
        kernels = load_gguf_kernels(cpu)
    choice = choose_precision(dtype, quantization, device, cpu, bool(usable),
                              kernels.isa if kernels else None)
    attention = load_fq_attention() if device == "cpu" else None
    choice = choose_kv_cache(choice, kv_cache_dtype, dtype, cpu,
                             attention is not None and attention.bf16_dot)
    return choice, kernels if choice.quantization in GGUF_MODES else None


def resolve_device(device: str) -> torch.device:
    """``device`` ("cpu", "cuda", "cuda:N") as a torch device this process can run on, checked
    before any weight loads: anything else, or CUDA where this torch has none (a CPU wheel,
    no GPU), is a ``ValueError`` naming it (the CLI exits 2 with it), not a torch error from
    deep inside the model build."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device {device!r}: not a device (cpu, cuda or cuda:N)") from None
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device {device!r}: thinkstream runs on cpu or cuda")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r}: CUDA is not available to this torch "
                         f"({torch.__version__}); use cpu")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(f"device {device!r}: this machine has {torch.cuda.device_count()} "
                         "CUDA device(s)")
    return dev


def fused_attention_available(device: torch.device) -> bool:
    """The fused few-query attention kernel (``kernels/attention.py``) runs for ``device``."""
    return device.type == "cpu" and load_fq_attention() is not None
