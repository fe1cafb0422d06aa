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


def run_parts(kernel, q, kc, vc, slots, mask, scale: float, parts: int) -> torch.Tensor:
    """The kernel's ``fq_attention_part`` for every part 0 .. parts-1 in turn (as the native
    stack's threads call it), into one output: decode rows (q (B, 1, H, D)), caches
    float32 or bfloat16. Each call must return 0."""
    b, nq, h, d = q.shape
    length = slots.shape[1]
    out = torch.full_like(q, float("nan"))
    args = (b, nq, h, kc.shape[1], d, kc.data_ptr(), vc.data_ptr(),
            int(kc.dtype == torch.bfloat16), slots.data_ptr(), length, length,
            mask.data_ptr(), mask.stride(0), mask.stride(1), scale)
    for part in range(parts):
        assert kernel.lib.fq_attention_part(q.data_ptr(), out.data_ptr(), *args, part, parts) == 0
    return out
