"""The adaptive draft length priced by the measured cost curve of the forward: long drafts
for long verbatim copies where the curve says they pay (past the old cap of 5), none for
requests whose drafts fail, the greedy output unchanged (tiny model)."""

from __future__ import annotations

import pytest
from test_speculative import PROMPTS, Oracle, make_engine, run

from thinkstream.engine.hooks import StepHook
from thinkstream.sampling_params import SamplingParams
from thinkstream.speculative.adaptive import LengthController, StepCost, best_length
from thinkstream.speculative.config import SpeculativeConfig
from thinkstream.speculative.ngram import NgramProposer

# verify_rows on Zen 4 (docs/benchmarks.md): ms of a forward over m rows of one sequence;
# 24 rows: ~0.83x 32 since the GEMM's 24-row tile
ZEN4_MS = {1: 13.5, 2: 16.7, 3: 21.7, 4: 27.0, 6: 33.1, 8: 41.0, 12: 63.1, 16: 69.4,
           24: 91.4, 32: 110.1}


def zen4_cost() -> StepCost:
    cost = StepCost(16)
    for m, ms in ZEN4_MS.items():
        cost.observe(m, ms / 1e3)
    return cost


def test_cost_curve_is_measured_interpolated_and_extended() -> None:
    cost = zen4_cost()
    assert cost.seconds(8) == pytest.approx(0.041) and cost.measured(8) and not cost.measured(7)
    assert cost.seconds(7) == pytest.approx((0.0331 + 0.041) / 2)  # between 6 and 8
    # past 32: the line through 32 ms with the fitted knee t0 / c
    assert cost.seconds(40) == pytest.approx(0.1101 * (1 + 8 / (cost.knee + 32)))
    cost.observe(8, 0.049)  # a point is the fastest of its last forwards (load only adds)
    assert cost.seconds(8) == pytest.approx(0.041)
    for _ in range(8):
        cost.observe(8, 0.045)
    assert cost.seconds(8) == pytest.approx(0.045)  # the 41 ms left the last eight
    assert StepCost(16).seconds(4) is None


def test_length_follows_the_cost_curve_not_a_line() -> None:
    """Echo-like acceptance (the first draft token 70%, then 98%): the measured curve pays
    31 drafts (32 rows cost 8.16 rows), the line through the first rows (knee 2) stops at
    about 11; always right takes the maximum, never right none."""
    echo = [0.7] + [0.98] * 31
    curve = LengthController(k_max=32, knee=2, proposer_cost=0.0, cost=zen4_cost())
    line = LengthController(k_max=32, knee=2, proposer_cost=0.0)
    for c in (curve, line):
        c.length("echo", 1)
        c.states["echo"].alphas = list(echo)
    assert curve.length("echo", 1) == 31
    assert 5 < line.length("echo", 1) < 16
    assert best_length(1.0, curve.costs(1, 1), 32) == 32
    assert best_length(0.0, curve.costs(1, 1), 32) == 0
    assert curve.costs(1, 1)[15] == pytest.approx(69.4 / 13.5)
    assert curve.length("echo", 32) == 0  # a batch of 32: a draft costs a row of the step
    noisy = StepCost(16)
    noisy.observe(1, 0.010)
    noisy.observe(3, 0.009)  # more rows measured faster: a draft still costs something
    free = LengthController(k_max=2, knee=2, proposer_cost=0.0, cost=noisy).costs(1, 1)
    assert free == pytest.approx([1.0, 1.02, 1.04])


def test_config_default_length_by_mode() -> None:
    assert SpeculativeConfig().num_speculative_tokens == 32
    assert SpeculativeConfig(adaptive=False).num_speculative_tokens == 5
    assert SpeculativeConfig(num_speculative_tokens=7).num_speculative_tokens == 7


def test_ngram_drafts_a_long_copy_in_one_piece() -> None:
    text = list(range(100, 160))
    p = NgramProposer()
    assert p.lookup("a", text + text[:4], 32).tokens == text[4:36]


def test_adaptive_grows_past_the_old_cap_on_the_engine() -> None:
    """Always-right drafts with the measured curve (the tiny model: every row nearly free)
    grow past 5 (the old maximum); the output is the greedy one."""
    params = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True)
    plain = run(make_engine(), PROMPTS[1:2], params)[0].outputs[0].token_ids
    engine = make_engine({}, Oracle({tuple(PROMPTS[1]): plain}, wrong_every=10**6))
    seen: list[int] = []
    engine.add_hook(_Lengths(seen))
    assert run(engine, PROMPTS[1:2], params)[0].outputs[0].token_ids == plain
    assert max(seen) > 5, seen
    # never right: the length falls to 0 and stays there (the curve measured, no knee fixed)
    wrong = Oracle({tuple(PROMPTS[1]): [(t + 1) % 320 for t in plain]}, wrong_every=10**6)
    engine = make_engine({}, wrong)
    lengths: list[int] = []
    engine.add_request("r", PROMPTS[1], params)
    while engine.has_unfinished_requests():
        engine.step()
        if "r#0" in engine.speculative.lengths.states:
            lengths.append(engine.speculative.lengths.states["r#0"].length)
    assert engine.speculative.cost.seconds(1) is not None
    assert lengths[-8:] == [0] * 8, lengths


class _Lengths(StepHook):
    """Records how many drafts each verification judged."""

    def __init__(self, seen: list[int]) -> None:
        self.seen = seen

    def on_verified(self, seq, drafted: int, accepted: int) -> None:
        self.seen.append(drafted)


def test_drafts_keep_a_step_within_the_exact_rows() -> None:
    """Where the kernels' rows bitwise equal to a one-row step end (the GGUF dot products:
    12 rows; here 6, patched in), always-right drafts stop there: 1 + 5 rows at batch 1."""
    params = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True)
    plain = run(make_engine(), PROMPTS[1:2], params)[0].outputs[0].token_ids
    engine = make_engine({}, Oracle({tuple(PROMPTS[1]): plain}, wrong_every=10**6))
    engine.speculative.row_caps = lambda: (6, None)
    seen: list[int] = []
    engine.add_hook(_Lengths(seen))
    assert run(engine, PROMPTS[1:2], params)[0].outputs[0].token_ids == plain
    assert max(seen) == 5, seen


def test_replay_of_a_copy_counts_steps_by_the_cost_table() -> None:
    """bench/speculative_sim.py: an answer copying its prompt, steps at a flat cost: the
    oracle needs 1 step without a match, then one verification of the whole rest (19
    tokens in 2 steps), or three steps when a step holds 12 rows at most."""
    from thinkstream.bench.speculative_policies import Fixed
    from thinkstream.bench.speculative_sim import adaptive, cost_table, replay

    text = list(range(1, 21))
    answers = [(text + [99], text)]
    flat = cost_table({1: 1.0, 64: 1.0})
    assert replay(answers, flat, None, oracle=True) == pytest.approx(19 / 2)
    assert replay(answers, flat, None, oracle=True, k_max=11) == pytest.approx(19 / 3)
    assert replay(answers, flat, Fixed(0)) == pytest.approx(1.0)
    assert cost_table({1: 2.0, 3: 4.0, 4: 8.0})(2) == 3.0 and cost_table({1: 2.0, 3: 4.0, 4: 8.0})(5) == 12.0
    assert 1.0 < adaptive(answers, flat, 11) <= 19 / 3
