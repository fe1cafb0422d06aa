"""Path 3: cascade decode, an optimisation of path 2's decode for rows that all start with
the same keys (a shared system prompt, the children of ``n > 1``, forked threads).

The shared keys are read once for every query, the rest per row, and the two softmax
parts are merged by their log-sum-exp:

    keys: | shared prefix (gathered once, S) | own suffix (per row, L - S) |

``metadata`` sets ``Decode.shared`` (S) only where every row sees the whole prefix (no
hidden prefix keys, no sliding window) and S reaches ``AttentionConfig.cascade_min_shared``.
Computed in float32, as decode is.
"""

from __future__ import annotations

import torch

from thinkstream.attention.few_query import gather_heads_first


def cascade_decode(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, key_slots: torch.Tensor,
    mask: torch.Tensor, shared: int, scale: float,
) -> torch.Tensor:
    """q (B, H, D), key_slots (B, L) whose first ``shared`` columns are alike, mask
    (B, 1, 1, L). Returns (B, H, D)."""
    b, h, d = q.shape
    s = shared
    ks = gather_heads_first(k_cache, key_slots[0, :s])  # (KVH, S, D)
    vs = gather_heads_first(v_cache, key_slots[0, :s])
    kvh = ks.shape[0]
    qg = q.float().view(b, kvh, h // kvh, d).transpose(0, 1).reshape(kvh, -1, d)  # (KVH, B*G, D)
    s1 = torch.matmul(qg, ks.transpose(-1, -2)) * scale  # (KVH, B*G, S)
    m1 = s1.amax(dim=-1, keepdim=True)
    e1 = torch.exp(s1 - m1)
    o1 = torch.matmul(e1, vs)  # (KVH, B*G, D)
    l1 = e1.sum(dim=-1, keepdim=True)
    m1, l1, o1 = (t.view(kvh, b, -1, t.shape[-1]).transpose(0, 1) for t in (m1, l1, o1))  # (B, KVH, G, *)
    kr = gather_heads_first(k_cache, key_slots[:, s:])  # (B, KVH, L-S, D)
    vr = gather_heads_first(v_cache, key_slots[:, s:])
    s2 = torch.matmul(q.float().view(b, kvh, h // kvh, d), kr.transpose(-1, -2)) * scale
    s2 = s2.masked_fill(~mask[..., s:], float("-inf"))  # (B, KVH, G, L-S)
    m2 = s2.amax(dim=-1, keepdim=True)  # finite: each row's own new key is in its suffix
    e2 = torch.exp(s2 - m2)
    o2 = torch.matmul(e2, vr)
    l2 = e2.sum(dim=-1, keepdim=True)
    m = torch.maximum(m1, m2)
    w1, w2 = torch.exp(m1 - m), torch.exp(m2 - m)
    out = (o1 * w1 + o2 * w2) / (l1 * w1 + l2 * w2)  # (B, KVH, G, D)
    return out.reshape(b, h, d).to(q.dtype)
