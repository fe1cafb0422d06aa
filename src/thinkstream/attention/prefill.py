"""Path 1: prefill / extend on the flash kernel (``F.scaled_dot_product_attention``).

A prompt from context 0 attends to this step's own keys (nothing gathered; causal, or the
sliding-window mask); a chunk after cached context that is not short (or any chunk in the
parity mode) gathers its context from the cache and runs with an explicit mask. The
kernel tiles queries and keys and accumulates in float32; its summation order is what the
float32 reference comparisons are made against. Keys and values are those of the cache, in
its dtype (``EngineConfig.kv_cache_dtype``), widened to the compute dtype.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from thinkstream.attention.metadata import Prefill
from thinkstream.attention.shift import RopeTable, read_keys


def prefill(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor,
    v_cache: torch.Tensor, g: Prefill, mask: torch.Tensor | None, scale: float,
    dtype: torch.dtype, rope: RopeTable | None = None,
) -> torch.Tensor:
    """The group's queries: q (T, H, D) packed, this step's k / v (T, KVH, D), ``mask`` the
    group's (sliding) mask or None, computed in ``dtype``; ``rope``: the layer's table of
    the step's key shifts (``shift.py``). Returns (Q, H, D) in q's dtype."""
    qg = q[g.start : g.stop].transpose(0, 1)[None].to(dtype)  # (1, H, Q, D)
    if g.key_slots is None:  # a fresh prompt: its own keys, this step's, as the cache
        # holds them (rounded to a narrower cache dtype: the same values a later chunk or
        # a prefix-cache hit reads back)
        kg = k[g.start : g.stop].to(k_cache.dtype).transpose(0, 1)[None].to(dtype)  # (1, KVH, Q, D)
        vg = v[g.start : g.stop].to(v_cache.dtype).transpose(0, 1)[None].to(dtype)
        causal = mask is None
    else:
        kg = read_keys(k_cache, g.key_slots, g.key_shift, rope)
        kg = kg.transpose(0, 1)[None].to(dtype)  # (1, KVH, L, D)
        vg = v_cache.index_select(0, g.key_slots).transpose(0, 1)[None].to(dtype)
        causal = False
    og = F.scaled_dot_product_attention(
        qg, kg, vg, attn_mask=mask, is_causal=causal, scale=scale, enable_gqa=True
    )  # (1, H, Q, D)
    return og[0].transpose(0, 1).to(q.dtype)
