from __future__ import annotations

import math

import pytest
import torch

from thinkstream.sampling_params import SamplingParams
from thinkstream.worker.sampling import (
    SamplingTensors,
    apply_banned,
    apply_min_p,
    apply_penalties,
    apply_temperature,
    apply_top_k,
    apply_top_p,
    build_sampling_tensors,
    compute_logprobs,
    penalize,
    sample,
    token_counts,
)

INF = float("-inf")
PROBS = [0.1, 0.2, 0.3, 0.4]


def st_for(params: list[SamplingParams], vocab: int, generators=None, banned=None) -> SamplingTensors:
    gens = generators if generators is not None else [None] * len(params)
    return build_sampling_tensors(params, gens, vocab, "cpu", banned)


def frequencies(params: SamplingParams, probs: list[float], n: int = 20_000) -> list[float]:
    """Sample ``n`` rows of the same logits with one shared seeded generator."""
    logits = torch.tensor(probs).log().expand(n, -1).contiguous()
    g = torch.Generator().manual_seed(1234)
    ids = sample(logits, st_for([params] * n, len(probs), [g] * n))
    return (torch.bincount(ids, minlength=len(probs)).float() / n).tolist()


# --- building the per-step tensors -----------------------------------------------------------


def test_build_sampling_tensors() -> None:
    params = [
        SamplingParams(temperature=0.0, top_k=3),
        SamplingParams(temperature=0.5, top_k=-1, top_p=0.9, min_p=0.1, presence_penalty=0.5),
        SamplingParams(top_k=0, repetition_penalty=1.2, frequency_penalty=-1.0),
    ]
    st = build_sampling_tensors(params, [None, None, None], vocab_size=10, banned=[[1], [], [2, 3]])
    assert st.temperature.tolist() == [1.0, 0.5, 1.0]  # greedy row gets a safe placeholder
    assert st.top_k.tolist() == [3, 10, 10]  # off -> V
    assert st.top_k.dtype == torch.int64
    assert st.top_p.tolist() == pytest.approx([1.0, 0.9, 1.0])
    assert st.min_p.tolist() == pytest.approx([0.0, 0.1, 0.0])
    assert st.presence.tolist() == [0.0, 0.5, 0.0]
    assert st.frequency.tolist() == [0.0, 0.0, -1.0]
    assert st.repetition.tolist() == pytest.approx([1.0, 1.0, 1.2])
    assert st.greedy.tolist() == [True, False, False]
    assert st.banned == [(1,), (), (2, 3)]
    assert (st.all_greedy, st.no_penalties, st.no_top_k, st.no_top_p, st.no_min_p) == (
        False, False, False, False, False,
    )


def test_build_flags_when_everything_off() -> None:
    st = st_for([SamplingParams(temperature=0.0), SamplingParams(top_k=1)], 5)
    assert st.all_greedy and st.no_penalties and st.no_top_p and st.no_min_p
    assert not st.no_top_k  # top_k=1 is a real filter
    assert st.banned == [(), ()]


def test_build_rejects_wrong_generator_count() -> None:
    with pytest.raises(ValueError, match="^generators"):
        build_sampling_tensors([SamplingParams()], [], 5)


# --- penalties and bans ----------------------------------------------------------------------


def test_token_counts() -> None:
    counts = token_counts([[0, 2, 2, 4], [], [1]], vocab_size=5)
    assert counts.tolist() == [[1, 0, 2, 0, 1], [0, 0, 0, 0, 0], [0, 1, 0, 0, 0]]


def test_apply_penalties_hand_computed() -> None:
    logits = torch.tensor([[2.0, -2.0, 1.0, -1.0, 3.0]])
    prompt_mask = torch.tensor([[True, True, False, False, False]])
    counts = torch.tensor([[0, 0, 2, 1, 0]])
    out = apply_penalties(
        logits, prompt_mask, counts,
        presence=torch.tensor([0.5]), frequency=torch.tensor([0.25]), repetition=torch.tensor([2.0]),
    )
    expected = [
        2.0 / 2,  # prompt only: repetition divides a positive logit
        -2.0 * 2,  # prompt only: repetition multiplies a negative logit
        1.0 / 2 - 0.25 * 2 - 0.5,  # output x2: repetition, frequency * 2, presence
        -1.0 * 2 - 0.25 * 1 - 0.5,  # output x1
        3.0,  # never seen: untouched
    ]
    assert out[0].tolist() == pytest.approx(expected)
    assert logits.tolist() == [[2.0, -2.0, 1.0, -1.0, 3.0]]  # input not modified


def test_apply_penalties_per_row() -> None:
    logits = torch.ones(2, 3)
    counts = torch.tensor([[1, 0, 0], [1, 0, 0]])
    no_prompt = torch.zeros(2, 3, dtype=torch.bool)
    out = apply_penalties(
        logits, no_prompt, counts,
        presence=torch.tensor([1.0, 0.0]), frequency=torch.tensor([0.0, 0.0]),
        repetition=torch.tensor([1.0, 4.0]),
    )
    assert out.tolist() == [[0.0, 1.0, 1.0], [0.25, 1.0, 1.0]]


def test_penalize_builds_masks_from_ids() -> None:
    params = [SamplingParams(repetition_penalty=2.0, frequency_penalty=1.0)]
    st = st_for(params, 4)
    logits = torch.tensor([[4.0, 4.0, 4.0, 4.0]])
    out = penalize(logits, st, prompt_ids=[[0]], output_ids=[[1, 1]])
    assert out.tolist() == [[2.0, 2.0 - 2.0, 4.0, 4.0]]
    st_off = st_for([SamplingParams()], 4)
    assert penalize(logits, st_off, [[0]], [[1]]) is logits  # no work when all penalties off


def test_apply_banned() -> None:
    logits = torch.zeros(3, 4)
    out = apply_banned(logits, [[1, 3], [], [0]])
    assert out.tolist() == [[0, INF, 0, INF], [0, 0, 0, 0], [INF, 0, 0, 0]]
    assert logits.eq(0).all()  # input not modified
    assert apply_banned(logits, [[], [], []]) is logits


def test_bans_apply_to_greedy_and_sampled_rows() -> None:
    logits = torch.tensor([[0.0, 5.0, 1.0], [0.0, 5.0, 1.0]])
    params = [SamplingParams(temperature=0.0), SamplingParams(top_k=2)]
    st = st_for(params, 3, [None, torch.Generator().manual_seed(0)], banned=[[1], [1]])
    for _ in range(20):
        assert sample(logits, st).tolist()[0] == 2
        assert sample(logits, st).tolist()[1] in (0, 2)


# --- filters: exact masks --------------------------------------------------------------------


def test_apply_temperature() -> None:
    out = apply_temperature(torch.tensor([[1.0, 2.0], [1.0, 2.0]]), torch.tensor([0.5, 2.0]))
    assert out.tolist() == [[2.0, 4.0], [0.5, 1.0]]


def test_apply_top_k_mask_per_row_and_ties() -> None:
    logits = torch.tensor([[1.0, 4.0, 3.0, 2.0], [1.0, 4.0, 3.0, 2.0], [2.0, 3.0, 3.0, 1.0]])
    out = apply_top_k(logits, torch.tensor([2, 4, 1]))
    assert out.tolist() == [
        [INF, 4.0, 3.0, INF],
        [1.0, 4.0, 3.0, 2.0],  # k == V: nothing dropped
        [INF, 3.0, 3.0, INF],  # both tokens tied with the 1st largest are kept
    ]


def test_apply_top_p_mask() -> None:
    logits = torch.tensor(PROBS).log().expand(4, -1)
    out = apply_top_p(logits, torch.tensor([0.35, 0.6, 0.95, 1.0]))
    kept = torch.isfinite(out).tolist()
    assert kept == [
        [False, False, False, True],  # 0.4 >= 0.35
        [False, False, True, True],  # 0.4 < 0.6 <= 0.7
        [True, True, True, True],  # 0.9 < 0.95
        [True, True, True, True],  # off
    ]
    assert out[torch.isfinite(out)].tolist() == pytest.approx(logits[torch.isfinite(out)].tolist())


def test_apply_top_p_keeps_ties_with_last_needed_token() -> None:
    logits = torch.tensor([[0.25, 0.25, 0.25, 0.25]]).log()
    assert torch.isfinite(apply_top_p(logits, torch.tensor([0.3]))).all()


def test_apply_min_p_mask() -> None:
    logits = torch.tensor(PROBS).log().expand(3, -1)
    out = apply_min_p(logits, torch.tensor([0.45, 0.8, 0.0]))
    assert torch.isfinite(out).tolist() == [
        [False, True, True, True],  # threshold 0.18
        [False, False, False, True],  # threshold 0.32
        [True, True, True, True],
    ]


# --- sampling: distributions -----------------------------------------------------------------


def test_greedy_is_argmax_lowest_id_on_ties() -> None:
    logits = torch.tensor([[0.0, 3.0, 3.0, 1.0], [5.0, 1.0, 2.0, 5.0], [1.0, 2.0, 3.0, 4.0]])
    st = st_for([SamplingParams(temperature=0.0), SamplingParams(top_k=1),
                 SamplingParams(temperature=0.0)], 4)
    assert st.all_greedy
    assert sample(logits, st).tolist() == [1, 0, 3]


def test_greedy_rows_in_a_mixed_batch() -> None:
    torch.manual_seed(0)
    logits = torch.randn(6, 50)
    params = [SamplingParams(temperature=0.0 if i % 2 == 0 else 1.0) for i in range(6)]
    gens = [torch.Generator().manual_seed(i) for i in range(6)]
    ids = sample(logits, st_for(params, 50, gens))
    assert ids.dtype == torch.int64 and ids.shape == (6,)
    assert ids[0::2].tolist() == logits[0::2].argmax(dim=1).tolist()


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        (SamplingParams(), PROBS),
        (SamplingParams(temperature=0.5), [p * p / 0.3 for p in PROBS]),  # p^(1/T), renormalised
        (SamplingParams(top_k=2), [0, 0, 3 / 7, 4 / 7]),
        (SamplingParams(top_p=0.6), [0, 0, 3 / 7, 4 / 7]),
        (SamplingParams(min_p=0.45), [0, 2 / 9, 3 / 9, 4 / 9]),
        (SamplingParams(top_k=3, top_p=0.5), [0, 0, 3 / 7, 4 / 7]),  # top-p on the top-k mass
        (SamplingParams(top_k=3, min_p=0.6), [0, 0, 3 / 7, 4 / 7]),
    ],
)
def test_sampled_frequencies_match_renormalised_probs(
    params: SamplingParams, expected: list[float]
) -> None:
    freqs = frequencies(params, PROBS)
    for f, e in zip(freqs, expected, strict=True):
        if e == 0:
            assert f == 0.0  # a masked token is never drawn
        else:
            assert f == pytest.approx(e, abs=0.015)


def test_temperature_skews_distribution() -> None:
    hot = frequencies(SamplingParams(temperature=2.0), PROBS)
    expected = [math.sqrt(p) for p in PROBS]
    total = sum(expected)
    assert hot == pytest.approx([e / total for e in expected], abs=0.015)


# --- sampling: seeded reproducibility --------------------------------------------------------


def run_steps(logits_per_step: list[torch.Tensor], params, seeds, row: int) -> list[int]:
    gens = [torch.Generator().manual_seed(s) if s is not None else None for s in seeds]
    st = st_for(params, logits_per_step[0].shape[1], gens)
    return [sample(step, st)[row].item() for step in logits_per_step]


def test_same_seed_same_tokens_whatever_the_batch() -> None:
    torch.manual_seed(0)
    vocab, steps = 500, 12
    mine = [torch.randn(1, vocab) * 2 for _ in range(steps)]
    p = SamplingParams(temperature=1.0, top_p=0.95, seed=42)

    alone = run_steps(mine, [p], [42], row=0)
    # Same request at row 2 of a batch, with other seeded and unseeded rows around it.
    others = SamplingParams(temperature=0.8, top_k=20)
    batch = [torch.cat([torch.randn(2, vocab), m, torch.randn(1, vocab)]) for m in mine]
    in_batch = run_steps(batch, [others, p, p, SamplingParams(temperature=0.0)], [7, None, 42, None], row=2)
    # And at row 0 of a differently ordered, differently sized batch.
    batch2 = [torch.cat([m, torch.randn(4, vocab)]) for m in mine]
    reordered = run_steps(batch2, [p] + [others] * 4, [42, 1, 2, None, 3], row=0)

    assert alone == in_batch == reordered
    assert len(set(alone)) > 1  # the draws are genuinely random
    other_seed = run_steps(mine, [p], [43], row=0)
    assert other_seed != alone


def test_sample_does_not_modify_logits() -> None:
    torch.manual_seed(0)
    logits = torch.randn(3, 20)
    before = logits.clone()
    params = [SamplingParams(temperature=0.7, top_k=5, top_p=0.9, min_p=0.05)] * 3
    sample(logits, st_for(params, 20, [torch.Generator().manual_seed(0)] * 3, banned=[[1], [], [2]]))
    assert torch.equal(logits, before)


# --- logprobs --------------------------------------------------------------------------------


def test_compute_logprobs_equals_log_softmax() -> None:
    torch.manual_seed(0)
    logits = torch.randn(3, 10)
    chosen_ids = torch.tensor([4, 0, 9])
    chosen, top_ids, top_lp = compute_logprobs(logits, chosen_ids, k=3)
    ref = torch.log_softmax(logits, dim=1)
    assert torch.allclose(chosen, ref[torch.arange(3), chosen_ids])
    assert top_ids.shape == (3, 3) and top_lp.shape == (3, 3)
    assert torch.equal(top_ids, ref.argsort(dim=1, descending=True)[:, :3])
    assert torch.allclose(top_lp, ref.gather(1, top_ids))
    assert (top_lp[:, :-1] >= top_lp[:, 1:]).all()


def test_compute_logprobs_k_zero_and_prompt_positions() -> None:
    torch.manual_seed(1)
    prompt = torch.tensor([3, 1, 4, 1, 5])
    logits = torch.randn(5, 8)  # one row per prompt position
    chosen, top_ids, top_lp = compute_logprobs(logits[:-1], prompt[1:], k=0)
    assert top_ids.shape == (4, 0) and top_lp.shape == (4, 0)
    ref = torch.log_softmax(logits[:-1], dim=1)
    assert chosen.tolist() == pytest.approx([ref[i, prompt[i + 1]].item() for i in range(4)])
