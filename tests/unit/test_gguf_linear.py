"""GGUF-native linears in a model (``models/gguf_linear.py``) and ``dtype="auto"``
(``models/precision.py``): a tiny model whose weights are GGUF blocks gives the logits of
its dequantized float32 twin, fused projections may mix block types, and the automatic
choice on mocked CPUs."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as Q
from gguf.quants import dequantize, quantize
from helpers.tiny import tiny_checkpoint

from thinkstream import LLM, SamplingParams
from thinkstream.kernels.cpu import CpuInfo
from thinkstream.kernels.gguf import ACT_F32, ACT_I8, ACT_I16, _load, load_gguf_kernels
from thinkstream.loading.gguf import GGUFBlocks
from thinkstream.models.gguf_linear import ALL_ROWS, MAX_ROWS, GGUFLinear, kernel_rows
from thinkstream.models.precision import choose_kv_cache, choose_precision

KERNELS = load_gguf_kernels()
needs_kernels = pytest.mark.skipif(KERNELS is None, reason="the native kernels cannot be built here")
# per canonical weight suffix: a type, mixed on purpose (v differs from q and k)
TYPES = {"q_proj": Q.Q4_1, "k_proj": Q.Q4_0, "v_proj": Q.Q8_0, "o_proj": Q.Q5_0,
         "gate_proj": Q.Q5_1, "up_proj": Q.Q4_1, "down_proj": Q.Q8_0, "embed": Q.Q8_0}


def _as_blocks(w: torch.Tensor, qtype: Q) -> tuple[torch.Tensor, GGUFBlocks]:
    """A float weight quantized with gguf's reference quantizer: (dequantized, blocks)."""
    raw = quantize(w.numpy().astype(np.float32), qtype)
    deq = torch.from_numpy(dequantize(raw, qtype).astype(np.float32).reshape(w.shape))
    return deq, GGUFBlocks(int(qtype), torch.from_numpy(raw.copy()), w.shape[1])


@pytest.fixture(scope="module")
def gguf_ckpt():
    """The tiny llama checkpoint with its matrices and (tied) head as GGUF blocks; its float
    tensors are the blocks dequantized, so the dense model is the exact twin."""
    ckpt = tiny_checkpoint()
    tensors, blocks = dict(ckpt.tensors), {}
    for name, w in ckpt.tensors.items():
        kind = name.split(".")[-2]
        if w.dim() == 2 and kind in TYPES:
            tensors[name], blocks[name] = _as_blocks(w, TYPES[kind])
    return dataclasses.replace(ckpt, tensors=tensors, blocks=blocks)


@needs_kernels
def test_mixed_parts_and_dense_path() -> None:
    g = torch.Generator().manual_seed(0)
    w1, w2 = torch.randn(48, 64, generator=g), torch.randn(16, 64, generator=g)
    (d1, b1), (d2, b2) = _as_blocks(w1, Q.Q5_0), _as_blocks(w2, Q.Q8_0)
    dense = torch.cat([d1, d2])
    lin = GGUFLinear([b1, b2], KERNELS, dense, bias=torch.randn(64, generator=g))
    for rows in (1, 3, 8, 9, 20):  # the kernel: dot products, then the GEMM (or dense above 16)
        x = torch.randn(2, rows, 64, generator=g)
        want = x @ dense.t() + lin.bias
        lin.act = ACT_F32
        assert torch.allclose(lin(x), want, atol=1e-4), rows
        lin.act = ACT_I16  # one row: int16 activations (~1e-5 of |x| |w|)
        assert torch.allclose(lin(x), want, atol=2e-3), rows
    lean = GGUFLinear([b1, b2], KERNELS, None)  # no dense copy: every batch on the kernel
    x = torch.randn(20, 64, generator=g)
    assert torch.allclose(lean(x), x @ dense.t(), atol=1e-4)


@needs_kernels
def test_kernel_rows_and_dense_copy_follow_the_build() -> None:
    """With the GEMM (AVX2 / AVX-512) and float32 (or int16) activations the kernel takes
    every row count and no dense float32 copy is kept; the portable build, int8 activations
    and a bfloat16 copy keep the copy above MAX_ROWS rows."""
    portable = _load("portable")
    assert portable is not None and not portable.gemm
    assert kernel_rows(portable, torch.float32) == MAX_ROWS
    assert kernel_rows(portable, None) == ALL_ROWS  # no copy: the kernel anyway
    if KERNELS.gemm:
        assert kernel_rows(KERNELS, torch.float32) == ALL_ROWS
        assert kernel_rows(KERNELS, torch.float32, ACT_I16) == ALL_ROWS
        assert kernel_rows(KERNELS, torch.float32, ACT_I8) == MAX_ROWS
        assert kernel_rows(KERNELS, torch.bfloat16) == MAX_ROWS
    w = torch.randn(32, 64, generator=torch.Generator().manual_seed(1))
    deq, blocks = _as_blocks(w, Q.Q4_1)
    lin = GGUFLinear([blocks], portable, deq)
    assert lin.max_rows == MAX_ROWS
    x = torch.randn(40, 64)  # dense above 16 rows: the float32 product of the copy
    assert torch.equal(lin(x), torch.nn.functional.linear(x, deq))


@needs_kernels
def test_tiny_model_on_blocks_equals_its_float32_twin(gguf_ckpt) -> None:
    """Decode (kernel) and a long prompt (dense) both: greedy tokens identical, log-probs of
    the chosen tokens within 1e-4."""
    params = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True, logprobs=0)
    prompts = [[5, 9, 14, 3], list(range(3, 40))]
    outs = {}
    for quant in (None, "gguf"):
        llm = LLM(checkpoint=gguf_ckpt, dtype="float32", quantization=quant, block_size=4,
                  num_blocks=64, max_num_seqs=4)
        assert llm.engine.precision.quantization == quant
        if quant:
            linears = [m for m in llm.engine.model.modules() if isinstance(m, GGUFLinear)]
            assert len(linears) == 2 * 4 + 1  # 4 per layer + the tied head
            # with the GEMM: no dense copies, the kernel at every batch (the 37-token prompt too)
            layers = [m for m in llm.engine.model.layers.modules() if isinstance(m, GGUFLinear)]
            assert all((m.dense is None) == KERNELS.gemm for m in layers)
        outs[quant] = llm.generate(prompts, params)
        assert llm.engine.check_integrity() is None
    for a, b in zip(outs[None], outs["gguf"], strict=True):
        assert a.outputs[0].token_ids == b.outputs[0].token_ids
        la = [next(iter(p.values())).logprob for p in a.outputs[0].logprobs]
        lb = [next(iter(p.values())).logprob for p in b.outputs[0].logprobs]
        assert np.allclose(la, lb, atol=1e-4)


@needs_kernels
@pytest.mark.parametrize(("mode", "tol"), [("gguf-q16", 2e-3), ("gguf-q8", 0.15)])
def test_int_activation_modes_are_opt_in_and_close(gguf_ckpt, mode: str, tol: float) -> None:
    """``quantization="gguf-q16"`` / ``"gguf-q8"``: every GGUF linear (and the head) runs its
    kernel rows with int16 / int8 activations; the first token's log-probs stay within
    ``tol`` of the exact GGUF model's (int8: llama.cpp's coarser rounding)."""
    from thinkstream.kernels.gguf import ACT_OF_MODE

    params = SamplingParams(temperature=0, max_tokens=1, logprobs=5)
    prompt = [[5, 9, 14, 3]]
    exact = LLM(checkpoint=gguf_ckpt, dtype="float32", quantization="gguf", block_size=4,
                num_blocks=64, max_num_seqs=4)
    fast = LLM(checkpoint=gguf_ckpt, dtype="auto", quantization=mode, block_size=4,
               num_blocks=64, max_num_seqs=4)
    assert (fast.engine.precision.quantization, fast.engine.precision.dtype) == (mode, "float32")
    linears = [m for m in fast.engine.model.modules() if isinstance(m, GGUFLinear)]
    assert len(linears) == 9 and {m.act for m in linears} == {ACT_OF_MODE[mode]}
    want = exact.generate(prompt, params)[0].outputs[0].logprobs[0]
    got = fast.generate(prompt, params)[0].outputs[0].logprobs[0]
    top = max(want, key=lambda t: want[t].logprob)
    assert top in got and abs(got[top].logprob - want[top].logprob) < tol
    assert fast.engine.check_integrity() is None


@needs_kernels
@pytest.mark.parametrize("mode", ["gguf-q16", "gguf-q8"])
def test_the_native_decoder_stack_computes_with_the_modes_activations(gguf_ckpt, mode: str) -> None:
    """The stack (``models/fused_decode.py``) calls the mode's kernel entry: one sequence's
    decode with it gives the eager GGUF linears' tokens and log-probs (same int rounding)."""
    import ctypes

    from thinkstream.kernels.gguf import ACT_OF_MODE, ENTRY_OF_ACT

    params = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True, logprobs=2)
    outs = []
    for fused in (True, False):
        llm = LLM(checkpoint=gguf_ckpt, dtype="float32", quantization=mode, block_size=4,
                  num_blocks=64, max_num_seqs=1)
        model = llm.engine.model
        assert model.fused is not None
        entry = getattr(KERNELS.lib, ENTRY_OF_ACT[ACT_OF_MODE[mode]])
        assert model.fused._model.matmul == ctypes.cast(entry, ctypes.c_void_p).value
        if not fused:
            model.fused = None
        outs.append(llm.generate([[5, 9, 14, 3]], params)[0].outputs[0])
    assert outs[0].token_ids == outs[1].token_ids
    for a, b in zip(outs[0].logprobs, outs[1].logprobs, strict=True):
        assert a.keys() == b.keys() and max(abs(a[t].logprob - b[t].logprob) for t in a) < 1e-3


def test_quantization_names_are_checked() -> None:
    from thinkstream.config import EngineConfig

    with pytest.raises(ValueError, match="gguf, gguf-q16, gguf-q8"):
        EngineConfig(quantization="gguf-q4")
    p = choose_precision("auto", "gguf-q8", "cpu", ZEN4, True, "avx512")
    assert (p.dtype, p.quantization, p.dense_dtype) == ("float32", "gguf-q8", "float32")
    with pytest.raises(ValueError, match="'gguf-q16' is not available"):
        choose_precision("auto", "gguf-q16", "cpu", ZEN4, False, "avx512")


@needs_kernels
def test_the_compile_operator_equals_the_eager_kernel() -> None:
    """``thinkstream::gguf_matmul`` (what torch.compile traces in ``compile_decode``) gives
    the eager path's result, and its fake tensor the right shape."""
    from thinkstream.models.gguf_linear import gguf_matmul_op

    g = torch.Generator().manual_seed(1)
    _, b = _as_blocks(torch.randn(24, 64, generator=g), Q.Q4_1)
    x = torch.randn(3, 64, generator=g)
    for act in (ACT_I16, 8):
        assert torch.equal(gguf_matmul_op(x[:1], b.blocks, b.qtype, 64, act),
                           KERNELS.matmul(b.qtype, b.blocks, 64, x[:1], act=act))
    assert torch.equal(gguf_matmul_op(x, b.blocks, b.qtype, 64, ACT_F32), KERNELS.matmul(b.qtype, b.blocks, 64, x))
    with torch._subclasses.fake_tensor.FakeTensorMode() as mode:
        fake = gguf_matmul_op(mode.from_tensor(x), mode.from_tensor(b.blocks), b.qtype, 64, ACT_F32)
    assert fake.shape == (3, 24)


def test_gguf_without_blocks_is_refused() -> None:
    with pytest.raises(ValueError, match="no GGUF blocks"):
        LLM(checkpoint=tiny_checkpoint(), dtype="float32", quantization="gguf")


def cpu(*flags: str) -> CpuInfo:
    return CpuInfo("mock", "x86_64", frozenset({"avx2", "fma", "f16c", *flags}))


AVX2 = cpu()
ZEN4 = cpu("avx512f", "avx512bw", "avx512vl", "avx512_bf16")
SPR = cpu("avx512f", "avx512bw", "avx512vl", "avx512_bf16", "amx_bf16", "amx_int8")
AVX512_NO_BF16 = cpu("avx512f", "avx512bw", "avx512vl")


@pytest.mark.parametrize("info", [AVX2, AVX512_NO_BF16, ZEN4, SPR])
def test_auto_with_gguf_blocks(info: CpuInfo) -> None:
    """GGUF kernels and float32 on every CPU class (bfloat16 dense copies flip near-tied
    greedy choices and would make tokens depend on the batch size)."""
    p = choose_precision("auto", "auto", "cpu", info, True, "avx2")
    assert (p.dtype, p.quantization, p.dense_dtype) == ("float32", "gguf", "float32")


@pytest.mark.parametrize(("info", "dtype"), [(AVX2, "float32"), (AVX512_NO_BF16, "float32"),
                                             (ZEN4, "bfloat16"), (SPR, "bfloat16")])
def test_auto_without_blocks_or_kernels(info: CpuInfo, dtype: str) -> None:
    for has_blocks, isa in ((False, "avx2"), (True, None)):
        p = choose_precision("auto", "auto", "cpu", info, has_blocks, isa)
        assert (p.dtype, p.quantization, p.dense_dtype) == (dtype, None, dtype)


@pytest.mark.parametrize(("info", "dot", "cache"), [
    (AVX2, False, None), (AVX512_NO_BF16, False, None), (ZEN4, True, "bfloat16"),
    (SPR, True, "bfloat16"), (ZEN4, False, None)])
def test_auto_kv_cache_on_each_cpu_class(info: CpuInfo, dot: bool, cache: str | None) -> None:
    """``kv_cache_dtype="auto"`` under the float32 GGUF choice: bfloat16 where the CPU has
    bfloat16 dot products and the attention kernel's bfloat16 build loaded (``dot``), else
    the model's float32; an explicit dtype or cache dtype is kept."""
    p = choose_kv_cache(choose_precision("auto", "auto", "cpu", info, True, "avx2"), "auto",
                        "auto", info, dot)
    assert (p.dtype, p.kv_cache_dtype, p.kv_dtype) == ("float32", cache, cache or "float32")
    assert ("KV cache bfloat16 (auto" in p.reason) == (cache is not None)
    assert ("exact: same tokens at every batch size" in p.reason) == (cache is None)
    pinned = choose_precision("float32", "auto", "cpu", info, True, "avx2")
    assert choose_kv_cache(pinned, "auto", "float32", info, dot).kv_dtype == "float32"
    assert choose_kv_cache(p, "float32", "auto", info, dot).kv_dtype == "float32"
    dense = choose_precision("auto", "auto", "cpu", info, False, "avx2")  # bfloat16 on ZEN4 / SPR
    assert choose_kv_cache(dense, "auto", "auto", info, dot).kv_cache_dtype is None


def test_auto_on_cuda_and_explicit_settings() -> None:
    p = choose_precision("auto", "auto", "cuda", AVX2, True, "avx2")
    assert (p.dtype, p.quantization) == ("bfloat16", None)
    p = choose_precision("float32", "auto", "cpu", SPR, True, "avx512")
    assert (p.dtype, p.quantization, p.dense_dtype) == ("float32", "gguf", "float32")
    p = choose_precision("auto", "int4", "cpu", AVX2, True, "avx2")
    assert (p.dtype, p.quantization) == ("float32", "int4")
    p = choose_precision("bfloat16", None, "cpu", AVX2, True, "avx2")
    assert (p.dtype, p.quantization) == ("bfloat16", None)
    with pytest.raises(ValueError, match="could not be built"):
        choose_precision("auto", "gguf", "cpu", ZEN4, True, None)
    with pytest.raises(ValueError, match="CPU only"):
        choose_precision("auto", "gguf", "cuda", ZEN4, True, "avx2")
