"""Copy continuity: the adaptive length's view of prompt lookup's drafts (issue 13;
docs/benchmarks.md, "Drafting policies in the replay").

A prompt-lookup draft either **continues** the copy the last verification accepted (the
accepted run and the target's own token followed the last draft's source, and the new
draft is what that source goes on with: the answer is still copying the same passage;
``NgramProposer.continuing``) or starts a **fresh** alignment (the first
step of a copy, or after the answer left the passage: SmolLM2 drops a line, rewrites a
clause). The two behave differently: on echo-heavy answers a continuing draft's first
token is accepted ~90% of the time and each later one ~95%, a fresh one's first token
about half the time. One acceptance history per request mixes them, so the length drawn
from it is too long for fresh drafts and too short for continuing ones, and swings after
each rejection.

So (``LengthController.length`` with ``continuing`` given):

- continuing drafts are priced by ``CopyRates``: one engine-wide estimate of how this
  model keeps copying (two rates: the first draft token's, and each later token's given
  the ones before it, pooled over positions, forgetting slowly; learned across requests);
- fresh drafts by the request's own history (as before), at most ``probe_cap`` drafts: a
  probe that costs at most ``PROBE_COST`` of a step more than a step without drafts
  (1 draft on a CPU where a row costs ~0.25-0.3 of a step, ~11 where rows are almost free).
  The probe's outcome tells the next step whether the copy continues.

Both lengths still maximise expected tokens per cost on the measured cost curve at the
batch's phase, so a compute-bound batch drafts nothing (FASER). In the replay on SmolLM2's
answers (``bench/speculative_sim.py --policies --perturb 8``, the Zen 4 cost table): echo
1.68x -> 1.73x, echo-short 1.59x -> 1.67x, echo-holdout 1.56x -> 1.72x decode; on 8 copies
of the table with each row's time scaled by 0.9-1.1 (the measured curve's noise) echo
gains 0.04-0.18x (mean 0.11x), chat and long-form text +-0.01x. This module imports no
torch.
"""

from __future__ import annotations

from collections.abc import Sequence

PROBE_COST = 0.5  # a fresh alignment's drafts cost at most this many steps extra


class Rate:
    """An acceptance rate that forgets: hits and trials decay by ``decay`` per update,
    with ``weight`` pseudo-trials at ``prior`` (the value before any evidence)."""

    def __init__(self, prior: float, decay: float, weight: float = 2.0) -> None:
        if not 0 <= prior <= 1 or not 0 < decay <= 1 or weight <= 0:
            raise ValueError("Rate: 0 <= prior <= 1, 0 < decay <= 1, weight > 0")
        self.prior, self.decay, self.weight = prior, decay, weight
        self.hits = self.trials = 0.0

    def add(self, hits: float, trials: float) -> None:
        self.hits = self.decay * self.hits + hits
        self.trials = self.decay * self.trials + trials

    @property
    def value(self) -> float:
        return (self.hits + self.prior * self.weight) / (self.trials + self.weight)


class CopyRates:
    """How drafts that continue a copy are accepted, engine-wide: ``first`` (the first
    draft token) and ``later`` (each later token, given the ones before it were
    accepted: a draft of k with a accepted judges positions 1..a, a miss at a < k)."""

    def __init__(self, first: float = 0.5, later: float = 0.8,
                 decay: tuple[float, float] = (0.95, 0.98)) -> None:
        self.first, self.later = Rate(first, decay[0]), Rate(later, decay[1])

    def rates(self) -> list[float]:
        """Per-position rates for ``adaptive.best_length`` (positions past 1 take the
        second)."""
        return [self.first.value, self.later.value]

    def update(self, drafted: int, accepted: int) -> None:
        """A continuing draft of ``drafted`` tokens was judged, the first ``accepted``
        kept (``drafted`` 1 for a shadow draft)."""
        if drafted <= 0:
            return
        self.first.add(int(accepted > 0), 1)
        if accepted and drafted > 1:
            self.later.add(accepted - 1, accepted - 1 + int(accepted < drafted))


def probe_cap(cost: float | Sequence[float], k_max: int) -> int:
    """The most drafts (at most ``k_max``) whose step costs at most ``PROBE_COST`` steps
    more than one without drafts. ``cost``: the line's ``rho`` (a draft's cost in steps)
    or the cost of 0..k_max drafts in steps (``cost[0]`` is 1)."""
    if isinstance(cost, (int, float)):
        return min(int(PROBE_COST / cost), k_max) if cost > 0 else k_max
    return max(k for k in range(min(k_max, len(cost) - 1) + 1) if cost[k] <= 1 + PROBE_COST)
