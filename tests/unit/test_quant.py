"""Weight-only int8 / int4 linears: exact round trips where the format allows, close
outputs to the float layer, and the dense path for large batches."""

from __future__ import annotations

import pytest
import torch
from helpers.tiny import random_tensors, reference_logits, tiny_config

from thinkstream.attention.metadata import SeqSlice, allocate_kv_caches, build_attention_metadata
from thinkstream.models.quant import QuantLinear, dequantize_int4, quantize_int4, quantize_int8
from thinkstream.models.registry import build_model


def test_int4_recovers_q4_1_blocks_exactly() -> None:
    """Weights of GGUF Q4_1 form (d * q + m per 32 values, q spanning 0..15) come back exactly."""
    g = torch.Generator().manual_seed(0)
    q = torch.randint(0, 16, (8, 64), generator=g)
    q[:, 0], q[:, 32], q[:, 1], q[:, 33] = 0, 0, 15, 15  # each group spans the full range
    d = torch.rand(8, 2, generator=g) * 0.1 + 0.01
    m = torch.randn(8, 2, generator=g) * 0.1
    w = (q.view(8, 2, 32) * d[..., None] + m[..., None]).view(8, 64)
    qq, sz = quantize_int4(w)
    assert torch.equal(qq, q.to(torch.int32))
    assert torch.allclose(dequantize_int4(qq, sz), w, atol=1e-6)


def test_int8_round_trip_error_bounded() -> None:
    w = torch.randn(16, 32)
    q, scale = quantize_int8(w)
    assert q.dtype == torch.int8 and q.abs().max() <= 127
    assert ((q.float() * scale[:, None]) - w).abs().max() <= scale.max() / 2 + 1e-6


def test_quant_linear_matches_dequantized_reference() -> None:
    torch.manual_seed(0)
    w, b = torch.randn(64, 96), torch.randn(64)
    x = torch.randn(3, 96)
    for kind in ("int8", "int4"):
        lin = QuantLinear(w, b, kind, keep_dense=False)
        if kind == "int8":
            q, s = quantize_int8(w)
            ref_w = q.float() * s.bfloat16().float()[:, None]
        else:
            q, sz = quantize_int4(w)
            ref_w = dequantize_int4(q, sz.bfloat16().float())
        ref = x.bfloat16().float() @ ref_w.t() + b
        assert (lin(x) - ref).abs().max() < 0.05 * ref.abs().max(), kind


def test_dense_path_for_large_batches() -> None:
    w = torch.randn(32, 64)
    lin = QuantLinear(w, None, "int4", dense_min_rows=4)
    x = torch.randn(4, 64)
    assert torch.allclose(lin(x), x @ w.t(), atol=1e-5)  # dense float32 path: exact
    assert not torch.allclose(lin(x[:3]), x[:3] @ w.t(), atol=1e-5)  # int4 path


def test_quantized_model_close_to_float() -> None:
    cfg = tiny_config("llama", hidden_size=64, intermediate_size=128)
    t = random_tensors(cfg, seed=5)
    ids = [3, 9, 27, 81, 243, 100]
    ref = reference_logits(cfg, t, ids)[-1]
    for kind in ("int8", "int4"):
        model = build_model(cfg, t, dtype=torch.bfloat16, quantization=kind)
        caches = allocate_kv_caches(cfg.num_layers, 32, cfg.num_kv_heads, cfg.head_dim, torch.bfloat16, "cpu")
        with torch.inference_mode():
            # one token at a time: every linear runs on the quantized path (rows < 8)
            for i, tok in enumerate(ids):
                meta = build_attention_metadata([SeqSlice([0, 1], i, 1)], 16, caches)
                h = model(torch.tensor([tok]), torch.tensor([i]), meta)
            out = model.compute_logits(h)[0]
        top = ref.topk(4).indices  # the head refines its leading logits exactly
        rel = (out[top] - ref[top]).abs().max() / ref.abs().max()
        assert rel < (0.03 if kind == "int8" else 0.15), (kind, rel)
        assert int(out.argmax()) == int(ref.argmax()), kind


def test_fast_lm_head_refines_top_logits_exactly() -> None:
    from thinkstream.models.head import LMHead

    g = torch.Generator().manual_seed(1)
    w = torch.randn(512, 64, generator=g) * 0.3
    exact = LMHead(w)
    fast = LMHead(w, fast=True, refine=8, int4_max_rows=2)
    for rows in (1, 2, 5):  # int4 pass, int4 pass, bfloat16 pass
        x = torch.randn(rows, 64, generator=g)
        ref, got = exact(x), fast(x)
        assert torch.equal(ref, x @ w.t())
        top = ref.topk(2, dim=-1).indices  # the leading tokens come out exact
        assert torch.allclose(got.gather(1, top), ref.gather(1, top), atol=1e-5)
        assert torch.equal(got.argmax(-1), ref.argmax(-1))
        assert (got - ref).abs().max() > 1e-4  # the tail is approximate


@pytest.mark.parametrize("vocab", [33, 12])
def test_fast_lm_head_takes_any_vocabulary_size(vocab: int) -> None:
    """torch packs int4 only for N divisible by 16 and ``refine`` may exceed a tiny vocab:
    a bfloat16 HF directory whose vocabulary is no multiple of 16 (a 32,001-token Llama
    fine-tune; 14 tokens tried) failed to load under ``dtype="auto"``
    (``_convert_weight_to_int4pack_cpu : expect N to be dividable by 16``). Such a head
    takes its bfloat16 approximation at every row count, refined exactly as before."""
    from thinkstream.models.head import LMHead

    g = torch.Generator().manual_seed(2)
    w = torch.randn(vocab, 64, generator=g) * 0.3
    fast = LMHead(w, fast=True, refine=16)
    assert not fast.int4
    x = torch.randn(3, 64, generator=g)
    ref = x @ w.t()
    got = fast(x)
    top = ref.topk(2, dim=-1).indices
    assert torch.allclose(got.gather(1, top), ref.gather(1, top), atol=1e-5)
    assert torch.equal(got.argmax(-1), ref.argmax(-1))
    with pytest.raises(ValueError, match="out_features by 16"):
        QuantLinear(w, None, "int4")
