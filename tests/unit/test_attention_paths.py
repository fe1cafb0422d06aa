"""The attention precision setting: validated, resolved ("auto" from the engine dtype), and
"float32" computing every path in float32 whatever the model dtype."""

from __future__ import annotations

import pytest
import torch
from helpers.tiny import random_tensors, tiny_checkpoint, tiny_config

from thinkstream.attention.metadata import (
    AttentionConfig,
    Decode,
    Precision,
    Prefill,
    SeqSlice,
    ShortBatch,
    ShortChunk,
    allocate_kv_caches,
    build_attention_metadata,
)
from thinkstream.attention.paged import paged_attention
from thinkstream.config import EngineConfig
from thinkstream.llm import LLM
from thinkstream.models.registry import build_model
from thinkstream.sampling_params import SamplingParams
from thinkstream.worker.runner import ModelRunner

H, KVH, D, BS = 6, 2, 16, 4


def test_precision_is_a_validated_setting() -> None:
    assert EngineConfig().attention_precision == "auto"
    with pytest.raises(ValueError, match="attention_precision"):
        EngineConfig(attention_precision="bf16")
    with pytest.raises(ValueError, match="short_chunk"):
        AttentionConfig(short_chunk=-1)
    with pytest.raises(ValueError, match="cascade_min_shared"):
        AttentionConfig(cascade_min_shared=0)
    auto = {dt: AttentionConfig.for_engine("auto", dt).precision
            for dt in (torch.float32, torch.bfloat16, torch.float16)}
    assert auto == {torch.float32: Precision.PARITY, torch.bfloat16: Precision.MIXED,
                    torch.float16: Precision.MIXED}
    for name in ("parity", "mixed", "float32"):
        assert AttentionConfig.for_engine(name, torch.bfloat16).precision is Precision(name)
    assert AttentionConfig(Precision.PARITY, short_chunk=32).short_limit == 0
    assert AttentionConfig(Precision.FLOAT32, short_chunk=32).short_limit == 32


def test_runner_resolves_auto_from_its_dtype() -> None:
    cfg = tiny_config("llama")
    model = build_model(cfg, random_tensors(cfg))
    for dtype, want in ((torch.float32, Precision.PARITY), (torch.bfloat16, Precision.MIXED)):
        assert ModelRunner(model, cfg, 4, BS, dtype, "cpu").attention.precision is want
    chosen = AttentionConfig(Precision.FLOAT32)
    assert ModelRunner(model, cfg, 4, BS, torch.bfloat16, "cpu", attention=chosen).attention is chosen


def _steps() -> list[tuple[list[SeqSlice], type]]:
    """Steps covering every group kind (with short chunks of at most 4 tokens)."""
    tables = [[4 * i + j for j in range(4)] for i in range(8)]
    return [
        ([SeqSlice(tables[0], 0, 6), SeqSlice(tables[1], 5, 7), SeqSlice(tables[2], 6, 3),
          SeqSlice(tables[3], 9, 1)], (Prefill, Prefill, ShortChunk, Decode)),
        ([SeqSlice(tables[4], 7, 4), SeqSlice(tables[5], 3, 2), SeqSlice(tables[6], 10, 1)],
         (ShortBatch, Decode)),
        ([SeqSlice(tables[7][:2] + [t], 9, 1) for t in (28, 29, 30)], (Decode,)),  # cascade
    ]


@pytest.mark.parametrize("window", [None, 5])
def test_float32_precision_computes_in_float32(window: int | None) -> None:
    """bfloat16 inputs with precision "float32" give exactly what a float32 engine computes
    on the same (bfloat16-valued) numbers, rounded once at the end: every path upcasts."""
    g = torch.Generator().manual_seed(0)
    bf = allocate_kv_caches(1, 128, KVH, D, torch.bfloat16, "cpu")
    for k, v in bf:
        k.copy_(torch.randn(k.shape, generator=g))
        v.copy_(torch.randn(v.shape, generator=g))
    f32 = [(k.float(), v.float()) for k, v in bf]
    upcast = AttentionConfig(Precision.FLOAT32, short_chunk=4, cascade_min_shared=4)
    reference = AttentionConfig(Precision.MIXED, short_chunk=4, cascade_min_shared=4)
    for slices, kinds in _steps():
        t = sum(s.num_new for s in slices)
        q, k, v = (torch.randn(t, n, D, generator=g).to(torch.bfloat16) for n in (H, KVH, KVH))
        meta = build_attention_metadata(slices, BS, bf, window, config=upcast)
        ref_meta = build_attention_metadata(slices, BS, f32, window, config=reference)
        assert tuple(type(x) for x in meta.groups) == kinds
        if window is None and kinds == (Decode,):
            assert meta.groups[0].shared == 8  # the cascade path
        got = paged_attention(q, k, v, 0, meta, 0.25, window is not None)
        want = paged_attention(q.float(), k.float(), v.float(), 0, ref_meta, 0.25, window is not None)
        assert got.dtype == torch.bfloat16
        assert torch.equal(got, want.to(torch.bfloat16))



@pytest.mark.parametrize(("dtype", "setting", "want"), [
    ("bfloat16", "parity", Precision.PARITY), ("bfloat16", "auto", Precision.MIXED),
    ("float32", "auto", Precision.PARITY), ("float32", "float32", Precision.FLOAT32),
])
def test_the_engine_hands_its_setting_to_the_runner(dtype: str, setting: str, want) -> None:
    llm = LLM(checkpoint=tiny_checkpoint(), dtype=dtype, attention_precision=setting,
              block_size=4, num_blocks=32)
    assert llm.engine.runner.attention.precision is want
    params = SamplingParams(temperature=0.0, max_tokens=3, ignore_eos=True)
    assert len(llm.generate([[5, 6, 7, 8, 9]], params)[0].outputs[0].token_ids) == 3
