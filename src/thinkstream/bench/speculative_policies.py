"""Drafting policies tried in the prompt-lookup replay (``bench/speculative_sim.py``;
issue 13, docs/benchmarks.md "Drafting policies in the replay").

A policy picks each step's draft length from what the engine could know at that step: the
lookup's ``Step`` (the draft, the matched suffix's length, the other candidate
continuations, whether the draft continues the copy the last verification accepted) and
the outcomes of earlier steps (``learn``: drafts accepted, the shadow draft's first token
against the token sampled, the step's cost). None sees the answer ahead. Policies:

- ``Fixed``: always k.
- ``Adaptive``: the engine's ``LengthController`` on the cost curve ``StepCost`` measures
  (shadow drafts at length 0), optionally capped per step by a rule (``cap``: the matched
  suffix's length, the candidates' agreement) or with one state per context (``context``:
  the request's acceptance kept apart for continuing and fresh alignments, or by match
  length).
- ``Pooled``: per request two rates instead of one per position (the first draft token's,
  and one for every later token, pooled: several observations a step rather than one).
- ``Continuity``: a draft that continues the copy the last verification accepted (its
  source starts where the last one's accepted run ended, the target's own token
  included) gets ``cont`` tokens while the adaptive length is above 0; a fresh alignment
  at most ``fresh`` (a probe).
- ``ContinuityPooled``: the same split priced on the cost curve: continuing drafts by one
  engine-wide pooled estimate (how this model keeps copying, learned across requests),
  fresh ones by the request's own, capped at ``fresh``.

This module imports no torch.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass

from thinkstream.speculative.adaptive import LengthController, StepCost, best_length
from thinkstream.speculative.config import ADAPTIVE_MAX_TOKENS
from thinkstream.speculative.continuity import Rate


@dataclass(frozen=True)
class Step:
    """What a step's lookup knows (nothing of the answer ahead).

    ``draft``: the proposer's draft of up to the replay's maximum; ``source``: where the
    matched occurrence ends (the draft is what followed it), -1 without a match;
    ``match``: the matched suffix's length (up to 64; the proposer matches n-grams of 2-4,
    this extends the chosen occurrence backwards); ``candidates``: earlier occurrences of
    the proposer's n-gram; ``agree``: tokens on which all their continuations agree;
    ``continuing``: the last step's accepted run and the target's own token followed that
    step's source (the copy goes on);
    ``from_prompt``: the source is in the prompt (else in the answer so far)."""

    draft: tuple[int, ...] = ()
    source: int = -1
    match: int = 0
    candidates: int = 0
    agree: int = 0
    continuing: bool = False
    from_prompt: bool = False


class Fixed:
    """Always ``k`` drafts."""

    def __init__(self, k: int) -> None:
        self.k = k

    def length(self, key: str, step: Step) -> int:
        return self.k

    def learn(self, key: str, step: Step, k: int, accepted: int, hit: bool | None,
              ms: float) -> None:
        pass


class Adaptive:
    """The engine's adaptive length: with ``continuity`` (the default since 2026-12-01,
    ``speculative/continuity.py``) told whether each draft continues the accepted copy,
    without it one acceptance history per request (the length before). ``cap(step) ->
    int``: a per-step ceiling (a capped step judges fewer positions, learns only those);
    ``context(step)``: the acceptance kept per (request, context)."""

    def __init__(self, cap: Callable[[Step], int] | None = None,
                 context: Callable[[Step], Hashable] | None = None,
                 continuity: bool = True) -> None:
        self.cost = StepCost(16)
        self.ctl = LengthController(ADAPTIVE_MAX_TOKENS, 16, 0.0, cost=self.cost)
        self.cap, self.context, self.continuity = cap, context, continuity

    def _key(self, key: str, step: Step) -> str:
        return f"{key}/{self.context(step)}" if self.context else key

    def length(self, key: str, step: Step) -> int:
        cont = step.continuing if self.continuity else None
        k = self.ctl.length(self._key(key, step), 1, 1, cont)
        return max(min(k, self.cap(step)), 0) if self.cap else k

    def learn(self, key: str, step: Step, k: int, accepted: int, hit: bool | None,
              ms: float) -> None:
        kk = self._key(key, step)
        if k:
            self.ctl.update(kk, k, accepted)
        elif hit is not None and self.ctl.shadow_wanted(kk):
            self.ctl.update(kk, 1, int(hit), real=False)
        self.cost.observe(1 + k, ms / 1e3)
        self.ctl.knee = self.cost.knee


class Pooled:
    """Two rates per key (``first``: the first draft token's; ``later``: each later one,
    given the ones before it were accepted), E(k) / cost(k) maximised on the cost table
    (``costs[k]``: k drafts' step in steps of one row). ``shared``: one key for all
    requests."""

    def __init__(self, costs: list[float], first: float = 0.5, later: float = 0.8,
                 decay: tuple[float, float] = (0.8, 0.9), shared: bool = False) -> None:
        self.costs, self.shared = costs, shared
        self.prior, self.decay = (first, later), decay
        self.rates: dict[str, tuple[Rate, Rate]] = {}

    def _rates(self, key: str) -> tuple[Rate, Rate]:
        key = "*" if self.shared else key
        if key not in self.rates:
            self.rates[key] = (Rate(self.prior[0], self.decay[0]),
                               Rate(self.prior[1], self.decay[1]))
        return self.rates[key]

    def length(self, key: str, step: Step) -> int:
        first, later = self._rates(key)
        return best_length([first.value, later.value], self.costs, len(self.costs) - 1)

    def learn(self, key: str, step: Step, k: int, accepted: int, hit: bool | None,
              ms: float) -> None:
        first, later = self._rates(key)
        if k == 0:
            if hit is not None:
                first.add(int(hit), 1)  # the shadow draft
            return
        first.add(int(accepted > 0), 1)
        if accepted and k > 1:  # positions 1..accepted judged; a miss at ``accepted`` < k
            later.add(accepted - 1, accepted - 1 + int(accepted < k))


class Continuity:
    """``cont`` drafts for a continuing alignment while the adaptive length (before) is
    above 0; at most ``fresh`` for a fresh one."""

    def __init__(self, cont: int = 7, fresh: int = 1) -> None:
        self.adaptive, self.cont, self.fresh = Adaptive(continuity=False), cont, fresh

    def length(self, key: str, step: Step) -> int:
        k = self.adaptive.length(key, step)
        if step.continuing:
            return self.cont if k > 0 else 0
        return min(k, self.fresh)

    def learn(self, key: str, step: Step, k: int, accepted: int, hit: bool | None,
              ms: float) -> None:
        self.adaptive.learn(key, step, k, accepted, hit, ms)


class ContinuityPooled:
    """Continuing drafts priced by one engine-wide ``Pooled`` estimate, fresh ones by the
    request's own (at most ``fresh``)."""

    def __init__(self, costs: list[float], fresh: int = 1) -> None:
        self.cont = Pooled(costs, decay=(0.95, 0.98), shared=True)
        self.own, self.fresh = Pooled(costs), fresh

    def length(self, key: str, step: Step) -> int:
        if step.continuing:
            return self.cont.length(key, step)
        return min(self.own.length(key, step), self.fresh)

    def learn(self, key: str, step: Step, k: int, accepted: int, hit: bool | None,
              ms: float) -> None:
        (self.cont if step.continuing else self.own).learn(key, step, k, accepted, hit, ms)


def policies(costs: list[float]) -> dict[str, Callable[[], object]]:
    """The policies of the docs' table by name (each call builds a fresh one: no state
    crosses workloads); ``costs[k]``: a step with k drafts, in steps of one row."""
    def buckets(s: Step) -> int:
        return 0 if s.match <= 2 else 1 if s.match <= 3 else 2 if s.match <= 7 else 3

    def before(**kw: object) -> Callable[[], Adaptive]:
        return lambda: Adaptive(continuity=False, **kw)  # type: ignore[arg-type]

    return {
        "adaptive before (one history per request)": before(),
        "before, k <= match length": before(cap=lambda s: s.match),
        "before, k <= candidates' agreement": before(cap=lambda s: s.agree),
        "before, no draft on a 2-token match": before(cap=lambda s: 0 if s.match <= 2 else 99),
        "before, 1 draft on a 2-token match": before(cap=lambda s: 1 if s.match <= 2 else 99),
        "before, per match length (2, 3, 4-7, 8+)": before(context=buckets),
        "before, per continuing / fresh": before(context=lambda s: s.continuing),
        "before, fresh at most 1": before(cap=lambda s: 99 if s.continuing else 1),
        "pooled rates": lambda: Pooled(costs),
        "continuity: 7 / fresh at most 1": Continuity,
        "continuity: 5 / fresh at most 1": lambda: Continuity(5),
        "continuity: 7 / fresh at most 2": lambda: Continuity(7, 2),
        "continuity, pooled rates, fresh at most 1": lambda: ContinuityPooled(costs),
        "**adaptive with continuity (the default)**": Adaptive,
    }
