"""The fixed points where a feature plugs into ``LLMEngine.step`` (no branch per feature).

A step is four phases: schedule, execute, update, outputs. Features see it through two
small interfaces:

- ``StepHook`` (``LLMEngine.add_hook``): before scheduling a hook may give running
  sequences draft tokens to verify (speculative decoding, ``speculative.decoder``, told
  of each verification by ``on_verified``); before the forward it may start work that
  overlaps it; after the forward, before anything is sampled, it may void the samples of
  sequences whose inputs it changed (the close-time exactness check of streamed input,
  ``streaming.close_check``) and restrict the tokens each sampled row may take (the
  structured-outputs grammar mask, ``structured.outputs``); each sampled token is shown to
  it, and it may end that sequence; when a request ends the hook forgets it; ``check``
  asserts its invariants in ``LLMEngine.check_integrity``.
- ``SequenceOwner`` (``LLMEngine.attach``): a feature that adds sequences of its own to a
  request (a session's reasoning stream, ``thinking.controller``; fork/join threads and
  draft tokens plug in the same way). The engine schedules them like any other; each
  sampled token goes to ``on_token``, which says which request's output it changes; one
  that can never fit the KV pool beside the sequences it views goes to ``on_starved``,
  which must shrink it. Attached sequences end with their request.

This module imports no torch.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Collection, Iterable
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import torch

    from thinkstream.engine.request import Sequence
    from thinkstream.engine.scheduler import ScheduledSeq


class StepHook:
    """No-op defaults; override what the feature needs. The engine calls them in this order
    within a step: ``before_schedule``, (schedule), ``before_forward``, (forward),
    ``after_forward``, ``token_mask``, (sample), ``on_verified`` and ``on_token`` per
    sampled token."""

    def before_schedule(self, running: list[Sequence]) -> None:
        """The step is about to be planned over the ``running`` sequences: a hook may give
        them optional pending work, draft tokens (``Sequence.draft_token_ids``, which the
        scheduler computes like any other pending tokens, drops before preempting anything,
        and the sampler verifies; they last one step)."""

    def on_verified(self, seq: Sequence, drafted: int, accepted: int) -> None:
        """The step computed ``drafted`` draft tokens of ``seq`` and the sampler kept the
        first ``accepted`` (the rest were rolled back); their tokens follow in ``on_token``."""

    def before_forward(self, scheduled: list[ScheduledSeq]) -> None:
        """The step is planned and its forward is about to run: start work that can overlap
        it (on a worker thread) and must be ready before sampling. A sequence samples this
        step when ``s.completes and s.seq.wants_sample`` (so do its ``fork_children``)."""

    def after_forward(self, scheduled: list[ScheduledSeq]) -> set[str]:
        """The step's KV is written, nothing is sampled yet. Returns the ids of sequences
        whose sample this step is void (their inputs were changed; they recompute)."""
        return set()

    def token_mask(self, seqs: list[Sequence]) -> torch.Tensor | None:
        """One token is about to be sampled for each of ``seqs`` (samples voided by
        ``after_forward`` are gone). Returns the tokens each row may take as a packed
        bitmask (``structured.mask``: (len(seqs), ceil(V / 32)) int32, all bits set where a
        row is free), or None to leave every row free. Masks of several hooks are ANDed."""
        return None

    def on_token(self, seq: Sequence, token_id: int) -> bool:
        """``token_id`` was sampled for ``seq`` and appended (token-level stops applied).
        Returns True to end ``seq`` now (finish reason "stop")."""
        return False

    def on_finish(self, request_id: str) -> None:
        """``request_id`` ended (finished or aborted): drop anything held for it."""

    def check(self, live_requests: Collection[str]) -> None:
        """Assert the hook's invariants (``LLMEngine.check_integrity``)."""


class SequenceOwner(Protocol):
    def on_token(self, seq: Sequence, token_id: int) -> str | None:
        """A token was sampled for ``seq`` (already appended). Returns the id of the
        request whose output it changes, or None."""

    def on_starved(self, seq: Sequence) -> None:
        """``seq`` can never get its blocks beside the sequences it views: shrink it."""


def token_mask(hooks: Iterable[StepHook], seqs: list[Sequence]) -> torch.Tensor | None:
    """The tokens each of ``seqs`` may take now: the hooks' masks ANDed (None: any)."""
    masks = [m for h in hooks if (m := h.token_mask(seqs)) is not None]
    return functools.reduce(operator.and_, masks) if masks else None
