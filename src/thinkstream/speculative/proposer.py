"""The proposer interface: one small class per way of guessing a sequence's next tokens.

A proposer reads sequences (their ``token_ids``, prompt and output so far) and returns a
``Draft`` of at most the asked length for each, with a confidence per token (an estimate
of the probability the target agrees, used by the fused proposer to pick between
drafters). Drafts are deterministic guesses (the verifier treats q as one-hot, see
``speculative.verify``). This module imports no torch.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from thinkstream.engine.request import Sequence


@dataclass(frozen=True)
class Draft:
    """Guessed next tokens of one sequence, and how sure the proposer is of each (0..1)."""

    tokens: list[int] = field(default_factory=list)
    confidence: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        if len(self.tokens) != len(self.confidence):
            raise ValueError("a draft needs one confidence per token")

    def __len__(self) -> int:
        return len(self.tokens)


NO_DRAFT = Draft()


class Proposer(ABC):
    """Base class (``propose`` is abstract). ``cost_per_token``: one draft token's cost as a fraction of a target
    decode step at batch 1 (0 for a proposer that runs no model); the adaptive length
    weighs it against the expected gain."""

    name = "proposer"
    cost_per_token = 0.0

    @abstractmethod
    def propose(self, seqs: list[Sequence], lengths: list[int]) -> list[Draft]:
        """At most ``lengths[i]`` draft tokens for ``seqs[i]`` (each sequence's last token
        is sampled and not yet computed). Returns one ``Draft`` per sequence."""

    def free_part(self) -> Proposer | None:
        """A proposer that runs no model and drafts like this one where it can (shadow
        drafts measure requests at length 0 with it), or None."""
        return self if self.cost_per_token == 0 else None

    def continuing(self, seq_id: str, tokens: list[int], k: int) -> bool | None:
        """Whether this step's draft for ``seq_id`` continues the copy the last
        verification accepted (prompt lookup; ``continuity.py``); None: this proposer
        cannot tell (the adaptive length then uses the request's history alone)."""
        return None

    def observe(self, seq_id: str, tokens: list[int], accepted: int) -> None:  # noqa: B027 (optional hook)
        """The verifier judged ``tokens`` (this proposer's draft for ``seq_id``, as far as
        it was computed) and kept the first ``accepted``."""

    def forget(self, seq_id: str) -> None:  # noqa: B027 (optional hook)
        """``seq_id`` ended: drop anything kept for it."""

    def tracked(self) -> set[str]:
        """Sequence ids the proposer holds state for (``check``)."""
        return set()
