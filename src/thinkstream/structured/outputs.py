"""Structured outputs in the engine step: one matcher per constrained sequence, its next-token
mask computed while the forward runs, the sampled token advancing it (a ``StepHook``).

    before_forward  the sequences that sample this step are known (their last token is
                    computed now) and so are their matchers' states (every token they
                    sampled was accepted in an earlier step): their masks are computed on a
                    worker thread, beside the forward (llguidance releases the GIL)
    token_mask      after the forward: the masks, one packed row per sampled sequence (rows
                    of unconstrained sequences allow everything); the sampler sets what a
                    row disallows to -inf before temperature, top-k/p and the draw
    on_token        the sampled token advances the sequence's matcher; a grammar that can
                    take nothing more ends the sequence ("stop"), as does EOS, which the
                    mask allows only where the grammar can end
    on_finish       the request's matchers are dropped

Matchers advance only on sampled tokens, so a preempted sequence that recomputes its KV, or
a step whose sample a hook voids, never moves one twice. Each sequence has its own matcher,
made when it first samples from the compiled grammar's template and fed the output tokens it
already has: the children of ``n > 1`` (forked before any output) start where the parent
started and diverge with their own tokens.
"""

from __future__ import annotations

import time
from collections.abc import Collection
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

import llguidance
import torch

from thinkstream.engine.hooks import StepHook
from thinkstream.sampling_params import ParamError, SamplingParams, StructuredOutputsParams
from thinkstream.structured.compiler import ConstraintError, GrammarCompiler
from thinkstream.structured.mask import bitmask_width, full_bitmask

if TYPE_CHECKING:
    from thinkstream.engine.request import Sequence
    from thinkstream.engine.scheduler import ScheduledSeq

_Masks = tuple[dict[str, int], torch.Tensor]  # seq id -> row of the packed masks


@dataclass
class MaskTimes:
    """Where mask time goes (``python -m thinkstream.bench.grammar --engine``): seconds
    computing masks, and seconds the sampler waited for them after the forward (the part
    the forward did not hide)."""

    masks: int = 0
    compute_s: float = 0.0
    wait_s: float = 0.0


class StructuredOutputs(StepHook):
    """The engine's structured-outputs hook (see the module doc); ``overlap=False`` computes
    the masks on the engine thread just before the forward instead."""

    def __init__(self, compiler: GrammarCompiler, overlap: bool = True) -> None:
        self.compiler = compiler
        self.overlap = overlap  # False: masks computed before the forward, on the engine thread
        self.width = bitmask_width(compiler.vocab_size)
        self._matchers: dict[str, dict[str, llguidance.LLMatcher]] = {}  # request -> seq -> m
        self._pending: Future[_Masks] | _Masks | None = None
        self._thread: ThreadPoolExecutor | None = None
        self.times = MaskTimes()

    def compile(self, constraint: StructuredOutputsParams) -> None:
        """Compile a constraint for this model (cached; safe from any thread: the server
        validates requests with it). Raises ``ConstraintError`` (``.field``, ``.reason``)."""
        self.compiler.compile(constraint)

    def check_params(self, params: SamplingParams) -> None:
        """``compile`` for a request being made: a ``ParamError`` on ``structured_outputs``."""
        try:
            if params.structured_outputs is not None:
                self.compile(params.structured_outputs)
        except ConstraintError as exc:
            raise ParamError("structured_outputs", str(exc)) from None

    # ------------------------------------------------------------------ step
    def before_forward(self, scheduled: list[ScheduledSeq]) -> None:
        self._collect()  # a step that raised may have left one behind
        seqs = [q for s in scheduled if s.completes and s.seq.wants_sample
                for q in (s.seq, *s.seq.fork_children) if _constrained(q)]
        if not seqs:
            return
        work = [(q.seq_id, self._matcher(q)) for q in seqs]
        if not self.overlap:
            self._pending = self._fill(work)
            return
        if self._thread is None:
            self._thread = ThreadPoolExecutor(1, "thinkstream-grammar")
        self._pending = self._thread.submit(self._fill, work)

    def token_mask(self, seqs: list[Sequence]) -> torch.Tensor | None:
        masks = self._collect()
        rows = [i for i, q in enumerate(seqs) if _constrained(q)]
        if not rows:
            return None
        out = full_bitmask(len(seqs), self.compiler.vocab_size)
        index, computed = masks if masks is not None else ({}, None)
        known = [(i, index[seqs[i].seq_id]) for i in rows if seqs[i].seq_id in index]
        if known:
            dst, src = zip(*known, strict=True)
            out[list(dst)] = computed[list(src)]
        for i in rows:
            if seqs[i].seq_id not in index:  # not foreseen before the forward: compute it now
                _fill_row(self._matcher(seqs[i]), out[i])
        return out

    def on_token(self, seq: Sequence, token_id: int) -> bool:
        by_seq = self._matchers.get(seq.request_id)
        matcher = by_seq.get(seq.seq_id) if by_seq is not None else None
        if matcher is None:
            return False
        matcher.consume_token(token_id)  # a refused token (none can be) is an error: it ends
        done = matcher.is_stopped()
        if done or seq.status.finished:
            del by_seq[seq.seq_id]
            if not by_seq:
                del self._matchers[seq.request_id]
        return done

    def on_finish(self, request_id: str) -> None:
        self._matchers.pop(request_id, None)

    def check(self, live_requests: Collection[str]) -> None:
        assert self._matchers.keys() <= set(live_requests), "matchers outlive their requests"
        assert self._pending is None, "token masks computed for a step that never sampled"

    def shutdown(self) -> None:
        if self._thread is not None:
            self._thread.shutdown(wait=True)
            self._thread = None

    # ------------------------------------------------------------------ helpers
    @property
    def num_matchers(self) -> int:
        return sum(len(m) for m in self._matchers.values())

    def _matcher(self, seq: Sequence) -> llguidance.LLMatcher:
        by_seq = self._matchers.setdefault(seq.request_id, {})
        matcher = by_seq.get(seq.seq_id)
        if matcher is None:
            matcher = self.compiler.compile(seq.params.structured_outputs).matcher()
            matcher.consume_tokens(seq.output_token_ids)  # empty unless it sampled before
            by_seq[seq.seq_id] = matcher
        return matcher

    def _fill(self, work: list[tuple[str, llguidance.LLMatcher]]) -> _Masks:
        start = time.perf_counter()
        masks = torch.empty(len(work), self.width, dtype=torch.int32)
        for i, (_, matcher) in enumerate(work):
            _fill_row(matcher, masks[i])
        self.times.masks += len(work)
        self.times.compute_s += time.perf_counter() - start
        return {sid: i for i, (sid, _) in enumerate(work)}, masks

    def _collect(self) -> _Masks | None:
        pending, self._pending = self._pending, None
        if not isinstance(pending, Future):
            return pending
        start = time.perf_counter()
        result = pending.result()
        self.times.wait_s += time.perf_counter() - start
        return result


def _constrained(seq: Sequence) -> bool:
    return seq.params.structured_outputs is not None


def _fill_row(matcher: llguidance.LLMatcher, row: torch.Tensor) -> None:
    """The matcher's next-token mask into ``row`` (contiguous int32; the GIL is released)."""
    matcher.unsafe_compute_mask_ptr(row.data_ptr(), row.numel() * row.element_size())
