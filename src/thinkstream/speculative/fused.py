"""Several proposers fused by confidence (after Collaborative Speculative Inference,
CoSine: drafters of different strengths, the most confident one per position).

Each proposer drafts for each sequence; the fused draft is built position by position from
the proposers whose drafts agree with it so far, taking the token with the highest
confidence, a proposer's own confidence times its measured acceptance (a moving average
over the positions the verifier judged, per proposer: a drafter whose confidence is not
calibrated, an untrained early exit, learns its place). A proposer that disagrees with
the token taken drops out (its later tokens were drafted after a different prefix).
Costly proposers run only where the free ones are not already sure (a full-length draft
with confidence >= ``sure``), and while their acceptance is below ``floor`` (where they
start) only every ``probe_interval``-th call.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from thinkstream.speculative.proposer import NO_DRAFT, Draft, Proposer

if TYPE_CHECKING:
    from thinkstream.engine.request import Sequence


def fuse(drafts: list[Draft], length: int, weights: list[float] | None = None,
         ) -> tuple[Draft, list[int]]:
    """The most confident consistent draft of at most ``length`` tokens (confidence times
    ``weights[i]`` for ``drafts[i]``), and the index of the draft each token came from."""
    w = weights or [1.0] * len(drafts)
    live = [i for i, d in enumerate(drafts) if len(d)]
    tokens: list[int] = []
    conf: list[float] = []
    source: list[int] = []
    for j in range(length):
        live = [i for i in live if len(drafts[i]) > j]
        if not live:
            break
        best = max(live, key=lambda i: drafts[i].confidence[j] * w[i])
        tokens.append(drafts[best].tokens[j])
        conf.append(drafts[best].confidence[j] * w[best])
        source.append(best)
        live = [i for i in live if drafts[i].tokens[j] == tokens[-1]]
    return Draft(tokens, conf), source


class FusedProposer(Proposer):
    """``proposers``, cheapest first (sorted by ``cost_per_token``)."""

    name = "fused"

    def __init__(self, proposers: list[Proposer], sure: float = 0.8, floor: float = 0.15,
                 probe_interval: int = 16) -> None:
        if not proposers:
            raise ValueError("fused needs at least one proposer")
        self.proposers = sorted(proposers, key=lambda p: p.cost_per_token)
        self.sure, self.floor, self.probe_interval = sure, floor, probe_interval
        # per proposer, a moving average; a costly one starts at the floor (it only probes
        # until its drafts are seen to be accepted)
        self.acceptance = [floor if p.cost_per_token > 0 else 0.5 for p in self.proposers]
        self.cost_per_token = min(p.cost_per_token for p in proposers)
        self._sources: dict[str, list[int]] = {}  # seq id -> proposer of each draft token
        self._calls = 0

    def propose(self, seqs: list[Sequence], lengths: list[int]) -> list[Draft]:
        self._calls += 1
        found: list[list[Draft]] = [[NO_DRAFT] * len(self.proposers) for _ in seqs]
        for p, proposer in enumerate(self.proposers):
            costly = proposer.cost_per_token > 0
            if costly and self.acceptance[p] <= self.floor and self._calls % self.probe_interval:
                continue  # a costly drafter that keeps failing only probes
            todo = [i for i, k in enumerate(lengths)
                    if k > 0 and not (costly and self._sure(found[i], k))]
            if not todo:
                continue
            for i, d in zip(todo, proposer.propose([seqs[i] for i in todo],
                                                   [lengths[i] for i in todo]), strict=True):
                found[i][p] = d
        out = []
        for s, f, k in zip(seqs, found, lengths, strict=True):
            draft, source = fuse(f, k, self.acceptance) if k > 0 else (NO_DRAFT, [])
            self._sources[s.seq_id] = source
            out.append(draft)
        return out

    def free_part(self) -> Proposer | None:
        return next((p for p in self.proposers if p.cost_per_token == 0), None)

    def observe(self, seq_id: str, tokens: list[int], accepted: int) -> None:
        source = self._sources.get(seq_id, [])
        for j, p in enumerate(source[: min(len(tokens), accepted + 1)]):
            self.acceptance[p] = 0.9 * self.acceptance[p] + 0.1 * (j < accepted)

    def _sure(self, drafts: list[Draft], length: int) -> bool:
        return any(len(d) >= length and min(d.confidence) >= self.sure for d in drafts)

    def forget(self, seq_id: str) -> None:
        self._sources.pop(seq_id, None)
        for p in self.proposers:
            p.forget(seq_id)

    def tracked(self) -> set[str]:
        return set(self._sources).union(*(p.tracked() for p in self.proposers))
