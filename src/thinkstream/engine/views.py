"""KV views: the one rule the scheduler asks about sequences that read other sequences' KV.

A view (``Sequence.kv_prefix``: ``(source seq_id, num_tokens)`` segments attended before a
sequence's own tokens, or ``(seq_id, stop, start, shift)``: tokens ``[start, stop)`` at
positions shifted by ``shift``) takes no block references, so the scheduler keeps it safe by one
rule, checked when a step is planned and again after any preemption in it:

    a viewer's tokens that see a prefix are computed in a step only if every source it
    views is resident and has computed at least the viewed tokens by the end of the step
    (``computable``: before it, or in it: a step writes the keys and values of all its
    tokens into the cache before any of them attends, layer by layer, so a viewer waiting
    on its source's tokens of this step is planned after the others), and after a
    preemption in the step only sources computed before it count; a viewer stalled on an
    evicted source is preempted too (it recomputes exactly); its leading tokens that see
    no prefix need nothing (so two sequences that view each other, an answer viewing its
    notes and the notes viewing the input, recompute without waiting on each other).

A preempted source therefore stalls its viewers until it has recomputed (a parked source
that a viewer waits for is woken); a viewer's own KV stays valid, and since each of its
tokens records how much of the prefix it saw (``kv_prefix_visible``), a preempted viewer
recomputes exactly. Viewer tokens that see a prefix never enter the prefix cache (their KV
depends on another sequence), so lookups and commits stop at ``num_shareable_tokens``.
Truncating a source below a view is the owner's job to prevent (``LLMEngine`` refuses).

Progress: a viewer never preempts a source it views (it would stall on the blocks freed
for it, a cycle), and a viewer that cannot fit beside its sources even with the pool to
themselves is *starved* (``never_fits``), for its owner to shrink.

This module imports no torch.
"""

from __future__ import annotations

from collections.abc import Iterable

from thinkstream.engine.request import Sequence
from thinkstream.kv.manager import KVCacheManager


class ViewRule:
    """Answers, for one step at a time (``begin``), whether and how much a sequence may
    compute given the sources it views; sequences without views are never limited."""

    def __init__(self, kv: KVCacheManager) -> None:
        self.kv = kv
        self._live: dict[str, Sequence] = {}

    def begin(self, live: dict[str, Sequence], viewers: Iterable[Sequence],
              parked: list[Sequence]) -> list[Sequence]:
        """Take the live sequences by id for this step (the scheduler's own index, kept as
        sequences come and go: never rebuilt per step); returns the parked sources that a
        viewer with tokens to compute waits for (the scheduler wakes them). ``viewers``:
        every live sequence that may view another, in the scheduler's order."""
        self._live = live
        wake = []
        for seq in viewers:
            if seq.kv_prefix and seq.num_pending_tokens:
                wake += [self._live[sid] for sid in self.sources(seq)
                         if sid in self._live and self._live[sid] in parked]
        return wake

    @staticmethod
    def sources(seq: Sequence) -> set[str]:
        return {sid for sid, *_ in seq.kv_prefix}

    @staticmethod
    def waits(seq: Sequence) -> bool:
        """A viewer with tokens to compute: planned after the others when it waits on them."""
        return bool(seq.kv_prefix) and seq.num_pending_tokens > 0

    def source_evicted(self, seq: Sequence) -> bool:
        return any(sid not in self._live or not self.kv.has(sid) for sid, *_ in seq.kv_prefix)

    def admissible(self, seq: Sequence) -> bool:
        """False for a viewer with nothing computable until an evicted source is back."""
        return not (seq.kv_prefix and not seq.num_shareable_tokens and self.source_evicted(seq))

    def computable(self, seq: Sequence, planned: dict[str, int] | None = None) -> int:
        """How many pending tokens of ``seq`` its views allow computing now; ``planned``:
        tokens each sequence computes in this step (their KV is written before any
        attention reads it)."""
        for sid, k, *_ in seq.kv_prefix:
            src = self._live.get(sid)
            done = 0 if src is None else src.num_computed_tokens + (planned or {}).get(sid, 0)
            if src is None or not self.kv.has(sid) or done < k:
                return max(seq.num_shareable_tokens - seq.num_computed_tokens, 0)
        return seq.num_pending_tokens

    def never_fits(self, seq: Sequence, n: int) -> bool:
        """Whether ``seq`` computing ``n`` more tokens needs more blocks than the pool has
        while the sources it views hold theirs (both must be resident at once)."""
        need = self.kv.blocks_for(seq.num_computed_tokens + n)
        for sid, k, *_ in seq.kv_prefix:
            src = self._live.get(sid)
            held = len(self.kv.block_table(sid)) if self.kv.has(sid) else 0
            need += max(held, self.kv.blocks_for(min(k, src.num_tokens) if src else k))
        return need > self.kv.num_blocks
