"""Paged attention: write new keys/values into the block-paged cache, read a sequence's
context back through its block table.

Slots: the cache of one layer is a flat array of ``num_blocks * block_size`` slots; the
token at context index ``c`` of a sequence lives in slot ``table[c // B] * B + c % B``.
Context index is the order of tokens in the sequence's cache, which is independent of
their RoPE positions (positions are explicit inputs of ``forward``).

The metadata is built once per engine step (not per layer) by ``build_attention_metadata``.
Sequences fall into groups, each computed its own way:

- ``decode``: every single-token query, batched together; grouped-query matmuls over the
  gathered context (no key/value head repetition);
- ``fresh``: a chunk that starts at context 0 (a whole prompt): its keys are this step's
  own, so nothing is gathered and causal SDPA runs directly;
- ``chunk``: a chunk after cached context (chunked prefill, prefix-cache hit, streaming
  input): gathered context with an explicit mask; short chunks (``SHORT_CHUNK`` tokens
  at most) as grouped-query matmuls instead of the flash kernel (``attention.short``),
  several of them in one step merged into one padded ``short`` group.

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

from thinkstream.attention.short import (
    SHORT_CHUNK,
    gather_heads_first,
    open_columns,
    short_batch,
    short_chunk,
    slot_runs,
)


@dataclass(frozen=True)
class SeqSlice:
    """What one sequence contributes to a step: its block table, tokens already in the
    cache, and how many new tokens (packed contiguously in the step's input) follow.

    ``prefix`` lists other KV segments, each ``(block_table, num_tokens)``, that the
    sequence sees before its own tokens: a view, not a copy (a reasoning stream reading the
    input read so far, say). Their keys keep the positions they were cached with.

        context: | prefix segment 1 | prefix segment 2 | own computed | own new |

    ``prefix_visible`` (one entry per new token, or None for all) limits how many prefix
    tokens each new token sees: new token i attends to prefix context ``[0, visible[i])``
    and to every own token up to itself (a note written when less input had been read).
    """

    block_table: Sequence[int]
    num_computed: int
    num_new: int
    prefix: tuple[tuple[Sequence[int], int], ...] = ()
    prefix_visible: tuple[int, ...] | None = None

    @property
    def prefix_len(self) -> int:
        return sum(n for _, n in self.prefix)


@dataclass
class AttnGroup:
    kind: str  # "decode" | "fresh" | "chunk"
    start: int  # first packed token of the group (fresh / chunk: one sequence, contiguous)
    stop: int
    key_slots: torch.Tensor | None  # (B, L) cache slots to gather (padding -> slot 0)
    mask: torch.Tensor | None  # decode (B, 1, 1, L) / chunk (1, 1, Q, L); True = attend
    sliding_mask: torch.Tensor | None
    rows: torch.Tensor | None = None  # decode: packed index of each sequence's query
    shared: int = 0  # decode: leading key slots identical in every row (a shared prefix)
    runs: tuple[tuple[int, int], ...] | None = None  # short chunk: context as slot ranges
    take: torch.Tensor | None = None  # short batch: the real queries among B x Qmax rows
    short: bool = False  # a chunk on the short-chunk path
    open_cols: tuple[int, int] = (0, 0)  # short chunk: leading keys all queries see (mask, sliding)


@dataclass
class AttentionMetadata:
    slot_mapping: torch.Tensor  # (T,) slot of each new token
    groups: list[AttnGroup]
    kv_caches: list[tuple[torch.Tensor, torch.Tensor]]  # per layer (slots, kv_heads, head_dim)
    sliding_window: int | None = None


def allocate_kv_caches(
    num_layers: int, num_slots: int, num_kv_heads: int, head_dim: int,
    dtype: torch.dtype, device: torch.device | str,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    shape = (num_slots, num_kv_heads, head_dim)
    return [
        (torch.zeros(shape, dtype=dtype, device=device), torch.zeros(shape, dtype=dtype, device=device))
        for _ in range(num_layers)
    ]


def _table_slots(table: Sequence[int], length: int, block_size: int) -> torch.Tensor:
    """Slots of context indices 0..length-1 of one block table."""
    blocks = torch.as_tensor(list(table[: -(-length // block_size)]), dtype=torch.long)
    return (blocks[:, None] * block_size + torch.arange(block_size)).flatten()[:length]


def _context(s: SeqSlice, block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(slots of the whole context: prefix segments then own tokens, slots of own tokens)."""
    own = _table_slots(s.block_table, s.num_computed + s.num_new, block_size)
    if not s.prefix:
        return own, own
    parts = [_table_slots(t, n, block_size) for t, n in s.prefix]
    return torch.cat([*parts, own]), own


def _masks(
    q_ctx: torch.Tensor, length: int, window: int | None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Causal (and sliding) masks (B, Q, L) for query context indices q_ctx (B, Q)."""
    key_ctx = torch.arange(length)[None, None, :]
    qc = q_ctx[:, :, None]
    mask = key_ctx <= qc
    sliding = mask & (key_ctx > qc - window) if window else None
    return mask, sliding


def build_attention_metadata(
    seqs: Sequence[SeqSlice],
    block_size: int,
    kv_caches: list[tuple[torch.Tensor, torch.Tensor]],
    sliding_window: int | None = None,
    device: torch.device | str = "cpu",
) -> AttentionMetadata:
    """Metadata for one step; the new tokens of ``seqs`` are packed in this order."""
    slot_chunks: list[torch.Tensor] = []
    groups: list[AttnGroup] = []
    decode_rows: list[int] = []
    decode_ctx: list[torch.Tensor] = []
    decode_hidden: list[tuple[int, int]] = []  # per decode row: hidden prefix range
    # Short chunks take grouped matmuls in the fast dtypes; float32 (the parity mode) keeps
    # the flash kernel's summation order, which the quantized-fidelity comparisons rely on.
    short_ok = bool(kv_caches) and kv_caches[0][0].dtype != torch.float32
    offset = 0
    for s in seqs:
        if s.num_new < 1:
            raise ValueError("every scheduled sequence needs at least one new token")
        context, own = _context(s, block_size)
        slot_chunks.append(own[s.num_computed :])
        if s.num_new == 1:
            decode_rows.append(offset)
            decode_ctx.append(context)
            vis = s.prefix_len if s.prefix_visible is None else s.prefix_visible[0]
            decode_hidden.append((vis, s.prefix_len))
        elif s.num_computed == 0 and not s.prefix:
            groups.append(_fresh_group(offset, s, sliding_window, device))
        else:
            groups.append(_chunk_group(offset, s, context, sliding_window, device, short_ok))
        offset += s.num_new
    short = [g for g in groups if g.short]
    if len(short) > 1:  # one batched group: a few matmuls per layer for any number of them
        groups = [g for g in groups if g not in short] + [_short_group(short)]
    if decode_ctx:
        groups.append(_decode_group(decode_rows, decode_ctx, sliding_window, device, decode_hidden))
    return AttentionMetadata(
        slot_mapping=torch.cat(slot_chunks).to(device),
        groups=groups,
        kv_caches=kv_caches,
        sliding_window=sliding_window,
    )


def _fresh_group(offset: int, s: SeqSlice, window: int | None, device) -> AttnGroup:
    sliding = None
    if window and s.num_new > window:
        _, sliding = _masks(torch.arange(s.num_new)[None], s.num_new, window)
        sliding = sliding[:, None].to(device)
    return AttnGroup("fresh", offset, offset + s.num_new, None, None, sliding)


def _chunk_group(offset: int, s: SeqSlice, context: torch.Tensor, window: int | None, device,
                 short_ok: bool) -> AttnGroup:
    short = short_ok and s.num_new <= SHORT_CHUNK
    length = context.shape[0]
    mask, sliding = _masks(torch.arange(length - s.num_new, length)[None], length, window)
    if s.prefix_visible is not None:  # hide prefix keys [visible[i], prefix_len) from query i
        key = torch.arange(length)[None, None, :]
        vis = torch.tensor(s.prefix_visible)[None, :, None]
        hidden = (key >= vis) & (key < s.prefix_len)
        mask = mask & ~hidden
        sliding = None if sliding is None else sliding & ~hidden
    return AttnGroup(
        "chunk", offset, offset + s.num_new, context[None].to(device), mask[:, None].to(device),
        None if sliding is None else sliding[:, None].to(device),
        runs=slot_runs(context) if short else None,
        short=short,
        open_cols=(open_columns(mask[0]), open_columns(mask[0] if sliding is None else sliding[0]))
        if short else (0, 0),
    )


def _short_group(chunks: list[AttnGroup]) -> AttnGroup:
    """Short chunk groups merged into one padded batch (``short.short_batch``);
    ``take`` lists the real queries among the B x Qmax rows."""
    qmax = max(g.stop - g.start for g in chunks)
    lmax = max(g.key_slots.shape[1] for g in chunks)
    dev = chunks[0].key_slots.device
    rows = torch.empty(len(chunks), qmax, dtype=torch.long, device=dev)
    key_slots = torch.zeros(len(chunks), lmax, dtype=torch.long, device=dev)
    windowed = any(g.sliding_mask is not None for g in chunks)
    masks = [torch.zeros(len(chunks), qmax, lmax, dtype=torch.bool, device=dev)
             for _ in range(1 + windowed)]
    for i, g in enumerate(chunks):
        n, length = g.stop - g.start, g.key_slots.shape[1]
        rows[i, :n] = torch.arange(g.start, g.stop, device=dev)
        rows[i, n:] = g.start
        key_slots[i, :length] = g.key_slots[0]
        for m, src in zip(masks, (g.mask, g.sliding_mask if g.sliding_mask is not None else g.mask),
                          strict=False):
            m[i, :n, :length] = src[0, 0]
            m[i, n:, 0] = True  # padding queries: one key, output dropped
    real = torch.tensor([j < g.stop - g.start for g in chunks for j in range(qmax)], device=dev)
    return AttnGroup("short", 0, 0, key_slots, masks[0], masks[1] if windowed else None,
                     rows=rows, take=real.nonzero().flatten())


def _decode_group(
    rows: list[int], contexts: list[torch.Tensor], window: int | None, device,
    hidden: list[tuple[int, int]] | None = None,
) -> AttnGroup:
    lengths = torch.tensor([c.shape[0] for c in contexts])
    key_slots = torch.zeros(len(contexts), int(lengths.max()), dtype=torch.long)
    for b, c in enumerate(contexts):
        key_slots[b, : c.shape[0]] = c
    mask, sliding = _masks((lengths - 1)[:, None], key_slots.shape[1], window)  # (B, 1, L)
    for b, (lo, hi) in enumerate(hidden or ()):
        if lo < hi:  # prefix keys this query may not see
            mask[b, :, lo:hi] = False
            if sliding is not None:
                sliding[b, :, lo:hi] = False
    shared = 0
    if len(contexts) > 1 and not any(lo < hi for lo, hi in hidden or ()) and window is None:
        same = (key_slots == key_slots[:1]).all(dim=0)[: int(lengths.min()) - 1]
        shared = int(same.long().cumprod(0).sum())  # never a row's own last (new) key
    return AttnGroup(
        "decode", 0, 0, key_slots.to(device), mask[:, None].to(device),
        None if sliding is None else sliding[:, None].to(device),
        torch.tensor(rows, dtype=torch.long, device=device), shared,
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
    if len(meta.groups) == 1 and meta.groups[0].kind == "decode":
        return _decode(q, k_cache, v_cache, meta.groups[0], scale, sliding)
    out = torch.empty_like(q)
    for g in meta.groups:
        if g.kind == "decode":
            out[g.rows] = _decode(q[g.rows], k_cache, v_cache, g, scale, sliding)
            continue
        mask = g.sliding_mask if sliding and g.sliding_mask is not None else g.mask
        if g.kind == "short":
            got = short_batch(q, k_cache, v_cache, g.rows, g.key_slots, mask, scale)
            out[g.rows.flatten()[g.take]] = got[g.take]
            continue
        if g.short:
            cols = g.open_cols[1 if mask is g.sliding_mask else 0]
            out[g.start : g.stop] = short_chunk(q[g.start : g.stop], k_cache, v_cache,
                                                g.key_slots[0], g.runs, mask[0, 0], cols, scale)
            continue
        qg = q[g.start : g.stop].transpose(0, 1)[None]  # (1, H, Q, D)
        if g.kind == "fresh":
            kg = k[g.start : g.stop].transpose(0, 1)[None]  # (1, KVH, Q, D)
            vg = v[g.start : g.stop].transpose(0, 1)[None]
            causal = mask is None
        else:
            kg = k_cache.index_select(0, g.key_slots[0]).transpose(0, 1)[None].to(q.dtype)  # (1, KVH, L, D)
            vg = v_cache.index_select(0, g.key_slots[0]).transpose(0, 1)[None].to(q.dtype)
            causal = False
        og = F.scaled_dot_product_attention(
            qg, kg, vg, attn_mask=mask, is_causal=causal, scale=scale, enable_gqa=True
        )  # (1, H, Q, D)
        out[g.start : g.stop] = og[0].transpose(0, 1)
    return out


def _decode(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, g: AttnGroup,
    scale: float, sliding: bool,
) -> torch.Tensor:
    """One query per sequence, grouped-query attention as two batched matmuls:
    q (B, H, D) -> (B, KVH, G, D); scores (B, KVH, G, L). Returns (B, H, D).

    Computed in float32: CPU batched matmuls of these small shapes are many times slower
    in bfloat16, and the gathered context is small."""
    b, h, d = q.shape
    if g.shared >= CASCADE_MIN_SHARED and not sliding:
        return _decode_cascade(q, k_cache, v_cache, g, scale)
    kg = gather_heads_first(k_cache, g.key_slots)  # (B, KVH, L, D) float32
    vg = gather_heads_first(v_cache, g.key_slots)
    kvh = kg.shape[1]
    qg = q.float().view(b, kvh, h // kvh, d)
    scores = torch.matmul(qg, kg.transpose(-1, -2)) * scale  # (B, KVH, G, L)
    mask = g.sliding_mask if sliding and g.sliding_mask is not None else g.mask  # (B, 1, 1, L)
    scores = scores.masked_fill(~mask, float("-inf"))
    probs = scores.softmax(dim=-1)
    out = torch.matmul(probs, vg)  # (B, KVH, G, D)
    return out.reshape(b, h, d).to(q.dtype)


CASCADE_MIN_SHARED = 64


def _decode_cascade(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, g: AttnGroup, scale: float,
) -> torch.Tensor:
    """Decode attention when every row starts with the same ``g.shared`` keys (a shared
    system prompt, forked threads): the shared keys are read once for all queries, the
    rest per row, and the two softmax parts are merged by their log-sum-exp.

        keys: | shared prefix (gathered once, S) | own suffix (per row, L - S) |
    """
    b, h, d = q.shape
    s = g.shared
    ks = gather_heads_first(k_cache, g.key_slots[0, :s])  # (KVH, S, D)
    vs = gather_heads_first(v_cache, g.key_slots[0, :s])
    kvh = ks.shape[0]
    qg = q.float().view(b, kvh, h // kvh, d).transpose(0, 1).reshape(kvh, -1, d)  # (KVH, B*G, D)
    s1 = torch.matmul(qg, ks.transpose(-1, -2)) * scale  # (KVH, B*G, S)
    m1 = s1.amax(dim=-1, keepdim=True)
    e1 = torch.exp(s1 - m1)
    o1 = torch.matmul(e1, vs)  # (KVH, B*G, D)
    l1 = e1.sum(dim=-1, keepdim=True)
    m1, l1, o1 = (t.view(kvh, b, -1, t.shape[-1]).transpose(0, 1) for t in (m1, l1, o1))  # (B, KVH, G, *)
    kr = gather_heads_first(k_cache, g.key_slots[:, s:])  # (B, KVH, L-S, D)
    vr = gather_heads_first(v_cache, g.key_slots[:, s:])
    s2 = torch.matmul(q.float().view(b, kvh, h // kvh, d), kr.transpose(-1, -2)) * scale
    s2 = s2.masked_fill(~g.mask[..., s:], float("-inf"))  # (B, KVH, G, L-S)
    m2 = s2.amax(dim=-1, keepdim=True)  # finite: each row's own new key is in its suffix
    e2 = torch.exp(s2 - m2)
    o2 = torch.matmul(e2, vr)
    l2 = e2.sum(dim=-1, keepdim=True)
    m = torch.maximum(m1, m2)
    w1, w2 = torch.exp(m1 - m), torch.exp(m2 - m)
    out = (o1 * w1 + o2 * w2) / (l1 * w1 + l2 * w2)  # (B, KVH, G, D)
    return out.reshape(b, h, d).to(q.dtype)
