"""Paged attention for one layer: write this step's keys and values into the layer's cache,
then run each group of the step's metadata (``metadata.py``) on its path:

    Prefill     -> prefill.prefill             path 1, SDPA
    Decode      -> few_query.decode            path 2, one query per row
                   cascade.cascade_decode      path 3, when the rows share a prefix
    ShortChunk  -> few_query.short_chunk       path 2, one chunk
    ShortBatch  -> few_query.short_batch       path 2, several chunks padded

Every group writes its own rows of the output; the groups of a step never overlap.
"""

from __future__ import annotations

import torch

from thinkstream.attention.cascade import cascade_decode
from thinkstream.attention.few_query import decode, short_batch, short_chunk
from thinkstream.attention.metadata import AttentionMetadata, Decode, Prefill, ShortChunk
from thinkstream.attention.prefill import prefill


def paged_attention(
    q: torch.Tensor,  # (T, H, D)
    k: torch.Tensor,  # (T, KVH, D)
    v: torch.Tensor,  # (T, KVH, D)
    layer: int,
    meta: AttentionMetadata,
    scale: float,
    sliding: bool,
) -> torch.Tensor:
    """Store this step's k/v in the layer's cache, then attend each query to its context.
    ``sliding``: this layer uses the sliding-window masks. Returns (T, H, D)."""
    k_cache, v_cache = meta.kv_caches[layer]
    k_cache.index_copy_(0, meta.slot_mapping, k.to(k_cache.dtype))
    v_cache.index_copy_(0, meta.slot_mapping, v.to(v_cache.dtype))
    groups = meta.groups
    if len(groups) == 1 and isinstance(groups[0], Decode):  # a pure decode step: every row
        return _decode(q, k_cache, v_cache, groups[0], scale, sliding, meta)
    out = torch.empty_like(q)
    dtype = meta.config.compute_dtype(q.dtype)
    native = meta.config.native_softmax
    for g in groups:
        mask = g.sliding_mask if sliding and g.sliding_mask is not None else g.mask
        if isinstance(g, Decode):
            out[g.rows] = _decode(q[g.rows], k_cache, v_cache, g, scale, sliding, meta)
        elif isinstance(g, Prefill):
            out[g.start : g.stop] = prefill(q, k, v, k_cache, v_cache, g, mask, scale, dtype,
                                            meta.shift_rope)
        elif isinstance(g, ShortChunk):
            cols = g.open_cols[1 if mask is g.sliding_mask else 0]
            out[g.start : g.stop] = short_chunk(q[g.start : g.stop].to(dtype), k_cache, v_cache,
                                                g.key_slots, g.runs, mask, cols, scale, native,
                                                g.key_shift, meta.shift_rope, meta.config.fused)
        else:  # ShortBatch
            got = short_batch(q.to(dtype), k_cache, v_cache, g.rows, g.key_slots, mask, scale,
                              native, g.key_shift, meta.shift_rope)
            out[g.rows.flatten()[g.take]] = got[g.take].to(q.dtype)
    return out


def _decode(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, g: Decode, scale: float,
    sliding: bool, meta: AttentionMetadata,
) -> torch.Tensor:
    """Path 2's one-query case, or path 3 when the rows share a prefix."""
    if g.shared and not sliding:
        return cascade_decode(q, k_cache, v_cache, g.key_slots, g.mask, g.shared, scale)
    mask = g.sliding_mask if sliding and g.sliding_mask is not None else g.mask
    return decode(q, k_cache, v_cache, g.key_slots, mask, scale, g.key_shift, meta.shift_rope,
                  meta.config.fused)
