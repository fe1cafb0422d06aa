"""Several proposers fused by confidence (after Collaborative Speculative Inference,
CoSine: drafters of different strengths, the most confident one per position).

Each proposer drafts for each sequence; the fused draft is built position by position from
the proposers whose drafts agree with it so far, taking the token of the most confident
one; a proposer that disagrees with the token taken drops out (its later tokens were
drafted after a different prefix). Costly proposers run only where the free ones are not
already sure: a sequence whose cheap draft is full length with confidence >= ``sure`` skips
them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from thinkstream.speculative.proposer import NO_DRAFT, Draft, Proposer

if TYPE_CHECKING:
    from thinkstream.engine.request import Sequence


def fuse(drafts: list[Draft], length: int) -> Draft:
    """The most confident consistent draft of at most ``length`` tokens."""
    live = [d for d in drafts if len(d)]
    tokens: list[int] = []
    conf: list[float] = []
    for j in range(length):
        live = [d for d in live if len(d) > j]
        if not live:
            break
        best = max(live, key=lambda d: d.confidence[j])
        tokens.append(best.tokens[j])
        conf.append(best.confidence[j])
        live = [d for d in live if d.tokens[j] == best.tokens[j]]
    return Draft(tokens, conf)


class FusedProposer(Proposer):
    """``proposers``, cheapest first (sorted by ``cost_per_token``)."""

    name = "fused"

    def __init__(self, proposers: list[Proposer], sure: float = 0.8) -> None:
        if not proposers:
            raise ValueError("fused needs at least one proposer")
        self.proposers = sorted(proposers, key=lambda p: p.cost_per_token)
        self.sure = sure
        self.cost_per_token = max(p.cost_per_token for p in proposers)

    def propose(self, seqs: list[Sequence], lengths: list[int]) -> list[Draft]:
        found: list[list[Draft]] = [[] for _ in seqs]
        for proposer in self.proposers:
            todo = [i for i, k in enumerate(lengths) if k > 0 and not (
                proposer.cost_per_token > 0 and self._sure(found[i], lengths[i]))]
            if not todo:
                continue
            for i, d in zip(todo, proposer.propose([seqs[i] for i in todo],
                                                   [lengths[i] for i in todo]), strict=True):
                found[i].append(d)
        return [fuse(f, k) if k > 0 else NO_DRAFT for f, k in zip(found, lengths, strict=True)]

    def _sure(self, drafts: list[Draft], length: int) -> bool:
        return any(len(d) >= length and min(d.confidence) >= self.sure for d in drafts)

    def forget(self, seq_id: str) -> None:
        for p in self.proposers:
            p.forget(seq_id)

    def tracked(self) -> set[str]:
        return set().union(*(p.tracked() for p in self.proposers))
