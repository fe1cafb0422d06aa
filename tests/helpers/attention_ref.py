"""A float64 reference for the fused attention kernel's tests."""

from __future__ import annotations

import torch


def reference_attention(q, kc, vc, slots, mask, scale) -> torch.Tensor:
    """q (B, Q, H, D), caches (slots, KVH, D), slots (B, L), mask (B, Q, L) bool ->
    (B, Q, H, D) float64: softmax(q k^T x scale) v per sequence, grouped-query heads."""
    b, _, h, _ = q.shape
    g = h // kc.shape[1]
    out = []
    for i in range(b):
        k = kc[slots[i]].double().repeat_interleave(g, 1)  # (L, H, D)
        v = vc[slots[i]].double().repeat_interleave(g, 1)
        s = torch.einsum("qhd,lhd->hql", q[i].double(), k) * scale
        s = s.masked_fill(~mask[i][None], float("-inf"))
        out.append(torch.einsum("hql,lhd->qhd", s.softmax(-1), v))
    return torch.stack(out)
