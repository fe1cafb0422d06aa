"""The drafting policies of the prompt-lookup replay (bench/speculative_policies.py,
bench/speculative_sim.py): what a step's lookup knows, exact on crafted token lists, and
the continuity rule's lengths. No model."""

from __future__ import annotations

import pytest

from thinkstream.bench.speculative_policies import Continuity, Fixed, Step
from thinkstream.bench.speculative_sim import cost_table, lookup, replay
from thinkstream.speculative.ngram import NgramProposer


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
