"""Continuous batching under one token budget per step.

One principle covers prefill, chunked prefill, prefix-cache hits, decodes and (later)
streaming input and draft tokens: every sequence has ``num_tokens`` and
``num_computed_tokens``; a step decides how many of each sequence's pending tokens to
compute. Running sequences go first (oldest first), then waiting ones are admitted while
budget, sequence slots and KV blocks allow. When blocks run out, the most recently admitted
running sequence is preempted by recompute: its blocks are freed (full ones stay in the
prefix cache) and it goes back to the front of the waiting queue.

Forward progress: every sequence fits the pool alone (``LLMEngine`` caps the context at
the pool's tokens), so a preempted one is re-admitted once the others finish. A waiting
sequence (or admission group: a fork's children) that does not fit now is passed over by at
most ``max_num_seqs`` admissions, then admission waits for it (no head-of-line blocking, no
starvation). A sequence is never
preempted for a viewer of it (the viewer would stall on the blocks freed for it: a cycle),
and one that cannot fit even with only its sources resident is reported as ``starved``
for its owner to shrink or end, never left waiting.

Two hooks serve streaming input without a branch per feature. ``priority`` (a key function,
smaller first; see ``engine.policy``) orders running and waiting sequences each step, so
the last in line is preempted first (the waiting queue, ``engine.waiting``, keeps that order
in O(log n) a sequence: a waiting sequence's key is read when it enters the queue, when
``wake`` or ``truncate`` touch it, and every step for an open input or a feature's). And an *idle open input* (a session whose input is
still arriving and has nothing left to compute) holds blocks it does not need now: under
pressure it is preempted before anything else and *parked*, out of the waiting queue, until
``wake`` says its input changed; it then recomputes from the prefix cache. Idle sessions
therefore never starve ordinary requests, of blocks or of sequence slots, nor a fork's
children (a root waiting for its children gives way to another tree's). One that a running
sequence views (a root under its running children) is not idle: parking it would stall
them, so it is never chosen.

KV views (a sequence reading other sequences' KV: a session's reasoning, its answer) follow
one rule the scheduler asks about, not a branch per feature: ``engine.views.ViewRule``
(how many of a sequence's tokens its views allow now, whether it can ever fit beside its
sources, which sequences it must never preempt).

This module imports no torch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from thinkstream.engine.request import SeqStatus, Sequence
from thinkstream.engine.views import ViewRule
from thinkstream.engine.waiting import WaitQueue
from thinkstream.kv.manager import KVCacheManager
from thinkstream.kv.prefix import HashCache


@dataclass(frozen=True)
class SchedulerConfig:
    max_num_seqs: int = 64
    max_num_batched_tokens: int = 1024
    max_model_len: int = 2048
    enable_prefix_caching: bool = True

    def __post_init__(self) -> None:
        for name in ("max_num_seqs", "max_num_batched_tokens", "max_model_len"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")


@dataclass(frozen=True)
class ScheduledSeq:
    seq: Sequence
    num_new_tokens: int

    @property
    def completes(self) -> bool:
        """After this step every token of the sequence is computed (drafts past them may
        be computed too: the sampler verifies those)."""
        return self.seq.num_computed_tokens + self.num_new_tokens >= self.seq.num_tokens


@dataclass
class SchedulerOutput:
    scheduled: list[ScheduledSeq]
    block_copies: list[tuple[int, int]] = field(default_factory=list)  # run before the forward
    preempted: list[Sequence] = field(default_factory=list)
    # Sequences that can never get their blocks: together with the sources they view they
    # need more than the whole pool (``ViewRule.never_fits``). The owner must shrink or
    # end them (``LLMEngine`` asks the sequence's feature hook, else ends it with "length").
    starved: list[Sequence] = field(default_factory=list)
    # Sequences admitted with nothing to compute yet (an open input whose prompt was all a
    # prefix-cache hit): the step changed state, and a viewer waiting on it may run next.
    num_admitted_idle: int = 0

    @property
    def num_tokens(self) -> int:
        return sum(s.num_new_tokens for s in self.scheduled)


class Scheduler:
    def __init__(self, cfg: SchedulerConfig, kv: KVCacheManager,
                 priority: Callable[[Sequence], Any] | None = None) -> None:
        self.cfg = cfg
        self.kv = kv
        self.priority = priority
        self.waiting = WaitQueue(priority)  # admission order, O(log n) a sequence
        self.running: list[Sequence] = []
        self.parked: list[Sequence] = []  # idle open inputs preempted under pressure
        self._live: dict[str, Sequence] = {}  # all three, by id
        self._volatile: set[str] = set()  # keys and views re-read every step (``_plain``)
        self.views = ViewRule(kv)
        self._pending_copies: list[tuple[int, int]] = []
        # Admissions that passed each waiting sequence while it did not fit (see ``_admit``).
        self._passed: dict[str, int] = {}

    # ------------------------------------------------------------------ queues
    def add(self, seq: Sequence, volatile: bool = False) -> None:
        """Queue a new sequence; ``volatile``: its priority key or views may change while it
        waits without the scheduler being told (a feature's sequence), so they are read
        again every step."""
        if volatile:
            self._volatile.add(seq.seq_id)
        self._live[seq.seq_id] = seq
        self._enqueue(seq)

    def _enqueue(self, seq: Sequence, front: bool = False) -> None:
        plain = self._plain(seq)
        (self.waiting.appendleft if front else self.waiting.append)(seq, not plain)

    def _plain(self, seq: Sequence) -> bool:
        """A sequence whose key and views only the scheduler changes while it waits, and
        that always has tokens to compute and fits the pool alone: an ordinary request."""
        return (seq.input_closed and not seq.kv_prefix and seq.admit_group is None
                and seq.compute_limit is None and seq.num_pending_tokens > 0
                and self.kv.blocks_for(seq.num_tokens) <= self.kv.num_blocks
                and seq.seq_id not in self._volatile)

    def has_work(self) -> bool:
        """Whether a step could compute something (idle open inputs and parked ones can't)."""
        return bool(self.waiting) or any(s.num_pending_tokens for s in self.running)

    def sequences(self) -> list[Sequence]:
        return [*self.running, *self.waiting, *self.parked]

    def wake(self, seq: Sequence) -> None:
        """A parked sequence's input changed: queue it to recompute. A waiting one is
        re-keyed (and read again every step from now on)."""
        if seq in self.parked:
            self.parked.remove(seq)
            self._enqueue(seq)
        elif seq in self.waiting:
            self._volatile.add(seq.seq_id)
            self.waiting.mark_volatile(seq)
            self.waiting.touch(seq)

    @staticmethod
    def _idle_open(seq: Sequence) -> bool:
        return not seq.input_closed and seq.num_pending_tokens == 0

    # ---------------------------------------------------------------- schedule
    def schedule(self) -> SchedulerOutput:
        budget = self.cfg.max_num_batched_tokens
        out = SchedulerOutput(scheduled=[], block_copies=self._pending_copies)
        self._pending_copies = []
        if self.priority is not None:
            self.running.sort(key=self.priority)
        self.waiting.sort()
        viewers = [*self.running, *self.waiting.volatile(), *self.parked] if self.parked else []
        for src in self.views.begin(self._live, viewers, self.parked):
            self.wake(src)  # a viewer waits for it
        queue, kept, stalled = list(self.running), [], []
        while queue:
            seq = queue.pop(0)
            n = min(seq.num_pending_tokens, budget, self.views.computable(seq))
            if n == 0 and seq.num_pending_tokens and self.views.source_evicted(seq):
                self._preempt(seq)  # stalled on an evicted source: give its blocks back
                out.preempted.append(seq)
                continue
            if n == 0:
                kept.append(seq)
                if self.views.waits(seq):
                    stalled.append(seq)
                continue
            if self.views.never_fits(seq, n):
                kept.append(seq)
                out.starved.append(seq)
                continue
            while not self.kv.allocate(seq.seq_id, seq.num_computed_tokens + n):
                if seq.draft_token_ids:  # drafts are optional: dropped before any preemption
                    seq.draft_token_ids = []
                    n = min(n, seq.num_pending_tokens)
                    continue
                victim = self._pop_victim(seq, kept, queue) or seq
                self._preempt(victim)
                out.preempted.append(victim)
                if victim is seq:
                    break
            else:
                kept.append(seq)
                out.scheduled.append(ScheduledSeq(seq, n))
                budget -= n
        self.running = kept
        if not out.preempted:
            budget = self._plan_viewers(out, stalled, budget)
            budget = self._admit(out, budget)
        if out.preempted:  # a source preempted in this step takes its viewers' turn with it
            clipped = [ScheduledSeq(s.seq, min(s.num_new_tokens, self.views.computable(s.seq)))
                       for s in out.scheduled]
            out.scheduled = [s for s in clipped if s.num_new_tokens > 0]
        return out

    def _plan_viewers(self, out: SchedulerOutput, stalled: list[Sequence], budget: int) -> int:
        """Viewers that waited only for tokens their sources compute in this step join it
        (a note starting on the input chunk computed now, an answer on the request its
        notes just wrote). Nothing is preempted for them: they wait if memory is short."""
        planned = {s.seq.seq_id: s.num_new_tokens for s in out.scheduled}
        for seq in stalled:
            n = min(seq.num_pending_tokens, budget, self.views.computable(seq, planned))
            if n > 0 and self.kv.allocate(seq.seq_id, seq.num_computed_tokens + n):
                out.scheduled.append(ScheduledSeq(seq, n))
                planned[seq.seq_id] = n
                budget -= n
        return budget

    def _admit(self, out: SchedulerOutput, budget: int) -> int:
        """Admit waiting sequences in order while budget, slots and blocks allow.

        A sequence that does not fit now is passed over (no head-of-line blocking), but
        only ``max_num_seqs`` admissions may pass it; then admission waits for it, so it
        is admitted once running sequences finish (each fits the pool alone). An admission
        group (``Sequence.admit_group``: a fork's children) is passed over the same way,
        counted once for the group, while some running sequence computes (idle ones alone
        free nothing: then the group keeps waiting without holding up the queue). One that can
        never fit is reported in ``out.starved`` instead of waiting forever."""
        computing: set[tuple[int, ...]] = set()  # first blocks computed from scratch this step
        groups: set[str] = set()  # admission groups that fit this step
        # passed over this step, in order: they keep their places (the front of the queue),
        # unless a group was pulled forward: then all of them go back at the front, in order
        deferred: dict[Sequence, None] = {}
        pulled = False
        num_volatile = 0  # volatile ones among ``deferred`` and ``seq``
        blocked: list[str] = []  # passed over for want of blocks (``_pass_key``)
        scan = self.waiting.scan()
        seq = next(scan, None)
        while seq is not None and budget > 0:
            if len(self.running) >= self.cfg.max_num_seqs:
                # slots full: an idle open input gives its slot to work that can compute
                if not (seq.num_pending_tokens and self._idle_gives_way(seq, out)):
                    break
                continue
            if not self.views.admissible(seq):
                deferred[seq] = None
                seq = next(scan, None)
                continue
            if seq.admit_group is not None and seq.admit_group not in groups:
                if not self._group_fits(seq.admit_group, deferred) and self._idle_gives_way(seq, out):
                    continue  # an idle open input it does not view made room: try again
                if not self._group_fits(seq.admit_group, deferred):  # all of them wait, in order
                    if self._passed.get(_pass_key(seq), 0) >= self.cfg.max_num_seqs and any(
                            s.input_closed or s.num_pending_tokens for s in self.running):
                        break  # passed over often enough, and blocks will come free
                    blocked.append(_pass_key(seq))
                    for s in self.waiting.group(seq.admit_group):
                        if s not in deferred:
                            self.waiting.remove(s)
                            deferred[s] = None
                    pulled = True
                    seq = next(scan, None)
                    continue
                groups.add(seq.admit_group)
                self._passed.pop(_pass_key(seq), None)
            if not self.kv.has(seq.seq_id) and not self._lookup(seq, computing):
                break  # its prefix is being computed now: next step it is a cache hit
            n = min(seq.num_pending_tokens, budget, self.views.computable(seq))
            never = self.views.never_fits(seq, n)
            if never or not self.kv.allocate(seq.seq_id, seq.num_computed_tokens + n):
                if not never and self._idle_gives_way(seq, out):
                    continue  # then try again
                self.kv.free(seq.seq_id)  # give back the prefix hits while it waits
                seq.num_computed_tokens = 0  # as before the lookup: its key is unchanged
                if never:
                    out.starved.append(seq)
                elif self._passed.get(seq.seq_id, 0) >= self.cfg.max_num_seqs:
                    break  # passed over often enough: admission waits for it now
                else:
                    blocked.append(seq.seq_id)
                deferred[seq] = None
                num_volatile += self.waiting.is_volatile(seq)
                if not never and self._rest_cannot_fit(num_volatile):
                    break
                seq = next(scan, None)
                continue
            for key in blocked:
                self._passed[key] = self._passed.get(key, 0) + 1
            self._passed.pop(seq.seq_id, None)
            self.waiting.remove(seq)
            seq.status = SeqStatus.RUNNING
            seq.prefix_hashes = None  # looked up for the last time
            self.running.append(seq)
            if n:
                out.scheduled.append(ScheduledSeq(seq, n))
                budget -= n
            else:
                out.num_admitted_idle += 1
            seq = next(scan, None)
        if pulled:
            for s in deferred:
                if s in self.waiting:
                    self.waiting.remove(s)
            for s in reversed(deferred):
                self._enqueue(s, front=True)
        return budget

    def _rest_cannot_fit(self, num_volatile: int) -> bool:
        """After a sequence failed for want of blocks: whether every other waiting one
        would too, so trying them is skipped (it was O(waiting) a step while the pool is
        full). True when no block is free or cached, every waiting sequence is plain (it
        has tokens to compute, so it needs a new block, and views nothing) and no running
        idle open input could give way. The lookups skipped would only have counted
        prefix-cache queries (every block is in use: nothing moves in the pool)."""
        return (self.kv.num_free_blocks == 0 and self.waiting.num_volatile == num_volatile
                and not any(self._idle_open(s) for s in self.running))

    def _group_fits(self, group: str, deferred: dict[Sequence, None]) -> bool:
        """Whether every waiting member of ``group`` (not passed over in this step) fits now:
        sequence slots, and blocks for its pending tokens (members compute no cached
        prefix: they view their parent)."""
        members = [s for s in self.waiting.group(group) if s not in deferred]
        need = sum(self.kv.blocks_for(s.num_tokens) for s in members)
        return (len(self.running) + len(members) <= self.cfg.max_num_seqs
                and need <= self.kv.num_free_blocks)

    def _lookup(self, seq: Sequence, computing: set[tuple[int, ...]]) -> bool:
        """Start ``seq``'s block table on its longest cached prefix. False (nothing taken)
        when its first block is being computed from scratch in this step by another
        sequence: next step that is a cache hit."""
        bs = self.kv.block_size
        use_cache = self.cfg.enable_prefix_caching and not seq.wants_prompt_logprobs
        head = (seq.salt, *seq.token_ids[:bs]) if seq.num_shareable_tokens > bs else None
        if use_cache and head in computing:
            return False
        ids = seq.token_ids[: seq.num_shareable_tokens]
        # kept while it waits (its tokens rarely change): a lookup is a dict probe per block
        hashes = seq.prefix_hashes if isinstance(seq.prefix_hashes, HashCache) else HashCache()
        seq.prefix_hashes = hashes
        seq.num_computed_tokens = self.kv.lookup_prefix(seq.seq_id, ids, seq.salt, hashes) if use_cache else 0
        if seq.num_cached_tokens < 0:
            seq.num_cached_tokens = seq.num_computed_tokens
        if not use_cache:
            self.kv.allocate(seq.seq_id, 0)
        elif seq.num_computed_tokens == 0 and head is not None:
            computing.add(head)
        return True

    def _idle_gives_way(self, seq: Sequence, out: SchedulerOutput) -> bool:
        """Park a running idle open input (not one ``seq`` views) for ``seq``; False if none."""
        idle = self._pop_victim(seq, self.running, [], idle_only=True)
        if idle is None:
            return False
        self._preempt(idle)
        out.preempted.append(idle)
        return True

    def _pop_victim(self, seq: Sequence, kept: list[Sequence], queue: list[Sequence],
                    idle_only: bool = False) -> Sequence | None:
        """Remove and return what ``seq`` preempts to get blocks: the last idle open input
        in ``kept`` or ``queue`` (searched last first), else (unless ``idle_only``) the last
        of ``queue``. Never a source ``seq`` views: preempting it would stall ``seq`` on
        the blocks just freed for it, a preemption cycle (``None``: ``seq`` gives way). An
        idle open input that a running sequence views is not idle (a fork's root under its
        children): parked, it would stall them too, so it is no idle victim."""
        sources = self.views.sources(seq)
        idle = [(seqs, i) for seqs in (queue, kept) for i in range(len(seqs) - 1, -1, -1)
                if self._idle_open(seqs[i])]
        if idle:  # what running sequences view: only then (it costs a pass over their views,
            # and admission asks once per waiting sequence that does not fit)
            barred = sources | {sid for s in self.running if s is not seq
                                for sid in self.views.sources(s)}
            for seqs, i in idle:
                if seqs[i].seq_id not in barred:
                    return seqs.pop(i)
        if not idle_only:
            for i in range(len(queue) - 1, -1, -1):
                if queue[i].seq_id not in sources:
                    return queue.pop(i)
        return None

    def _preempt(self, seq: Sequence) -> None:
        seq.draft_token_ids = []
        idle = self._idle_open(seq)
        self.kv.free(seq.seq_id)
        seq.num_computed_tokens = 0
        seq.num_preemptions += 1
        if seq.prompt_logprobs is not None and len(seq.prompt_logprobs) < seq.num_prompt_tokens:
            seq.prompt_logprobs = None  # recomputed from the start with the prompt
        seq.status = SeqStatus.WAITING
        if idle:
            self.parked.append(seq)  # recomputed when its input changes (``wake``)
        else:
            self._enqueue(seq, front=True)

    # ------------------------------------------------------------ after forward
    def commit(self, out: SchedulerOutput) -> None:
        """The forward has written the KV of every scheduled token."""
        for s in out.scheduled:
            seq = s.seq
            seq.num_computed_tokens += s.num_new_tokens
            shareable = min(seq.num_computed_tokens, seq.num_shareable_tokens)
            self.kv.commit(seq.seq_id, seq.token_ids, shareable)

    def fork_children(self, parent: Sequence) -> list[Sequence]:
        """Fork the children of a sequence whose prompt was just computed (n > 1): they share
        its full blocks, copy its partial one, and sample their first token from its logits.
        Children that don't fit in memory wait and recompute (from the prefix cache)."""
        forked: list[Sequence] = []
        for child in parent.fork_children:
            if len(self.running) < self.cfg.max_num_seqs and self.kv.can_fork(
                parent.seq_id, parent.num_computed_tokens
            ):
                self._pending_copies += self.kv.fork(
                    parent.seq_id, child.seq_id, parent.num_computed_tokens
                )
                child.num_computed_tokens = parent.num_computed_tokens
                child.status = SeqStatus.RUNNING
                self.running.append(child)
                forked.append(child)
            else:
                self._enqueue(child)
            self._live[child.seq_id] = child
        parent.fork_children = []
        return forked

    def append_token(self, seq: Sequence, token_id: int, eos_ids: frozenset[int]) -> None:
        """Record a sampled token and finish the sequence on a token-level stop."""
        seq.token_ids.append(token_id)
        p = seq.params
        if seq.num_output_tokens >= p.min_tokens and not seq.status.finished:
            if token_id in p.stop_token_ids:
                seq.stop_reason = token_id
                self.finish(seq, SeqStatus.FINISHED_STOPPED)
                return
            if not p.ignore_eos and token_id in eos_ids:
                self.finish(seq, SeqStatus.FINISHED_STOPPED)
                return
        if seq.num_output_tokens >= seq.max_tokens or seq.num_tokens >= self.cfg.max_model_len:
            self.finish(seq, SeqStatus.FINISHED_LENGTH)

    def truncate(self, seq: Sequence, num_tokens: int) -> None:
        """Drop the computed KV past ``num_tokens`` (copies run before the next forward)."""
        self.waiting.touch(seq)  # a key may read the computed tokens
        if not self.kv.has(seq.seq_id):
            seq.num_computed_tokens = 0
        elif self.kv.can_truncate(seq.seq_id, num_tokens):
            self._pending_copies += self.kv.truncate(seq.seq_id, num_tokens)
            seq.num_computed_tokens = min(seq.num_computed_tokens, num_tokens)
        else:  # no block for the copy-on-write: recompute from the prefix cache instead
            self.kv.free(seq.seq_id)
            seq.num_computed_tokens = 0

    def settle_drafts(self, seq: Sequence, num_accepted: int) -> None:
        """A step verified ``seq``'s drafts and keeps the first ``num_accepted`` (about to
        be appended to ``token_ids``): the KV computed for the rejected ones is rolled
        back, freeing exactly the blocks they took, and the drafts are cleared (vLLM v1:
        rejected draft tokens are subtracted from the computed ones afterwards). Drafts
        live one step: a sequence that did not sample calls this with 0.

            before: | computed ....... | d1 .. da | d(a+1) .. dm |   (drafts computed)
            after:  | computed .................. |                  (the rest rolled back)
        """
        seq.draft_token_ids = []
        keep = seq.num_tokens + num_accepted
        if seq.num_computed_tokens > keep and not seq.status.finished:
            self.truncate(seq, keep)

    def finish(self, seq: Sequence, status: SeqStatus) -> None:
        """End a sequence wherever it is; every block it held is released."""
        if seq.status.finished:
            return
        seq.draft_token_ids = []
        seq.status = status
        if seq in self.running:
            self.running.remove(seq)
        if seq in self.waiting:
            self.waiting.remove(seq)
        if seq in self.parked:
            self.parked.remove(seq)
        if self._live.get(seq.seq_id) is seq:
            del self._live[seq.seq_id]
        self._volatile.discard(seq.seq_id)
        self.kv.free(seq.seq_id)
        self._passed.pop(seq.seq_id, None)
        if seq.admit_group is not None and not self.waiting.has_group(seq.admit_group):
            self._passed.pop(_pass_key(seq), None)  # no member left waiting
        for child in seq.fork_children:
            self.finish(child, status)
        seq.fork_children = []


def _pass_key(seq: Sequence) -> str:
    """What pass-overs are counted for: the sequence, or its admission group as a whole."""
    return seq.seq_id if seq.admit_group is None else f"group:{seq.admit_group}"
