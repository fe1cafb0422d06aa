"""Copy continuity (speculative/continuity.py: continuing drafts priced by the engine-wide
copy rates, fresh ones a probe) and the drafting policies of the prompt-lookup replay
(bench/speculative_policies.py, bench/speculative_sim.py): exact lengths on crafted
histories and token lists. No model."""

from __future__ import annotations

import pytest

from thinkstream.bench.speculative_policies import Continuity, Fixed, Step
from thinkstream.bench.speculative_sim import cost_table, lookup, perturbed, policy_table, replay
from thinkstream.speculative.adaptive import LengthController, StepCost
from thinkstream.speculative.continuity import CopyRates, Rate, probe_cap
from thinkstream.speculative.ngram import NgramProposer

# verify_rows on Zen 4: ms of a forward over m rows (docs/results/verify_rows_zen4.json)
ZEN4_MS = {1: 13.5, 2: 16.7, 3: 21.7, 4: 27.0, 6: 33.1, 8: 41.0, 12: 63.1, 16: 69.4}


def zen4_controller() -> LengthController:
    cost = StepCost(16)
    for m, ms in ZEN4_MS.items():
        cost.observe(m, ms / 1e3)
    return LengthController(k_max=11, knee=16, proposer_cost=0.0, cost=cost)


def test_ngram_proposer_tells_a_continuing_copy_from_a_fresh_alignment() -> None:
    """The source 1..9 quoted: the first match is fresh; after 2 of 2 drafts and the
    target's own token the next match starts where that run ended (continuing); a token
    off the passage ends it (the next match is fresh again)."""
    p = NgramProposer()
    source = [1, 2, 3, 4, 5, 6, 7, 8, 9, 50]
    toks = source + [1, 2]
    assert p.continuing("s", toks, 2) is False  # (1, 2) ends at 1: drafts 3, 4
    assert p.lookup("s", toks, 2).tokens == [3, 4]
    p.observe("s", [3, 4], 2)  # both kept; the target's token 5 follows
    toks += [3, 4, 5]
    assert p.continuing("s", toks, 2) is True  # (4, 5) ends at 4, where the run ended
    assert p.lookup("s", toks, 2).tokens == [6, 7]
    p.observe("s", [6, 7], 0)  # rejected: the target said 60
    toks += [60]
    assert p.continuing("s", toks, 2) is False  # no match of (5, 60)
    toks += [6, 7]  # back on the passage: (6, 7) ends at 6, not where a copy ended
    assert p.continuing("s", toks, 2) is False
    assert p.tracked() == {"s"}
    p.forget("s")
    assert p.tracked() == set()
    # a repeating run: each match is the run's first occurrence (the latest leaves too few
    # tokens), not where the copy ended, yet it drafts what the copy goes on with
    run = [9, 1, 6, 6, 6, 6, 6, 6]
    assert (p.continuing("r", run, 3), p.lookup("r", run, 3).tokens) == (False, [6, 6])
    p.observe("r", [6, 6], 2)
    run += [6, 6, 6]
    assert (p.continuing("r", run, 3), p.lookup("r", run, 3).tokens) == (True, [6, 6, 6])
    p.observe("r", [6, 6, 6], 1)  # the target said 7 at the second draft
    run += [6, 7]
    assert p.continuing("r", run, 3) is False


def test_continuing_drafts_use_the_copy_rates_fresh_ones_a_probe() -> None:
    """Zen 4 cost curve, batch 1: a fresh draft at most 1 token (1 draft costs 1.24 steps,
    2 cost 1.61 > 1.5); a continuing one priced by the copy rates (at their prior 0.5 /
    0.8: 1), 7 once continuing drafts were accepted (rows 9-12 cost 0.41 a step each) for
    every request, the request's own history untouched; 0 at batch 32 (compute-bound)."""
    c = zen4_controller()
    assert (c.length("r", 1, 1, False), c.length("r", 1, 1, None)) == (1, 1)
    assert c.length("r", 1, 1, True) == 1
    for _ in range(10):
        c.length("r", 1, 1, True)
        c.update("r", 11, 11)
    assert c.copies.rates() == pytest.approx([0.900, 0.996], abs=1e-3)
    assert c.length("r", 1, 1, True) == 7
    assert c.length("q", 1, 1, True) == 7  # engine-wide: another request's copy as well
    assert c.states["r"].alphas == [] and c.states["r"].accepted == 110
    assert c.length("r", 32, 32, True) == 0
    c.length("r", 1, 1, False)
    for _ in range(3):  # fresh drafts rejected: only the request's history learns it
        c.update("r", 1, 0)
    assert c.states["r"].alphas == pytest.approx([0.5 * 0.7**3])
    assert (c.length("r", 1, 1, False), c.length("r", 1, 1, True)) == (0, 7)


def test_copy_rates_and_probe_cap() -> None:
    rates = CopyRates(first=0.5, later=0.8, decay=(1.0, 1.0))
    rates.update(5, 3)  # first hit; positions 1, 2 hits, 3 a miss
    rates.update(1, 0)  # a shadow miss
    assert rates.rates() == pytest.approx([(1 + 1) / (2 + 2), (2 + 1.6) / (3 + 2)])
    assert Rate(0.5, 0.5).value == 0.5
    with pytest.raises(ValueError):
        Rate(1.5, 0.9)
    assert (probe_cap(0.25, 11), probe_cap(0.1, 3), probe_cap(0.0, 7)) == (2, 3, 7)
    assert probe_cap([1.0, 1.24, 1.61, 2.0], 3) == 1
    assert probe_cap([1.0, 1.02, 1.04, 1.06], 3) == 3
    assert probe_cap([1.0, 2.0], 1) == 0


def test_lookup_reports_source_match_length_candidates_and_continuity() -> None:
    # (1, 2, 3) occurred once, ending at 3, after 10 (the suffix is after 11): a match of 3
    tokens = [10, 1, 2, 3, 4, 5, 11, 1, 2, 3]
    step = lookup(NgramProposer(), "a", tokens, 3, last_end=3)
    assert step == Step((4, 5, 11), 3, 3, 1, 3, True)
    assert lookup(NgramProposer(), "a", tokens, 3, last_end=-1).continuing is False
    # (1, 2) ends at 1 and 4, followed by 7 and 8: the latest drafts, the two disagree
    tokens = [1, 2, 7, 1, 2, 8, 5, 1, 2]
    assert lookup(NgramProposer(), "b", tokens, 2, -1) == Step((8, 5), 4, 2, 2, 0, False)
    assert NgramProposer().match("c", tokens, 2) == (4, 2)
    assert lookup(NgramProposer(), "d", [1, 2, 3], 4, -1) == Step()


def test_continuity_drafts_long_only_where_the_copy_continues() -> None:
    """Fresh alignment: at most 1 draft; continuing: 7 while the adaptive length is above
    0, none once the request's drafts keep failing."""
    policy, full = Continuity(), tuple(range(11))
    fresh, cont = Step(full, 5, 2, 1, 11, False), Step(full, 5, 9, 1, 11, True)
    assert (policy.length("r", fresh), policy.length("r", cont)) == (1, 7)
    for _ in range(12):
        policy.learn("r", fresh, 1, 0, False, 16.7)
    assert (policy.length("r", fresh), policy.length("r", cont)) == (0, 0)


def test_replay_of_a_copy_with_the_continuity_rule() -> None:
    """An answer copying its prompt at a flat cost: no match at the first step, a probe of
    1 on the fresh alignment, then 7 a step while it continues: 19 tokens in 4 steps."""
    text = list(range(1, 21))
    answers = [(text + [99], text)]
    flat = cost_table({1: 1.0, 64: 1.0})
    assert replay(answers, flat, Continuity(), k_max=11) == pytest.approx(19 / 4)
    assert replay(answers, flat, Fixed(0)) == pytest.approx(1.0)
    table = policy_table({"w": answers}, ["w"], flat, 11)
    assert table["oracle"]["w"] == pytest.approx(19 / 3)
    assert table["continuity: 7 / fresh at most 1"]["w"] == pytest.approx(19 / 4)
    runs = perturbed({"w": answers}, ["w"], {1: 1.0, 64: 1.0}, 11, 2)
    assert [len(runs["before"]), len(runs["continuity"])] == [2, 2]
