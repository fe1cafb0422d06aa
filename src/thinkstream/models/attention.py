"""Paged attention: write new keys/values into the block-paged cache, read a sequence's
context back through its block table.

Slots: the cache of one layer is a flat array of ``num_blocks * block_size`` slots; the
token at context index ``c`` of a sequence lives in slot ``table[c // B] * B + c % B``.
Context index is the order of tokens in the sequence's cache, which is independent of
their RoPE positions (positions are explicit inputs of ``forward``).

The metadata is built once per engine step (not per layer) by ``build_attention_metadata``.
Sequences are split into groups that are padded together: all single-token queries
(decodes) form one group, each longer chunk (prefill) forms its own, so padding never
multiplies a prefill's cost.

For one sequence with ``n`` new tokens after ``k`` computed ones:

    context index: 0 ........ k-1 | k ........ k+n-1
                   | computed      | new (written this step, then attended) |
    query i (context index k+i) sees keys j <= k+i, and j > k+i-window on sliding layers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class SeqSlice:
    """What one sequence contributes to a step: its block table, tokens already in the
    cache, and how many new tokens (packed contiguously in the step's input) follow."""

    block_table: Sequence[int]
    num_computed: int
    num_new: int


@dataclass
class AttnGroup:
    token_index: torch.Tensor  # (N,) packed indices of the valid queries, row-major over (B, Q)
    valid: torch.Tensor  # (N,) flat indices into B*Q of those queries
    batch: int
    max_q: int
    key_slots: torch.Tensor  # (B, L) cache slots to gather (padding points at slot 0)
    mask: torch.Tensor  # (B, 1, Q, L) True = attend
    sliding_mask: torch.Tensor | None


@dataclass
class AttentionMetadata:
    slot_mapping: torch.Tensor  # (T,) slot of each new token
    groups: list[AttnGroup]
    kv_caches: list[tuple[torch.Tensor, torch.Tensor]]  # per layer (slots, kv_heads, head_dim)


def allocate_kv_caches(
    num_layers: int, num_slots: int, num_kv_heads: int, head_dim: int,
    dtype: torch.dtype, device: torch.device | str,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    shape = (num_slots, num_kv_heads, head_dim)
    return [
        (torch.zeros(shape, dtype=dtype, device=device), torch.zeros(shape, dtype=dtype, device=device))
        for _ in range(num_layers)
    ]


def _slots(table: Sequence[int], start: int, stop: int, block_size: int) -> list[int]:
    return [table[c // block_size] * block_size + c % block_size for c in range(start, stop)]


def _build_group(
    seqs: list[tuple[int, SeqSlice]], block_size: int, sliding_window: int | None,
    device: torch.device | str,
) -> AttnGroup:
    batch = len(seqs)
    max_q = max(s.num_new for _, s in seqs)
    max_l = max(s.num_computed + s.num_new for _, s in seqs)
    key_slots = torch.zeros(batch, max_l, dtype=torch.long)
    key_ctx = torch.arange(max_l)
    q_ctx = torch.full((batch, max_q), -1, dtype=torch.long)  # -1 marks padded queries
    token_index: list[int] = []
    valid: list[int] = []
    for b, (offset, s) in enumerate(seqs):
        length = s.num_computed + s.num_new
        key_slots[b, :length] = torch.tensor(_slots(s.block_table, 0, length, block_size))
        q_ctx[b, : s.num_new] = torch.arange(s.num_computed, length)
        token_index.extend(range(offset, offset + s.num_new))
        valid.extend(range(b * max_q, b * max_q + s.num_new))
    qc = q_ctx[:, :, None]  # (B, Q, 1)
    mask = key_ctx[None, None, :] <= qc  # (B, Q, L)
    sliding = None
    if sliding_window:
        sliding = mask & (key_ctx[None, None, :] > qc - sliding_window)
    # Padded query rows attend to key 0 so softmax stays finite; their outputs are dropped.
    pad = (q_ctx < 0)[:, :, None] & (key_ctx == 0)[None, None, :]
    mask = mask | pad
    if sliding is not None:
        sliding = (sliding | pad)[:, None].to(device)
    return AttnGroup(
        token_index=torch.tensor(token_index, dtype=torch.long, device=device),
        valid=torch.tensor(valid, dtype=torch.long, device=device),
        batch=batch,
        max_q=max_q,
        key_slots=key_slots.to(device),
        mask=mask[:, None].to(device),
        sliding_mask=sliding,
    )


def build_attention_metadata(
    seqs: Sequence[SeqSlice],
    block_size: int,
    kv_caches: list[tuple[torch.Tensor, torch.Tensor]],
    sliding_window: int | None = None,
    device: torch.device | str = "cpu",
) -> AttentionMetadata:
    """Metadata for one step; the new tokens of ``seqs`` are packed in this order."""
    slot_mapping: list[int] = []
    decodes: list[tuple[int, SeqSlice]] = []
    groups: list[AttnGroup] = []
    offset = 0
    for s in seqs:
        if s.num_new < 1:
            raise ValueError("every scheduled sequence needs at least one new token")
        slot_mapping.extend(_slots(s.block_table, s.num_computed, s.num_computed + s.num_new, block_size))
        if s.num_new == 1:
            decodes.append((offset, s))
        else:
            groups.append(_build_group([(offset, s)], block_size, sliding_window, device))
        offset += s.num_new
    if decodes:
        groups.append(_build_group(decodes, block_size, sliding_window, device))
    return AttentionMetadata(
        slot_mapping=torch.tensor(slot_mapping, dtype=torch.long, device=device),
        groups=groups,
        kv_caches=kv_caches,
    )


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
    Returns (T, H, D)."""
    k_cache, v_cache = meta.kv_caches[layer]
    k_cache.index_copy_(0, meta.slot_mapping, k.to(k_cache.dtype))
    v_cache.index_copy_(0, meta.slot_mapping, v.to(v_cache.dtype))
    num_tokens, num_heads, head_dim = q.shape
    out = q.new_empty(num_tokens, num_heads, head_dim)
    for g in meta.groups:
        mask = g.sliding_mask if sliding and g.sliding_mask is not None else g.mask
        qg = q.new_zeros(g.batch * g.max_q, num_heads, head_dim)
        qg[g.valid] = q[g.token_index]
        qg = qg.view(g.batch, g.max_q, num_heads, head_dim).transpose(1, 2)  # (B, H, Q, D)
        kg = k_cache[g.key_slots].transpose(1, 2)  # (B, KVH, L, D)
        vg = v_cache[g.key_slots].transpose(1, 2)
        og = F.scaled_dot_product_attention(
            qg, kg.to(q.dtype), vg.to(q.dtype), attn_mask=mask, scale=scale, enable_gqa=True
        )  # (B, H, Q, D)
        og = og.transpose(1, 2).reshape(g.batch * g.max_q, num_heads, head_dim)
        out[g.token_index] = og[g.valid]
    return out
