"""The paged model against a dense reference: every architecture, chunked prefill, decode,
and explicit positions that differ from slot order."""

from __future__ import annotations

import pytest
import torch
from helpers.tiny import random_tensors, reference_logits, tiny_config

from thinkstream.attention.metadata import (
    AttentionConfig,
    Precision,
    SeqSlice,
    allocate_kv_caches,
    build_attention_metadata,
)
from thinkstream.models.registry import build_model

ARCHS = ["llama", "llama3", "qwen2", "qwen3", "gemma3"]
BS = 4


def _run(model, cfg, caches, steps, config: AttentionConfig | None = None):
    """steps: list of lists of (table, computed, ids, positions); returns logits per step."""
    outs = []
    for step in steps:
        ids, pos, slices = [], [], []
        for table, computed, toks, p in step:
            ids += toks
            pos += p
            slices.append(SeqSlice(table, computed, len(toks)))
        meta = build_attention_metadata(slices, BS, caches, cfg.sliding_window, config=config)
        with torch.inference_mode():
            h = model(torch.tensor(ids), torch.tensor(pos), meta)
            outs.append(model.compute_logits(h))
    return outs


@pytest.mark.parametrize("arch", ARCHS)
def test_prefill_then_decode_matches_reference(arch: str) -> None:
    cfg = tiny_config(arch)
    t = random_tensors(cfg, seed=1)
    model = build_model(cfg, t)
    caches = allocate_kv_caches(cfg.num_layers, 16 * BS, cfg.num_kv_heads, cfg.head_dim, torch.float32, "cpu")
    ids = [5, 17, 99, 3, 250, 7, 7, 42, 11, 300, 1, 64, 128]  # 13 tokens: crosses sliding window 8
    ref = reference_logits(cfg, t, ids)
    table = [9, 2, 14, 5]  # scattered physical blocks
    # chunked prefill: 6 tokens, then 5, then two decodes
    outs = _run(model, cfg, caches, [
        [(table, 0, ids[:6], list(range(6)))],
        [(table, 6, ids[6:11], list(range(6, 11)))],
        [(table, 11, ids[11:12], [11])],
        [(table, 12, ids[12:13], [12])],
    ])
    got = torch.cat(outs)
    assert torch.allclose(got, ref, atol=1e-4, rtol=1e-4), (got - ref).abs().max()


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_mixed_batch_equals_alone(arch: str) -> None:
    """Two sequences in one step (one prefilling, one decoding) give each one's reference."""
    cfg = tiny_config(arch)
    t = random_tensors(cfg, seed=2)
    model = build_model(cfg, t)
    caches = allocate_kv_caches(cfg.num_layers, 16 * BS, cfg.num_kv_heads, cfg.head_dim, torch.float32, "cpu")
    a = [3, 4, 5, 6, 7, 8, 9, 10, 11, 12]
    b = [100, 101, 102, 103, 104]
    _run(model, cfg, caches, [[([0, 1], 0, b[:4], [0, 1, 2, 3])]])
    (out,) = _run(model, cfg, caches, [[([2, 3, 4], 0, a, list(range(10))), ([0, 1], 4, b[4:], [4])]])
    assert torch.allclose(out[:10], reference_logits(cfg, t, a), atol=1e-4)
    assert torch.allclose(out[10], reference_logits(cfg, t, b)[-1], atol=1e-4)


def test_positions_are_explicit() -> None:
    """Positions decide RoPE, not slot order: a sequence placed at positions 100.. matches the
    reference run at those positions and differs from positions 0.."""
    cfg = tiny_config("llama")
    t = random_tensors(cfg, seed=3)
    model = build_model(cfg, t)
    caches = allocate_kv_caches(cfg.num_layers, 8 * BS, cfg.num_kv_heads, cfg.head_dim, torch.float32, "cpu")
    ids = [10, 20, 30, 40, 50]
    pos = [100, 101, 102, 110, 111]
    (out,) = _run(model, cfg, caches, [[([1, 0], 0, ids, pos)]])
    assert torch.allclose(out, reference_logits(cfg, t, ids, pos), atol=1e-4)
    assert not torch.allclose(out, reference_logits(cfg, t, ids), atol=1e-3)


def test_bfloat16_close_to_float32() -> None:
    cfg = tiny_config("llama")
    t = random_tensors(cfg, seed=4)
    model = build_model(cfg, t, dtype=torch.bfloat16)
    caches = allocate_kv_caches(cfg.num_layers, 8 * BS, cfg.num_kv_heads, cfg.head_dim, torch.bfloat16, "cpu")
    ids = [1, 2, 3, 4, 5, 6]
    (out,) = _run(model, cfg, caches, [[([0, 1], 0, ids, list(range(6)))]])
    ref = reference_logits(cfg, t, ids)
    assert out.dtype == torch.float32
    top = ref.topk(4, dim=-1).indices  # the fast head refines the leading logits in float32
    assert (out.gather(1, top) - ref.gather(1, top)).abs().max() < 0.02 * ref.abs().max()
    assert torch.equal(out.argmax(-1), ref.argmax(-1))


@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_prefix_segment_view(arch: str) -> None:
    """A sequence that sees another's first k cached tokens as a prefix segment (a view, no
    copy) computes what the reference computes on the concatenation; decode and chunk paths."""
    cfg = tiny_config(arch)
    t = random_tensors(cfg, seed=6)
    model = build_model(cfg, t)
    caches = allocate_kv_caches(cfg.num_layers, 16 * BS, cfg.num_kv_heads, cfg.head_dim, torch.float32, "cpu")
    source = [11, 22, 33, 44, 55, 66, 77]
    _run(model, cfg, caches, [[([0, 1], 0, source, list(range(7)))]])
    k = 5  # the view covers 5 of the source's 7 tokens
    own = [90, 91, 92, 93]
    ref = reference_logits(cfg, t, source[:k] + own)[k:]
    meta_steps = [
        [SeqSlice([4, 5], 0, 3, prefix=(([0, 1], k),))],  # chunk with a prefix
        [SeqSlice([4, 5], 3, 1, prefix=(([0, 1], k),))],  # decode with a prefix
    ]
    ids_steps = [own[:3], own[3:]]
    pos_steps = [[5, 6, 7], [8]]
    outs = []
    for slices, ids, pos in zip(meta_steps, ids_steps, pos_steps, strict=True):
        meta = build_attention_metadata(slices, BS, caches, cfg.sliding_window)
        with torch.inference_mode():
            outs.append(model.compute_logits(model(torch.tensor(ids), torch.tensor(pos), meta)))
    assert torch.allclose(torch.cat(outs), ref, atol=1e-4)


def test_cascade_decode_over_shared_prefix() -> None:
    """Decoding several sequences that share a long prefix (shared blocks) reads the prefix
    once (cascade) and matches each sequence's dense reference."""
    cfg = tiny_config("llama")
    t = random_tensors(cfg, seed=8)
    model = build_model(cfg, t)
    caches = allocate_kv_caches(cfg.num_layers, 64 * BS, cfg.num_kv_heads, cfg.head_dim, torch.float32, "cpu")
    prefix = [(i * 7) % 300 + 3 for i in range(20)]  # 5 full blocks, shared below
    shared_blocks = [10, 11, 12, 13, 14]
    _run(model, cfg, caches, [[(shared_blocks, 0, prefix, list(range(20)))]])
    tails = [[40, 41], [50], [60, 61, 62]]
    tables = [shared_blocks + [20 + 2 * i, 21 + 2 * i] for i in range(3)]
    for table, tail in zip(tables, tails, strict=True):  # each sequence's own tokens but the last
        if len(tail) > 1:
            _run(model, cfg, caches, [[(table, 20, tail[:-1], list(range(20, 20 + len(tail) - 1)))]])
    slices = [SeqSlice(tb, 20 + len(tl) - 1, 1) for tb, tl in zip(tables, tails, strict=True)]
    assert build_attention_metadata(slices, BS, caches).groups[0].shared == 0  # 20 < 64
    meta = build_attention_metadata(slices, BS, caches, config=AttentionConfig(cascade_min_shared=8))
    assert meta.groups[0].shared == 20
    with torch.inference_mode():
        h = model(torch.tensor([tl[-1] for tl in tails]),
                  torch.tensor([20 + len(tl) - 1 for tl in tails]), meta)
        out = model.compute_logits(h)
    for i, tail in enumerate(tails):
        assert torch.allclose(out[i], reference_logits(cfg, t, prefix + tail)[-1], atol=1e-4)


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.bfloat16, 3e-2)])
def test_short_chunk_matches_flash_kernel(dtype: torch.dtype, tol: float) -> None:
    """The grouped-matmul path for a short chunk over cached context equals the SDPA kernel
    with the same mask (causal tail, hidden prefix keys, a sliding window)."""
    import torch.nn.functional as F

    from thinkstream.attention.few_query import short_chunk
    from thinkstream.attention.metadata import open_columns

    g = torch.Generator().manual_seed(0)
    n, h, kvh, d, length = 7, 6, 2, 16, 50
    q = torch.randn(n, h, d, generator=g).to(dtype)
    k_cache = torch.randn(80, kvh, d, generator=g).to(dtype)
    v_cache = torch.randn(80, kvh, d, generator=g).to(dtype)
    slots = torch.randperm(80, generator=g)[:length]
    key = torch.arange(length)[None, :]
    qc = torch.arange(length - n, length)[:, None]
    mask = (key <= qc) & (key > qc - 40) & ~((key >= 5) & (key < 9 + torch.arange(n)[:, None]))
    assert open_columns(mask) == 0  # the window hides key 0 from the last queries
    got = short_chunk(q, k_cache, v_cache, slots, None, mask, 0, 0.25)
    runs = ((3, 20), (40, 30))  # the same keys as views of two runs of slots
    slots2 = torch.cat([torch.arange(3, 23), torch.arange(40, 70)])
    got2 = short_chunk(q, k_cache, v_cache, slots2, runs, mask, 0, 0.25)
    causal = key <= qc  # no window, no hidden keys: the first 43 columns are open
    assert open_columns(causal) == length - n + 1
    got3 = short_chunk(q, k_cache, v_cache, slots, None, causal, open_columns(causal), 0.25)
    assert torch.equal(got3, short_chunk(q, k_cache, v_cache, slots, None, causal, 0, 0.25))
    kg = k_cache[slots].transpose(0, 1)[None]
    vg = v_cache[slots].transpose(0, 1)[None]
    ref = F.scaled_dot_product_attention(q.transpose(0, 1)[None].float(), kg.float(), vg.float(),
                                         attn_mask=mask, scale=0.25, enable_gqa=True)[0].transpose(0, 1)
    assert got.dtype == dtype and got.shape == (n, h, d)
    assert torch.allclose(got.float(), ref, atol=tol, rtol=tol), (got.float() - ref).abs().max()
    kg2 = k_cache[slots2].transpose(0, 1)[None].float()
    vg2 = v_cache[slots2].transpose(0, 1)[None].float()
    ref2 = F.scaled_dot_product_attention(q.transpose(0, 1)[None].float(), kg2, vg2,
                                          attn_mask=mask, scale=0.25, enable_gqa=True)[0].transpose(0, 1)
    assert torch.allclose(got2.float(), ref2, atol=tol, rtol=tol), (got2.float() - ref2).abs().max()


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_short_chunks_of_several_sequences_batched(arch: str) -> None:
    """Short chunks of three sequences in one step (one ``ShortBatch`` group, padded queries
    and keys) next to a decode row give the flash kernel's result. The precision setting,
    not the KV dtype, picks the path: "auto" keeps the flash kernel in float32 (the parity
    mode's summation order)."""
    cfg = tiny_config(arch)
    t = random_tensors(cfg, seed=4)
    model = build_model(cfg, t)
    seqs = [[(7 * i + 3 * j) % 300 + 2 for i in range(n)] for j, n in enumerate((13, 6, 10, 5))]
    tables = [[0, 1, 2, 3], [4, 5], [6, 7, 8], [9, 10]]
    first = [9, 4, 3, 4]  # computed before the step; then 4, 2, 7 and 1 new tokens
    slices = [SeqSlice(tb, f, len(s) - f) for tb, s, f in zip(tables, seqs, first, strict=True)]
    step = [(tb, f, s[f:], list(range(f, len(s)))) for tb, s, f in zip(tables, seqs, first, strict=True)]
    f32 = allocate_kv_caches(cfg.num_layers, 40 * BS, cfg.num_kv_heads, cfg.head_dim, torch.float32, "cpu")
    caches = allocate_kv_caches(cfg.num_layers, 40 * BS, cfg.num_kv_heads, cfg.head_dim, torch.bfloat16, "cpu")

    def kinds(kv, config: AttentionConfig) -> list[str]:
        groups = build_attention_metadata(slices, BS, kv, cfg.sliding_window, config=config).groups
        return sorted(type(g).__name__ for g in groups)

    mixed, parity = AttentionConfig(Precision.MIXED), AttentionConfig(Precision.PARITY)
    assert kinds(f32, AttentionConfig.for_engine("auto", torch.float32)) \
        == ["Decode", "Prefill", "Prefill", "Prefill"]
    assert kinds(caches, AttentionConfig.for_engine("auto", torch.bfloat16)) == ["Decode", "ShortBatch"]
    assert kinds(f32, mixed) == ["Decode", "ShortBatch"]  # the setting decides, not the dtype
    _run(model, cfg, caches, [[(tb, 0, s[:f], list(range(f))) for tb, s, f in zip(tables, seqs, first, strict=True)]])
    saved = [(k.clone(), v.clone()) for k, v in caches]
    (got,) = _run(model, cfg, caches, [step], mixed)
    for (k, v), (k0, v0) in zip(caches, saved, strict=True):
        k.copy_(k0)
        v.copy_(v0)
    (want,) = _run(model, cfg, caches, [step], parity)  # every chunk on the flash kernel
    assert torch.allclose(got, want, atol=1e-4), (got - want).abs().max()


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_building_a_model_draws_no_normal_init(arch: str, monkeypatch) -> None:
    """Weights are assigned, not drawn: ``normal_`` on the meta device (a default
    ``nn.Embedding``'s init) imports torch._dynamo, ~2 s of every CLI start (7.3 s against
    5.8 s for ``thinkstream run``)."""
    def refuse(*args, **kwargs):
        raise AssertionError("a weight was initialized")

    monkeypatch.setattr(torch.nn.init, "normal_", refuse)
    cfg = tiny_config(arch)
    model = build_model(cfg, random_tensors(cfg))
    assert model.embed.weight.shape == (cfg.vocab_size, cfg.hidden_size)
