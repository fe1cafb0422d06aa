"""Views at shifted positions: keys read from the cache re-rotated by a constant offset.

A view may present a range of another sequence's cached tokens at positions shifted by a
constant ``d`` (a parallel path read by its summary at the summary's layout, say). Keys
are stored rotated by RoPE at the position they were computed at; a rotation composes, so
rotating a stored key (position ``p``) by the angle of ``d`` gives exactly the key at
``p + d``, and values carry no position. Nothing is recomputed:

    stored key:  R(p) k            read through a view shifted by d:  R(d) R(p) k = R(p + d) k

The metadata (``metadata.py``) gives each group with shifted keys a ``key_shift``: per key
column, an index into the step's distinct shifts (``AttentionMetadata.shift_deltas``,
index 0 is no shift). The model turns those shifts into cos / sin tables with its own
RoPE (each layer's base: Gemma 3's local and global bases, llama3 scaling), once per step
and distinct base (``AttentionMetadata.per_layer``), and each path re-rotates the keys it
gathers (``read_keys``) in float32. Rotation pairs the two halves of each head, as the
model's ``apply_rope`` does.
"""

from __future__ import annotations

import torch

RopeTable = tuple[torch.Tensor, torch.Tensor]  # cos, sin: (S, D/2) float32, one row per shift


def rotate(k: torch.Tensor, index: torch.Tensor, rope: RopeTable) -> torch.Tensor:
    """Keys k (..., L, KVH, D) rotated by shift ``index`` (..., L) of ``rope``; float32."""
    cos, sin = (t[index][..., None, :] for t in rope)  # (..., L, 1, D/2)
    k = k.float()
    half = k.shape[-1] // 2
    k1, k2 = k[..., :half], k[..., half:]
    return torch.cat((k1 * cos - k2 * sin, k2 * cos + k1 * sin), dim=-1)


def read_keys(
    k_cache: torch.Tensor, slots: torch.Tensor, shift: torch.Tensor | None,
    rope: RopeTable | None,
) -> torch.Tensor:
    """Keys at ``slots`` (...,) -> (..., KVH, D): as stored (the cache's dtype), or, with a
    ``shift`` index per slot, re-rotated to the view's positions (float32)."""
    got = k_cache.index_select(0, slots.reshape(-1)).view(*slots.shape, *k_cache.shape[1:])
    if shift is None:
        return got
    if rope is None:
        raise ValueError("shifted keys need the layer's RoPE table (AttentionMetadata.per_layer)")
    return rotate(got, shift, rope)


def shift_index(shifts: list[torch.Tensor]) -> tuple[torch.Tensor | None, list[torch.Tensor | None]]:
    """Per-slice shifts (long, one per context column) -> (distinct shifts (S,) with 0
    first, per slice an index into them, or None where a slice has no shifted key); all
    None when nothing is shifted."""
    if not any(bool(s.any()) for s in shifts):
        return None, [None] * len(shifts)
    deltas = torch.unique(torch.cat([torch.zeros(1, dtype=torch.long), *shifts]))
    deltas = torch.cat([torch.zeros(1, dtype=torch.long), deltas[deltas != 0]])
    return deltas, [_index(deltas, s) if s.any() else None for s in shifts]


def _index(deltas: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Position of each value in ``deltas`` (every value is in it)."""
    return (values[:, None] == deltas[None, :]).long().argmax(dim=1)
