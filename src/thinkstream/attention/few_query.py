"""Path 2: a few queries per sequence over the paged cache, as grouped-query matmuls.

Decode is its one-query case; short chunks after cached context (a streamed chunk, the end
of a session's input, the next few tokens of many sessions at once) are the rest. The flash
kernel tiles the queries, so a handful of them pays for whole tiles per key block;
grouped-query matmuls over (G*Q) rows per key/value head cost in proportion to Q x L and
need no key/value head repetition. Three shapes (``metadata``'s groups):

- ``decode``: B rows of one query: two batched matmuls over the gathered context, in float32
  in every precision mode (CPU batched matmuls of these small shapes are many times slower
  in bfloat16, and the gathered context is small);
- ``short_chunk``: one chunk. Keys and values are read where they lie: a run of consecutive
  slots is a view of the cache and a head's (L, D) slice of it a strided matrix the matmul
  takes as is (a gather, or a transposing copy, would cost as much as the matmul over a
  long context);
- ``short_batch``: several chunks in one step, padded to one batch (B, Qmax queries, Lmax
  keys), so a step costs a few batched matmuls per layer however many sessions send one.

The chunk shapes compute in the dtype of ``q`` (the caller upcasts for float32 precision):
matmuls accumulate in float32, scores and probabilities are rounded to that dtype.

With ``fused`` (``AttentionConfig.fused``: a CPU engine where ``kernels/attention.py``
loads) ``decode`` and ``short_chunk`` run on the fused native kernel instead, unless keys
are read shifted: scores, softmax and the value product in one pass over the keys, in
float32 whatever the cache dtype, one call per layer.
"""

from __future__ import annotations

import torch

from thinkstream.attention.shift import RopeTable, read_keys
from thinkstream.kernels import softmax_last
from thinkstream.kernels.attention import load_fq_attention


def gather_heads_first(cache: torch.Tensor, slots: torch.Tensor,
                       dtype: torch.dtype = torch.float32, shift: torch.Tensor | None = None,
                       rope: RopeTable | None = None) -> torch.Tensor:
    """cache (slots, KVH, D) at slots (..., L) -> (..., KVH, L, D) in ``dtype``, contiguous:
    one index_select (much faster than advanced indexing) and one copy that both converts
    and puts heads first, the layout the batched matmuls want (strided operands would be
    copied inside the matmul, at three times the cost). Keys with a ``shift`` index per
    slot are re-rotated to their view's positions (``shift.read_keys``)."""
    got = read_keys(cache, slots, shift, rope)
    return got.transpose(-3, -2).to(dtype, memory_format=torch.contiguous_format)


def _softmax(scores: torch.Tensor, native: bool) -> torch.Tensor:
    """Row softmax; the native kernel (in place) where it applies and ``native`` is set."""
    return softmax_last(scores) if native else scores.softmax(dim=-1)


def decode(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, key_slots: torch.Tensor,
    mask: torch.Tensor, scale: float, key_shift: torch.Tensor | None = None,
    rope: RopeTable | None = None, fused: bool = False,
) -> torch.Tensor:
    """One query per row: q (B, H, D), key_slots (B, L), mask (B, 1, 1, L) -> (B, H, D).
    q (B, H, D) -> (B, KVH, G, D); scores (B, KVH, G, L), in float32. ``key_shift`` (B, L)
    and ``rope``: keys read at shifted positions (``shift.py``)."""
    kernel = load_fq_attention() if fused and key_shift is None else None
    rows_mask = mask.reshape(mask.shape[0], 1, mask.shape[-1])  # (B, 1, L)
    if kernel is not None and kernel.accepts(q, k_cache, v_cache, key_slots, rows_mask):
        return kernel(q[:, None], k_cache, v_cache, key_slots, rows_mask, scale)[:, 0].to(q.dtype)
    b, h, d = q.shape
    kg = gather_heads_first(k_cache, key_slots, shift=key_shift, rope=rope)  # (B, KVH, L, D)
    vg = gather_heads_first(v_cache, key_slots)
    kvh = kg.shape[1]
    qg = q.float().view(b, kvh, h // kvh, d)
    scores = torch.matmul(qg, kg.transpose(-1, -2)) * scale  # (B, KVH, G, L)
    scores = scores.masked_fill(~mask, float("-inf"))
    probs = scores.softmax(dim=-1)
    out = torch.matmul(probs, vg)  # (B, KVH, G, D)
    return out.reshape(b, h, d).to(q.dtype)


def short_chunk(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, slots: torch.Tensor,
    runs: tuple[tuple[int, int], ...] | None, mask: torch.Tensor, open_cols: int, scale: float,
    native_softmax: bool = True, key_shift: torch.Tensor | None = None,
    rope: RopeTable | None = None, fused: bool = False,
) -> torch.Tensor:
    """One chunk: q (Q, H, D), context slots (L,) (or the same as ``runs`` of consecutive
    slots), mask (Q, L) whose first ``open_cols`` columns are all True
    (``metadata.open_columns``, computed once per step, not per layer). Returns (Q, H, D).
    Scores and outputs are written in place by one matmul per run and key/value head; only
    the columns past ``open_cols`` (the chunk's causal tail, hidden prefix keys, a window)
    are masked."""
    kernel = load_fq_attention() if fused and key_shift is None else None
    if kernel is not None and kernel.accepts(q, k_cache, v_cache, slots, mask):
        return kernel(q[None], k_cache, v_cache, slots[None], mask[None], scale)[0].to(q.dtype)
    n, h, d = q.shape
    kvh, length = k_cache.shape[1], slots.numel()
    g = h // kvh
    if runs is None:
        parts = [(read_keys(k_cache, slots, key_shift, rope), v_cache.index_select(0, slots))]
    else:
        parts = [(k_cache[a : a + m], v_cache[a : a + m]) for a, m in runs]
    if any(k.dtype != q.dtype or v.dtype != q.dtype for k, v in parts):
        parts = [(k.to(q.dtype), v.to(q.dtype)) for k, v in parts]  # (m, KVH, D) each
    qg = (q * scale).view(n, kvh, g, d).permute(1, 2, 0, 3).reshape(kvh, g * n, d)
    scores = q.new_empty(kvh, g * n, length)
    start = 0
    for k, _ in parts:
        for i in range(kvh):
            torch.mm(qg[i], k[:, i].t(), out=scores[i, :, start : start + k.shape[0]])
        start += k.shape[0]
    if open_cols < length:
        tail = scores.view(kvh, g, n, length)[..., open_cols:]
        tail.masked_fill_(~mask[:, open_cols:], float("-inf"))
    probs = _softmax(scores, native_softmax)  # in place where the native kernel applies
    out = q.new_empty(kvh, g * n, d)
    start = 0
    for j, (_, v) in enumerate(parts):
        for i in range(kvh):
            p = probs[i, :, start : start + v.shape[0]]
            if j == 0:
                torch.mm(p, v[:, i], out=out[i])
            else:
                out[i].addmm_(p, v[:, i])
        start += v.shape[0]
    return out.view(kvh, g, n, d).permute(2, 0, 1, 3).reshape(n, h, d)


def short_batch(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, rows: torch.Tensor,
    key_slots: torch.Tensor, mask: torch.Tensor, scale: float, native_softmax: bool = True,
    key_shift: torch.Tensor | None = None, rope: RopeTable | None = None,
) -> torch.Tensor:
    """Several chunks: q (T, H, D) packed, rows (B, Qmax), key_slots (B, L), mask
    (B, Qmax, L); ``key_shift`` (B, L) and ``rope``: shifted keys (``shift.py``). Returns
    (B * Qmax, H, D), row-major over ``rows``."""
    b, qm = rows.shape
    h, d = q.shape[1:]
    kvh, length = k_cache.shape[1], key_slots.shape[1]
    g = h // kvh
    qb = (q[rows.flatten()] * scale).view(b, qm, kvh, g, d).permute(0, 2, 3, 1, 4)
    qb = qb.reshape(b, kvh, g * qm, d)
    kt = read_keys(k_cache, key_slots, key_shift, rope).permute(0, 2, 3, 1)
    kt = kt.to(q.dtype, memory_format=torch.contiguous_format)  # (B, KVH, D, L)
    vg = gather_heads_first(v_cache, key_slots, q.dtype)  # (B, KVH, L, D)
    scores = torch.matmul(qb, kt).view(b, kvh, g, qm, length)
    scores = scores.masked_fill(~mask[:, None, None], float("-inf"))
    probs = _softmax(scores, native_softmax).view(b, kvh, g * qm, length)
    out = torch.matmul(probs, vg).view(b, kvh, g, qm, d)
    return out.permute(0, 3, 1, 2, 4).reshape(b * qm, h, d)
