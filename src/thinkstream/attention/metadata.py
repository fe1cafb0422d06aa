"""Attention metadata: how one engine step's attention is computed, planned once per step
(not per layer) by ``build_attention_metadata``.

Slots: the cache of one layer is a flat array of ``num_blocks * block_size`` slots; the
token at context index ``c`` of a sequence lives in slot ``table[c // B] * B + c % B``.
Context index is the order of tokens in the sequence's cache, which is independent of
their RoPE positions (positions are explicit inputs of ``forward``).

For one sequence with ``n`` new tokens after ``k`` computed ones:

    context index: 0 ........ k-1 | k ........ k+n-1
                   | computed      | new (written this step, then attended) |
    query i (context index k+i) sees keys j <= k+i, and j > k+i-window on sliding layers.

Each sequence lands in one group, and each group kind is one of three paths:

    group        path                                    for
    Prefill      1. SDPA (flash kernel)  prefill.py      a prompt from context 0; a chunk
                                                         after context that is not short
    Decode       2. few queries          few_query.py    every one-token query, batched
    ShortChunk   2. few queries          few_query.py    one short chunk after context
    ShortBatch   2. few queries          few_query.py    several short chunks, padded
    Decode with ``shared``: 3. cascade   cascade.py      decode rows sharing a long prefix

Which path a chunk takes and in what dtype its arithmetic runs is the ``AttentionConfig``
(``Precision``), never the KV dtype. A prefix view may present its keys at shifted
positions (``shift.py``): the groups then carry a ``key_shift`` index per key column and
every path re-rotates the keys it reads.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from enum import Enum

import torch

from thinkstream.attention.shift import RopeTable, shift_index


class Precision(Enum):
    """How attention's arithmetic is done (``EngineConfig.attention_precision``)."""

    PARITY = "parity"  # every chunk of 2+ tokens on the flash kernel's summation order
    MIXED = "mixed"  # short chunks as grouped matmuls in the model dtype (f32 accumulation)
    FLOAT32 = "float32"  # every path computes in float32 (keys/values upcast as read)


@dataclass(frozen=True)
class AttentionConfig:
    """The attention settings of a step. ``AttentionConfig()`` is the parity mode; an engine
    resolves ``attention_precision="auto"`` with ``for_engine``. Decode (one query per
    sequence) computes in float32 in every mode."""

    precision: Precision = Precision.PARITY
    short_chunk: int = 32  # chunks of at most this many tokens take path 2 (not PARITY)
    cascade_min_shared: int = 64  # decode rows sharing this many leading keys cascade
    native_softmax: bool = True  # path 2's bfloat16 softmax in the native kernel, if it loads
    # decode rows and short chunks on the fused native kernel (kernels/attention.py: one pass
    # over the keys, float32 arithmetic, so PARITY mode takes short chunks on path 2 too)
    fused: bool = False

    def __post_init__(self) -> None:
        if self.short_chunk < 0:
            raise ValueError("short_chunk must be >= 0")
        if self.cascade_min_shared < 1:
            raise ValueError("cascade_min_shared must be >= 1")

    @classmethod
    def for_engine(cls, precision: str, dtype: torch.dtype, fused: bool = False) -> AttentionConfig:
        """``"auto"``: float32 engines keep the flash kernel's summation order (the parity
        mode the reference comparisons rely on), bfloat16 / float16 engines the fast mix.
        ``fused``: the fused kernel is loaded (a CPU engine) and takes path 2."""
        if precision == "auto":
            return cls(Precision.PARITY if dtype == torch.float32 else Precision.MIXED, fused=fused)
        return cls(Precision(precision), fused=fused)

    def compute_dtype(self, dtype: torch.dtype) -> torch.dtype:
        """The dtype paths 1 and 2 compute in for a model running in ``dtype``."""
        return torch.float32 if self.precision is Precision.FLOAT32 else dtype

    @property
    def short_limit(self) -> int:
        """Longest chunk (after context) on path 2; 0 = none. The fused kernel computes in
        float32 like the flash kernel, so with it PARITY mode takes path 2 too."""
        return 0 if self.precision is Precision.PARITY and not self.fused else self.short_chunk


@dataclass(frozen=True)
class SeqSlice:
    """What one sequence contributes to a step: its block table, tokens already in the
    cache, and how many new tokens (packed contiguously in the step's input) follow.

    ``prefix`` lists other KV segments, each ``(block_table, num_tokens)`` or
    ``(block_table, stop, start, shift)``, that the sequence sees before its own tokens: a
    view, not a copy (a reasoning stream reading the input read so far, say). A segment is
    the source's context indices ``[start, stop)`` (``[0, num_tokens)``); its keys keep the
    positions they were cached with, plus ``shift`` (``shift.py``: re-rotated on read).

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
    # A chunk scoring draft tokens (speculative decoding): path 2 in every precision mode
    # when at most ``short_chunk`` long, so its rows are computed like decode rows.
    verify: bool = False

    @property
    def prefix_len(self) -> int:
        return sum(stop - start for _, stop, start, _ in map(segment, self.prefix))


def segment(entry: tuple) -> tuple[Sequence[int], int, int, int]:
    """A prefix entry as (block_table, stop, start, shift)."""
    return (entry[0], entry[1], 0, 0) if len(entry) == 2 else tuple(entry)  # type: ignore[return-value]


@dataclass(frozen=True)
class Prefill:
    """Path 1: one sequence's Q packed tokens ``start:stop`` on the flash kernel (SDPA)."""

    start: int
    stop: int
    key_slots: torch.Tensor | None  # (L,) context slots; None: a prompt from context 0
    mask: torch.Tensor | None  # (1, 1, Q, L), True = attend; None: causal over its own keys
    sliding_mask: torch.Tensor | None  # same shape; a fresh prompt's (1, 1, Q, Q) or None
    key_shift: torch.Tensor | None = None  # (L,) index into shift_deltas; None: unshifted


@dataclass(frozen=True)
class Decode:
    """Path 2, one query per row: B sequences computing one token each."""

    key_slots: torch.Tensor  # (B, L) context slots, padding -> slot 0 (masked)
    mask: torch.Tensor  # (B, 1, 1, L)
    sliding_mask: torch.Tensor | None
    rows: torch.Tensor | None = None  # (B,) packed index of each query; None: the whole step
    shared: int = 0  # path 3 (cascade): leading key slots alike in every row, read once; 0: off
    key_shift: torch.Tensor | None = None  # (B, L) index into shift_deltas; None: unshifted


@dataclass(frozen=True)
class ShortChunk:
    """Path 2, one chunk of a few queries (packed tokens ``start:stop``) over its context."""

    start: int
    stop: int
    key_slots: torch.Tensor  # (L,)
    runs: tuple[tuple[int, int], ...] | None  # the same context as (first slot, length) runs
    mask: torch.Tensor  # (Q, L)
    sliding_mask: torch.Tensor | None
    open_cols: tuple[int, int]  # leading keys every query sees: (mask, sliding mask)
    key_shift: torch.Tensor | None = None  # (L,) index into shift_deltas (runs None then)


@dataclass(frozen=True)
class ShortBatch:
    """Path 2, several short chunks padded to one batch of B x Qmax queries::

        rows (B, Qmax):   | packed index of each query | padding: the row's first query |
        mask (B, Qmax, L): its causal / visible keys; padded queries see key 0 only (their
                           output is dropped; no row of softmax is empty)
    """

    rows: torch.Tensor  # (B, Qmax)
    take: torch.Tensor  # the real queries among the B x Qmax rows (row-major)
    key_slots: torch.Tensor  # (B, L)
    mask: torch.Tensor  # (B, Qmax, L)
    sliding_mask: torch.Tensor | None
    key_shift: torch.Tensor | None = None  # (B, L) index into shift_deltas


AttnGroup = Prefill | Decode | ShortChunk | ShortBatch


@dataclass(frozen=True)
class AttentionMetadata:
    slot_mapping: torch.Tensor  # (T,) slot of each new token
    groups: list[AttnGroup]
    kv_caches: list[tuple[torch.Tensor, torch.Tensor]]  # per layer (slots, kv_heads, head_dim)
    sliding_window: int | None = None
    config: AttentionConfig = AttentionConfig()  # immutable: one shared default is safe
    shift_deltas: torch.Tensor | None = None  # (S,) distinct key shifts, 0 first; None: none
    shift_rope: RopeTable | None = None  # this layer's cos / sin of shift_deltas (per_layer)

    def per_layer(
        self, tables: Callable[[torch.Tensor, torch.dtype], list[RopeTable]]
    ) -> list[AttentionMetadata] | None:
        """With shifted keys: one metadata per layer carrying that layer's RoPE table of
        the shifts (``tables``: the model's ``rope_tables``, one entry per layer, layers of
        one base sharing it); None when nothing is shifted."""
        if self.shift_deltas is None:
            return None
        per_base: dict[int, AttentionMetadata] = {}
        out = []
        for table in tables(self.shift_deltas, torch.float32):
            if id(table) not in per_base:
                per_base[id(table)] = replace(self, shift_rope=table)
            out.append(per_base[id(table)])
        return out


def allocate_kv_caches(
    num_layers: int, num_slots: int, num_kv_heads: int, head_dim: int,
    dtype: torch.dtype, device: torch.device | str,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    shape = (num_slots, num_kv_heads, head_dim)
    return [
        (torch.zeros(shape, dtype=dtype, device=device), torch.zeros(shape, dtype=dtype, device=device))
        for _ in range(num_layers)
    ]


def build_attention_metadata(
    seqs: Sequence[SeqSlice],
    block_size: int,
    kv_caches: list[tuple[torch.Tensor, torch.Tensor]],
    sliding_window: int | None = None,
    device: torch.device | str = "cpu",
    config: AttentionConfig | None = None,
) -> AttentionMetadata:
    """Metadata for one step; the new tokens of ``seqs`` are packed in this order."""
    config = config or AttentionConfig()
    slot_chunks: list[torch.Tensor] = []
    groups: list[AttnGroup] = []
    decode_rows: list[int] = []
    decode_ctx: list[torch.Tensor] = []
    decode_hidden: list[tuple[int, int]] = []  # per decode row: hidden prefix range
    decode_shift: list[torch.Tensor | None] = []
    offset = 0
    if any(s.num_new < 1 for s in seqs):
        raise ValueError("every scheduled sequence needs at least one new token")
    contexts = [_context(s, block_size) for s in seqs]
    deltas, shifts = shift_index([shift for _, _, shift in contexts])
    for s, (context, own, _), shift in zip(seqs, contexts, shifts, strict=True):
        slot_chunks.append(own[s.num_computed :])
        if s.num_new == 1:
            decode_rows.append(offset)
            decode_ctx.append(context)
            decode_shift.append(shift)
            vis = s.prefix_len if s.prefix_visible is None else s.prefix_visible[0]
            decode_hidden.append((vis, s.prefix_len))
        elif s.num_computed == 0 and not s.prefix:
            groups.append(_fresh(offset, s, sliding_window, device))
        else:
            limit = max(config.short_limit, config.short_chunk) if s.verify else config.short_limit
            group = _chunk(offset, s, context, sliding_window, device, limit)
            groups.append(group if shift is None else _shifted(group, shift.to(device)))
        offset += s.num_new
    short = [g for g in groups if isinstance(g, ShortChunk)]
    if len(short) > 1:  # one batched group: a few matmuls per layer for any number of them
        groups = [g for g in groups if not isinstance(g, ShortChunk)] + [_short_batch(short)]
    if decode_ctx:
        decode = _decode(decode_rows, decode_ctx, sliding_window, device, decode_hidden,
                         config.cascade_min_shared)
        if any(sh is not None for sh in decode_shift):
            decode = replace(decode, shared=0,
                             key_shift=_pad_rows(decode_shift, decode_ctx).to(device))
        groups.append(decode)
    return AttentionMetadata(torch.cat(slot_chunks).to(device), groups, kv_caches,
                             sliding_window, config,
                             None if deltas is None else deltas.to(device))


def _table_slots(table: Sequence[int], length: int, block_size: int) -> torch.Tensor:
    """Slots of context indices 0..length-1 of one block table."""
    blocks = torch.as_tensor(list(table[: -(-length // block_size)]), dtype=torch.long)
    return (blocks[:, None] * block_size + torch.arange(block_size)).flatten()[:length]


def _context(s: SeqSlice, block_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(slots of the whole context: prefix segments then own tokens, slots of own tokens,
    the position shift of each context column (long, 0 for unshifted keys))."""
    own = _table_slots(s.block_table, s.num_computed + s.num_new, block_size)
    if not s.prefix:
        return own, own, torch.zeros(0, dtype=torch.long)
    parts, shifts = [], []
    for table, stop, start, shift in map(segment, s.prefix):
        parts.append(_table_slots(table, stop, block_size)[start:])
        shifts.append(torch.full((stop - start,), shift, dtype=torch.long))
    shifts.append(torch.zeros(own.shape[0], dtype=torch.long))
    return torch.cat([*parts, own]), own, torch.cat(shifts)


def _shifted(g: Prefill | ShortChunk, shift: torch.Tensor) -> Prefill | ShortChunk:
    """A chunk group whose context has shifted keys: they are gathered (no runs)."""
    if isinstance(g, ShortChunk):
        return replace(g, runs=None, key_shift=shift)
    return replace(g, key_shift=shift)


def _pad_rows(shifts: list[torch.Tensor | None], contexts: list[torch.Tensor]) -> torch.Tensor:
    """Per-row shift indices padded into (B, L) (0: unshifted, padding too)."""
    out = torch.zeros(len(contexts), max(c.shape[0] for c in contexts), dtype=torch.long)
    for b, sh in enumerate(shifts):
        if sh is not None:
            out[b, : sh.shape[0]] = sh
    return out


def _masks(
    q_ctx: torch.Tensor, length: int, window: int | None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Causal (and sliding) masks (B, Q, L) for query context indices q_ctx (B, Q)."""
    key_ctx = torch.arange(length)[None, None, :]
    qc = q_ctx[:, :, None]
    mask = key_ctx <= qc
    sliding = mask & (key_ctx > qc - window) if window else None
    return mask, sliding


def slot_runs(slots: torch.Tensor, most: int = 4) -> tuple[tuple[int, int], ...] | None:
    """``slots`` as (first slot, length) ranges of consecutive slots, or None if there are
    more than ``most`` (then a gather is cheaper than many small matmuls)."""
    breaks = ((slots[1:] - slots[:-1]) != 1).nonzero().flatten()
    if breaks.numel() >= most:
        return None
    bounds = [0, *(breaks + 1).tolist(), slots.numel()]
    return tuple((int(slots[a]), b - a) for a, b in zip(bounds, bounds[1:], strict=False))


def open_columns(mask: torch.Tensor) -> int:
    """How many leading key columns of a (Q, L) mask every query sees (never masked)."""
    return int(mask.all(dim=0).long().cumprod(dim=0).sum())


def _fresh(offset: int, s: SeqSlice, window: int | None, device) -> Prefill:
    sliding = None
    if window and s.num_new > window:
        _, sliding = _masks(torch.arange(s.num_new)[None], s.num_new, window)
        sliding = sliding[:, None].to(device)
    return Prefill(offset, offset + s.num_new, None, None, sliding)


def _chunk(offset: int, s: SeqSlice, context: torch.Tensor, window: int | None, device,
           short_limit: int) -> Prefill | ShortChunk:
    """A chunk after cached context (or after a prefix view): path 2 if short, else 1."""
    length = context.shape[0]
    mask, sliding = _masks(torch.arange(length - s.num_new, length)[None], length, window)
    if s.prefix_visible is not None:  # hide prefix keys [visible[i], prefix_len) from query i
        key = torch.arange(length)[None, None, :]
        vis = torch.tensor(s.prefix_visible)[None, :, None]
        hidden = (key >= vis) & (key < s.prefix_len)
        mask = mask & ~hidden
        sliding = None if sliding is None else sliding & ~hidden
    start, stop = offset, offset + s.num_new
    if s.num_new > short_limit:
        return Prefill(start, stop, context.to(device), mask[:, None].to(device),
                       None if sliding is None else sliding[:, None].to(device))
    cols = (open_columns(mask[0]), open_columns(mask[0] if sliding is None else sliding[0]))
    return ShortChunk(start, stop, context.to(device), slot_runs(context), mask[0].to(device),
                      None if sliding is None else sliding[0].to(device), cols)


def _short_batch(chunks: list[ShortChunk]) -> ShortBatch:
    """Short chunks merged into one padded batch (``few_query.short_batch``)."""
    qmax = max(g.stop - g.start for g in chunks)
    lmax = max(g.key_slots.shape[0] for g in chunks)
    dev = chunks[0].key_slots.device
    rows = torch.empty(len(chunks), qmax, dtype=torch.long, device=dev)
    key_slots = torch.zeros(len(chunks), lmax, dtype=torch.long, device=dev)
    windowed = any(g.sliding_mask is not None for g in chunks)
    shifted = any(g.key_shift is not None for g in chunks)
    key_shift = torch.zeros(len(chunks), lmax, dtype=torch.long, device=dev) if shifted else None
    masks = [torch.zeros(len(chunks), qmax, lmax, dtype=torch.bool, device=dev)
             for _ in range(1 + windowed)]
    for i, g in enumerate(chunks):
        n, length = g.stop - g.start, g.key_slots.shape[0]
        rows[i, :n] = torch.arange(g.start, g.stop, device=dev)
        rows[i, n:] = g.start
        key_slots[i, :length] = g.key_slots
        if key_shift is not None and g.key_shift is not None:
            key_shift[i, :length] = g.key_shift
        for m, src in zip(masks, (g.mask, g.sliding_mask if g.sliding_mask is not None else g.mask),
                          strict=False):
            m[i, :n, :length] = src
            m[i, n:, 0] = True  # padding queries: one key, output dropped
    real = torch.tensor([j < g.stop - g.start for g in chunks for j in range(qmax)], device=dev)
    return ShortBatch(rows, real.nonzero().flatten(), key_slots, masks[0],
                      masks[1] if windowed else None, key_shift)


def _decode(
    rows: list[int], contexts: list[torch.Tensor], window: int | None, device,
    hidden: list[tuple[int, int]], cascade_min_shared: int,
) -> Decode:
    lengths = torch.tensor([c.shape[0] for c in contexts])
    key_slots = torch.zeros(len(contexts), int(lengths.max()), dtype=torch.long)
    for b, c in enumerate(contexts):
        key_slots[b, : c.shape[0]] = c
    mask, sliding = _masks((lengths - 1)[:, None], key_slots.shape[1], window)  # (B, 1, L)
    for b, (lo, hi) in enumerate(hidden):
        if lo < hi:  # prefix keys this query may not see
            mask[b, :, lo:hi] = False
            if sliding is not None:
                sliding[b, :, lo:hi] = False
    shared = 0
    if len(contexts) > 1 and not any(lo < hi for lo, hi in hidden) and window is None:
        same = (key_slots == key_slots[:1]).all(dim=0)[: int(lengths.min()) - 1]
        shared = int(same.long().cumprod(0).sum())  # never a row's own last (new) key
    return Decode(
        key_slots.to(device), mask[:, None].to(device),
        None if sliding is None else sliding[:, None].to(device),
        torch.tensor(rows, dtype=torch.long, device=device),
        shared if shared >= cascade_min_shared else 0,
    )
