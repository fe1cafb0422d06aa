"""Speculative decoding on the tiny model: greedy output token for token as without
speculation (every proposer; alone, mixed with requests that do not speculate, under a
pool small enough to preempt mid-draft; stops, min/max tokens, n > 1, logprobs), the
sampling distribution (chi-square against the exact one), rollback block accounting,
aborts with drafts pending, the adaptive length."""

from __future__ import annotations

import math

import pytest
import torch
from helpers.tiny import reference_logits, tiny_checkpoint

from thinkstream.config import EngineConfig
from thinkstream.engine.llm_engine import LLMEngine
from thinkstream.sampling_params import SamplingParams
from thinkstream.speculative.adaptive import LengthController, best_length, fit_to_blocks
from thinkstream.speculative.config import SpeculativeConfig
from thinkstream.speculative.decoder import SpeculativeDecoder
from thinkstream.speculative.ngram import NgramProposer
from thinkstream.speculative.proposer import NO_DRAFT, Draft, Proposer
from thinkstream.speculative.verify import accept_drafts, rejection_sample

PROMPTS = [
    [5, 6, 7, 8, 9, 5, 6, 7, 8, 9, 5, 6],
    [100, 200, 300, 12, 13, 14, 15, 16, 17, 100, 200, 300],
    [42],
    [3, 1, 4, 1, 5, 9, 2, 6],
    [250, 240, 230, 220, 210, 200, 250, 240],
]
GREEDY = SamplingParams(temperature=0.0, max_tokens=14, ignore_eos=True)


def make_engine(spec=None, proposer: Proposer | None = None, **cfg) -> LLMEngine:
    base = dict(block_size=4, num_blocks=256, max_num_seqs=16, max_num_batched_tokens=256)
    base.update(cfg)
    engine = LLMEngine(config=EngineConfig(**base), checkpoint=tiny_checkpoint())
    if proposer is not None:  # a test proposer plugged in as the engine's own would be
        hook = SpeculativeDecoder(engine, SpeculativeConfig.coerce(spec or {}), proposer)
        engine.speculative = hook
        engine.add_hook(hook)
    return engine


def run(engine: LLMEngine, prompts, params=GREEDY, n_steps: int = 3000):
    ids = [engine.add_request(f"r{i}", p, params) for i, p in enumerate(prompts)]
    done = {}
    for _ in range(n_steps):
        if not engine.has_unfinished_requests():
            break
        for out in engine.step():
            if out.finished:
                done[out.request_id] = out
        engine.check_integrity()
    assert not engine.has_unfinished_requests()
    return [done[i] for i in ids]


class Oracle(Proposer):
    """Drafts the known greedy answer with every third token wrong (some drafts accepted,
    some rejected); requests whose prompt is not in ``answers`` get none."""

    name = "oracle"

    def __init__(self, answers: dict[tuple[int, ...], list[int]], wrong_every: int = 3) -> None:
        self.answers, self.wrong_every = answers, wrong_every

    def propose(self, seqs, lengths):
        out = []
        for s, k in zip(seqs, lengths, strict=True):
            ans = self.answers.get(tuple(s.token_ids[: s.num_prompt_tokens]))
            if ans is None:
                out.append(NO_DRAFT)
                continue
            pos = s.num_output_tokens
            toks = [t if (pos + j) % self.wrong_every else (t + 1) % 320
                    for j, t in enumerate(ans[pos : pos + k])]
            out.append(Draft(toks, [0.5] * len(toks)))
        return out


@pytest.fixture(scope="module")
def plain():
    return [o.outputs[0].token_ids for o in run(make_engine(), PROMPTS)]


def answers(plain, which=None):
    return {tuple(PROMPTS[i]): plain[i] for i in (which or range(len(PROMPTS)))}


FIXED = {"num_speculative_tokens": 4, "adaptive": False}


def test_greedy_oracle_drafts_give_the_same_tokens(plain) -> None:
    engine = make_engine(FIXED, Oracle(answers(plain)))
    got = [o.outputs[0].token_ids for o in run(engine, PROMPTS)]
    assert got == plain
    st = engine.speculative.stats
    assert 0 < st.num_accepted_tokens < st.num_draft_tokens  # both paths taken


def test_greedy_mixed_with_requests_that_do_not_speculate(plain) -> None:
    engine = make_engine(FIXED, Oracle(answers(plain, [0, 3])))
    got = [o.outputs[0].token_ids for o in run(engine, PROMPTS)]
    assert got == plain
    assert engine.speculative.stats.num_drafts > 0


@pytest.mark.parametrize("method", ["ngram", "early_exit", "fused"])
def test_greedy_each_proposer_the_engine_builds(plain, method) -> None:
    engine = make_engine(speculative={"method": method, "ngram_min": 1, "early_exit_layer": 1,
                                      **FIXED}, num_blocks=24)
    got = [o.outputs[0].token_ids for o in run(engine, PROMPTS)]
    assert got == plain
    assert engine.speculative.stats.num_draft_tokens > 0


def test_early_exit_drafts_are_the_first_layers_argmax() -> None:
    """The exit head after layer 1 of the tiny model, computed densely (a one-layer model
    with the same weights), drafts exactly what the proposer drafts; its blocks are lent."""
    ck = tiny_checkpoint()
    one = tiny_checkpoint(num_layers=1)
    assert torch.equal(one.tensors["layers.0.attn.q_proj.weight"],
                       ck.tensors["layers.0.attn.q_proj.weight"])
    engine = make_engine(speculative={"method": "early_exit", "early_exit_layer": 1, **FIXED})
    engine.add_request("r", PROMPTS[3], SamplingParams(temperature=0.0, max_tokens=2,
                                                       ignore_eos=True))
    engine.step()
    seq = engine.requests["r"].seqs[0]
    free = engine.kv.num_free_blocks
    (draft,) = engine.speculative.proposer.propose([seq], [3])
    assert engine.kv.num_free_blocks == free
    ids = list(seq.token_ids)
    for t in draft.tokens:
        assert t == int(reference_logits(one.config, one.tensors, ids)[-1].argmax())
        ids.append(t)


def test_greedy_under_a_tiny_pool_preempts_mid_draft(plain) -> None:
    # 10 blocks of 4 for five 13-26-token sequences: preemptions and dropped drafts
    engine = make_engine(FIXED, Oracle(answers(plain), wrong_every=5), num_blocks=10)
    got = [o.outputs[0].token_ids for o in run(engine, PROMPTS)]
    assert got == plain
    assert engine.num_preemptions > 0 or engine.speculative.stats.num_drafts > 0
    assert engine.kv.num_free_blocks == engine.kv.num_blocks


def test_stops_min_max_tokens_n_and_logprobs_match(plain, tiny_tok) -> None:
    stop_at = plain[1][6]
    stop_text = tiny_tok.decode(plain[3][4:6])  # a stop string inside a drafted run
    params = SamplingParams(temperature=0.0, max_tokens=11, min_tokens=3, n=2, logprobs=2,
                            stop_token_ids=[stop_at], stop=[stop_text])
    ref = run(make_engine(), PROMPTS, params)
    got = run(make_engine(FIXED, Oracle(answers(plain))), PROMPTS, params)
    assert ref[3].outputs[0].stop_reason == stop_text
    for a, b in zip(ref, got, strict=True):
        assert [c.text for c in a.outputs] == [c.text for c in b.outputs]
        assert [c.token_ids for c in a.outputs] == [c.token_ids for c in b.outputs]
        assert [c.finish_reason for c in a.outputs] == [c.finish_reason for c in b.outputs]
        for ca, cb in zip(a.outputs, b.outputs, strict=True):
            for pa, pb in zip(ca.logprobs, cb.logprobs, strict=True):
                assert list(pa) == list(pb)
                assert all(abs(pa[t].logprob - pb[t].logprob) < 1e-4 for t in pa)


def test_rollback_frees_exactly_the_rejected_blocks() -> None:
    class Wrong(Proposer):
        def propose(self, seqs, lengths):
            return [Draft([1] * k, [0.5] * k) for k in lengths]

    prompt = [5, 6, 7, 8, 9, 10, 11]  # 7 tokens: the 8th (first output) fills block 2
    plain_engine, spec_engine = make_engine(), make_engine(
        {"num_speculative_tokens": 9, "adaptive": False}, Wrong())
    params = SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True)
    for e in (plain_engine, spec_engine):
        e.add_request("r", prompt, params)
    seen_drafts = False
    for _ in range(5):
        plain_engine.step()
        seq = spec_engine.requests["r"].seqs[0]
        spec_engine.step()
        seen_drafts |= spec_engine.speculative.stats.num_draft_tokens > 0
        spec_engine.check_integrity()
        assert spec_engine.kv.block_table(seq.seq_id) == plain_engine.kv.block_table(seq.seq_id)
        assert spec_engine.kv.num_free_blocks == plain_engine.kv.num_free_blocks
        assert seq.num_computed_tokens == seq.num_tokens - 1
    assert seen_drafts
    assert spec_engine.speculative.stats.num_accepted_tokens == 0


def test_abort_with_drafts_pending_leaves_the_pool_full(plain) -> None:
    engine = make_engine(FIXED, Oracle(answers(plain)))
    for i, p in enumerate(PROMPTS):
        engine.add_request(f"r{i}", p, GREEDY)
    for _ in range(3):
        engine.step()
    running = list(engine.scheduler.running)
    engine.speculative.before_schedule(running)  # drafts in flight, as at a step's start
    assert any(s.draft_token_ids for s in running)
    out = engine.scheduler.schedule()  # and scheduled: their blocks taken
    assert any(s.num_new_tokens > 1 for s in out.scheduled)
    for i in range(len(PROMPTS)):
        engine.abort(f"r{i}")
    engine.check_integrity()
    assert engine.kv.num_free_blocks == engine.kv.num_blocks


def test_adaptive_length_falls_to_zero_and_rises(plain) -> None:
    right = Oracle(answers(plain), wrong_every=10**6)
    wrong = Oracle({k: [(t + 1) % 320 for t in v] for k, v in answers(plain).items()},
                   wrong_every=10**6)
    spec = {"num_speculative_tokens": 4, "compute_bound_tokens": 64}
    params = SamplingParams(temperature=0.0, max_tokens=14, ignore_eos=True)
    for proposer, want in ((wrong, 0), (right, 4)):
        engine = make_engine(spec, proposer)
        engine.add_request("r", PROMPTS[1], params)
        lengths = []
        while engine.has_unfinished_requests():
            engine.step()
            st = engine.speculative.lengths.states.get("r#0")
            if st is not None:
                lengths.append(st.length)
        assert lengths[-1] == want, lengths
        assert engine.requests == {}


def test_a_compute_bound_batch_drafts_nothing(plain) -> None:
    """FASER: with the batch's own tokens at or past the knee, no request drafts, even one
    the oracle would always be right for; below it (one request) the same one drafts."""
    spec = {"num_speculative_tokens": 4, "compute_bound_tokens": 3}
    params = SamplingParams(temperature=0.0, max_tokens=14, ignore_eos=True)
    batched = make_engine(spec, Oracle(answers(plain), wrong_every=10**6))
    got = [o.outputs[0].token_ids for o in run(batched, PROMPTS[:3], params)]
    assert got == plain[:3] and batched.speculative.stats.num_draft_tokens == 0
    alone = make_engine(spec, Oracle(answers(plain), wrong_every=10**6))
    assert run(alone, PROMPTS[:1], params)[0].outputs[0].token_ids == plain[0]
    assert alone.speculative.stats.num_accepted_tokens > 0


def test_length_controller_and_budget_units() -> None:
    c = LengthController(k_max=5, knee=16, proposer_cost=0.0)
    assert c.length("a", 1) == 3  # prior alpha 0.5
    for _ in range(10):
        c.update("a", 3, 0)
    assert c.length("a", 1) == 0
    for _ in range(8):
        c.update("a", 5, 5)
    assert c.length("a", 1) == 5
    c.states["a"].alpha = 0.6
    assert (c.length("a", 1), c.length("a", 8), c.length("a", 64)) == (4, 1, 0)  # by phase
    assert best_length(0.0, 0.05, 5) == 0 and best_length(1.0, 0.05, 5) == 5
    # spare slots cost nothing; then blocks, surest first
    assert fit_to_blocks([5, 5], [3, 0], 1, 4, [1, 0]) == [3, 4]
    assert fit_to_blocks([5, 5], [3, 0], 0, 4, [0, 1]) == [3, 0]


def test_length_follows_bursty_acceptance_per_position() -> None:
    """Echo-like history: the first draft token is rejected half the time, but when it is
    accepted the whole draft is. Per-position rates keep the full length (E(5) = 1 + 0.41 *
    5 per 1 + 5/3 steps beats every shorter draft); one per-token rate over the same
    history (~0.66) would cut drafts to 2. A large batch still stops drafting."""
    c = LengthController(k_max=5, knee=2, proposer_cost=0.0)
    for _ in range(10):
        c.update("a", 5, 5)
        c.update("a", 5, 0)
    st = c.states["a"]
    assert len(st.alphas) == 5 and st.alphas[0] == pytest.approx(0.412, abs=1e-3)
    assert min(st.alphas[1:]) > 0.98
    assert (c.length("a", 1), c.length("a", 8)) == (5, 0)
    assert best_length(0.66, 1 / 3, 5) == 2
    # a position first judged starts from the rate before it, then follows its own record
    c.update("b", 1, 1)
    c.update("b", 3, 1)
    assert c.states["b"].alphas == pytest.approx([0.755, 0.7 * 0.755])


def test_ngram_lookup() -> None:
    p = NgramProposer(2, 3)
    toks = [1, 2, 3, 4, 5, 9, 1, 2, 3]
    assert p.lookup("a", toks, 3).tokens == [4, 5, 9]
    toks += [4, 7, 7, 2, 3]
    assert p.lookup("a", toks, 2).tokens == [4, 7]  # latest match of (2, 3)
    assert p.lookup("a", [8, 8, 8, 8], 3).tokens == [8]  # rebuilt
    assert p.lookup("a", [8] * 7, 3).tokens == [8, 8, 8]  # the latest leaves 1: the first
    assert p.lookup("b", [1, 2, 3], 3).tokens == []


def test_accept_drafts_rule() -> None:
    assert accept_drafts([4, 5, 6, 1, 9, 0], [[4, 7], [1, 2]]) == [[4, 5], [1, 9]]
    assert accept_drafts([4, 7, 8], [[4, 7]]) == [[4, 7, 8]]
    assert accept_drafts([3], [[]]) == [[3]]


def _chi2(counts: dict, probs: dict, n: int) -> tuple[float, int]:
    """Pearson's statistic over cells, those expected below 5 pooled into one."""
    stat, df, rest_o, rest_e = 0.0, -1, 0, 0.0
    for cell, p in probs.items():
        e, o = p * n, counts.get(cell, 0)
        if e < 5:
            rest_o, rest_e = rest_o + o, rest_e + e
            continue
        stat, df = stat + (o - e) ** 2 / e, df + 1
    if rest_e > 0:
        stat, df = stat + (rest_o - rest_e) ** 2 / rest_e, df + 1
    assert sum(counts.values()) == n and set(counts) <= set(probs)
    return stat, df


def _chi2_crit(df: int) -> float:
    """The 0.999 quantile of chi-square(df) (Wilson-Hilferty)."""
    z = 3.09
    return df * (1 - 2 / (9 * df) + z * math.sqrt(2 / (9 * df))) ** 3


def test_rejection_sample_keeps_the_target_distribution() -> None:
    g = torch.Generator().manual_seed(1)
    p = torch.tensor([[0.5, 0.3, 0.2], [0.1, 0.6, 0.3]])
    q = torch.tensor([[0.2, 0.2, 0.6]])
    exact = {(a, b): float(p[0, a] * p[1, b]) for a in range(3) for b in range(3)}
    counts: dict = {}
    n = 4000
    for _ in range(n):
        d = int(torch.multinomial(q[0], 1, generator=g))  # the draft, drawn from q
        out = rejection_sample(p, [d], q, g)
        if len(out) == 1:  # rejected: the target's next token, as the next step would
            out.append(int(torch.multinomial(p[1], 1, generator=g)))
        counts[tuple(out)] = counts.get(tuple(out), 0) + 1
    stat, df = _chi2(counts, exact, n)
    assert stat < _chi2_crit(df)


def test_sampling_distribution_with_drafts_is_the_targets() -> None:
    """First three tokens of 2,400 seeded draws (top-k 3 on a 12-token vocabulary; the
    random model is peaked, so temperature 12) against the exact distribution from the
    dense reference; the drafts (tokens 2 and 3) are the greedy guesses."""
    ck = tiny_checkpoint(vocab_size=12)
    prompt, temp = [3, 7, 5], 12.0
    params = dict(temperature=temp, top_k=3, max_tokens=4, ignore_eos=True)

    def probs(ids: list[int]) -> torch.Tensor:
        logits = reference_logits(ck.config, ck.tensors, ids)[-1]
        top = logits.topk(3)
        return torch.zeros(12).scatter(0, top.indices, (top.values / temp).softmax(0))

    exact, greedy_after = {}, {}
    p1 = probs(prompt)
    for a in p1.nonzero().flatten().tolist():
        p2 = probs([*prompt, a])
        g2 = int(p2.argmax())
        greedy_after[(a,)] = [g2, int(probs([*prompt, a, g2]).argmax())]
        for b in p2.nonzero().flatten().tolist():
            p3 = probs([*prompt, a, b])
            for c in p3.nonzero().flatten().tolist():
                exact[(a, b, c)] = float(p1[a] * p2[b] * p3[c])

    class Greedy(Proposer):
        def propose(self, seqs, lengths):
            out = []
            for s, k in zip(seqs, lengths, strict=True):
                toks = greedy_after.get(tuple(s.output_token_ids), [])[:k]
                out.append(Draft(toks, [0.5] * len(toks)))
            return out

    engine = LLMEngine(config=EngineConfig(block_size=2, num_blocks=2048, max_num_seqs=400,
                                           max_num_batched_tokens=2048), checkpoint=ck)
    hook = SpeculativeDecoder(engine, SpeculativeConfig(num_speculative_tokens=2,
                                                        adaptive=False), Greedy())
    engine.add_hook(hook)
    n, counts = 2400, {}
    for start in range(0, n, 400):
        for i in range(start, start + 400):
            engine.add_request(f"r{i}", prompt, SamplingParams(seed=i, **params))
        while engine.has_unfinished_requests():
            for out in engine.step():
                if out.finished:
                    cell = tuple(out.outputs[0].token_ids[:3])
                    counts[cell] = counts.get(cell, 0) + 1
    engine.check_integrity()
    assert hook.stats.num_accepted_tokens > 0 and hook.stats.num_draft_tokens > n
    stat, df = _chi2(counts, exact, n)
    assert stat < _chi2_crit(df), (stat, df)


def test_config_from_cli_flags_dicts_and_names() -> None:
    import argparse

    from thinkstream.cli import add_engine_args, build_parser, engine_config

    p = argparse.ArgumentParser()
    add_engine_args(p)
    cfg = engine_config(p.parse_args(["--speculative-method", "fused",
                                      "--num-speculative-tokens", "3",
                                      "--no-adaptive-speculation"]))
    assert cfg.speculative == SpeculativeConfig(method="fused", num_speculative_tokens=3,
                                                adaptive=False)
    assert engine_config(p.parse_args([])).speculative is None
    drafted = engine_config(p.parse_args(["--speculative-method", "draft_model",
                                          "--draft-model", "small.gguf"])).speculative
    assert drafted == SpeculativeConfig(method="draft_model", draft_model="small.gguf")
    with pytest.raises(ValueError, match="draft_model is needed"):
        engine_config(p.parse_args(["--speculative-method", "draft_model"]))
    with pytest.raises(ValueError, match="draft_model is needed"):
        engine_config(p.parse_args(["--draft-model", "small.gguf",
                                    "--speculative-method", "ngram"]))
    serve = build_parser().parse_args(["serve", "--speculative-method", "ngram"])
    assert engine_config(serve).speculative == SpeculativeConfig(method="ngram")
    for alone in (["--num-speculative-tokens", "3"], ["--no-adaptive-speculation"],
                  ["--draft-model", "small.gguf"]):  # a speculative flag without a method
        with pytest.raises(SystemExit, match="need --speculative-method"):
            engine_config(p.parse_args(alone))
    profile = build_parser().parse_args(["bench", "profile", "--batch", "8", "9", "--batch", "32"])
    assert profile.batch == [8, 9, 32]
    assert EngineConfig(speculative="ngram").speculative == SpeculativeConfig()
    assert EngineConfig(speculative={"num_speculative_tokens": 2}).speculative == (
        SpeculativeConfig(num_speculative_tokens=2))
    with pytest.raises(ValueError, match="unknown field"):
        EngineConfig(speculative={"tokens": 2})
    with pytest.raises(ValueError, match="method"):
        EngineConfig(speculative="medusa")
    with pytest.raises(ValueError, match="num_speculative_tokens"):
        SpeculativeConfig(num_speculative_tokens=0)


def test_measure_exit_layers_borrows_and_returns_blocks() -> None:
    from thinkstream.speculative.early_exit import measure_exit_layers

    engine = make_engine()
    free = engine.kv.num_free_blocks
    (report,) = measure_exit_layers(engine, [PROMPTS[1], PROMPTS[3]])
    assert report.layer == 1 and 0 <= report.agreement <= 1 and 0 < report.cost < 1
    assert engine.kv.num_free_blocks == free
    engine.check_integrity()


def test_draft_model_drafts_its_dense_greedy_and_keeps_output() -> None:
    """The target's first layer as a separate draft model (untied heads, so the two often
    disagree): every draft is the draft model's dense greedy continuation of the sequence
    at the time (its paged KV, caught up over accepted tokens and rolled back over
    rejected ones, is right); the output is the target's; a tiny pool preempts."""
    from thinkstream.speculative.draft_model import DraftModelProposer

    target = tiny_checkpoint(tie_word_embeddings=False)
    small = tiny_checkpoint(num_layers=1, tie_word_embeddings=False)
    seen: list[tuple[list[int], list[int]]] = []

    class Recording(DraftModelProposer):
        def propose(self, seqs, lengths):
            out = super().propose(seqs, lengths)
            seen.extend((list(s.token_ids), d.tokens) for s, d in zip(seqs, out, strict=True))
            return out

    def engine_for(num_blocks: int) -> LLMEngine:
        return LLMEngine(config=EngineConfig(block_size=4, num_blocks=num_blocks,
                                             max_num_seqs=16), checkpoint=target)

    want = [o.outputs[0].token_ids for o in run(engine_for(256), PROMPTS[:3])]
    for num_blocks in (256, 12):
        engine = engine_for(num_blocks)
        hook = SpeculativeDecoder(engine, SpeculativeConfig(
            method="draft_model", draft_model=small, **FIXED), Recording(engine, small))
        engine.speculative = hook
        engine.add_hook(hook)
        got = [o.outputs[0].token_ids for o in run(engine, PROMPTS[:3])]
        assert got == want
        assert hook.stats.num_draft_tokens > hook.stats.num_accepted_tokens > 0
    for ids, draft in seen[::4]:
        for t in draft:
            assert t == int(reference_logits(small.config, small.tensors, ids)[-1].argmax())
            ids = [*ids, t]


def test_fuse_takes_the_surest_consistent_token() -> None:
    from thinkstream.speculative.fused import fuse

    a, b = Draft([1, 2, 3], [0.9, 0.2, 0.9]), Draft([1, 5, 6, 7], [0.5, 0.6, 0.6, 0.6])
    draft, source = fuse([a, b], 4)
    assert draft.tokens == [1, 5, 6, 7] and source == [0, 1, 1, 1]  # a drops out at 2 != 5
    draft, source = fuse([a, b], 4, weights=[1.0, 0.1])  # b's drafts seldom accepted
    assert draft.tokens == [1, 2, 3] and source == [0, 0, 0]


def test_draft_model_kv_is_counted_when_the_pool_is_sized() -> None:
    """The draft's KV lives in the target's blocks (SpecMemo), so a memory budget buys
    fewer blocks with a draft model: budget // (target's + draft's bytes per block)."""
    from thinkstream.worker.runner import kv_bytes_per_block

    target = tiny_checkpoint(tie_word_embeddings=False)
    small = tiny_checkpoint(num_layers=1, tie_word_embeddings=False)
    budget = 1 << 20
    plain = LLMEngine(config=EngineConfig(block_size=4, kv_cache_memory=budget),
                      checkpoint=target)
    drafted = LLMEngine(config=EngineConfig(
        block_size=4, kv_cache_memory=budget,
        speculative=SpeculativeConfig(method="draft_model", draft_model=small)), checkpoint=target)
    per_block = [kv_bytes_per_block(c.config, 4, torch.float32) for c in (target, small)]
    assert plain.num_kv_blocks == budget // per_block[0]
    assert drafted.num_kv_blocks == budget // sum(per_block) < plain.num_kv_blocks


def test_step_cost_fits_the_knee_of_the_forward() -> None:
    """t(N) = 10 ms + 2.5 ms * N: knee 4 tokens; the prior until token counts spread, and
    for a fit that does not grow with N."""
    from thinkstream.speculative.adaptive import StepCost

    cost = StepCost(16)
    for _ in range(20):
        cost.observe(1, 0.0125)
    assert cost.knee == 16  # one token count: no slope to fit
    for n in (1, 2, 4, 6, 3, 5) * 10:
        cost.observe(n, 0.010 + 0.0025 * n)
    assert abs(cost.knee - 4.0) < 0.2
    flat = StepCost(16)
    for n in (1, 6) * 10:
        flat.observe(n, 0.02 - 0.001 * n)  # faster with more tokens: no usable fit
    assert flat.knee == 16
    with pytest.raises(ValueError):
        StepCost(0)


def test_the_engine_measures_its_knee_unless_the_config_fixes_it(plain) -> None:
    """The decoder times each forward: after steps of different sizes its knee is no longer
    the prior (here a tiny model's, whatever it measures); compute_bound_tokens fixes it."""
    engine = make_engine(speculative={"method": "ngram", "ngram_min": 1, **FIXED}, num_blocks=64)
    run(engine, PROMPTS)
    hook = engine.speculative
    assert hook.cost is not None and hook.cost._w > 0
    assert hook.lengths.knee == hook.cost.knee
    fixed = make_engine(speculative={"method": "ngram", "compute_bound_tokens": 8, **FIXED})
    run(fixed, PROMPTS[:1])
    assert fixed.speculative.cost is None and fixed.speculative.lengths.knee == 8


def test_seeded_sampling_is_the_same_with_drafts_alone_or_batched() -> None:
    """A seeded sampled request keeps one row of noise per token it emits, however many
    drafts were computed: with four drafts every step (rejected: at temperature 30
    the tiny model's distribution is nearly flat) its tokens equal decoding without speculation, alone and beside other
    requests."""

    class Constant(Proposer):
        def propose(self, seqs, lengths):
            return [Draft([5, 6, 7, 8][:k], [0.5] * min(k, 4)) for k in lengths]

    prompt = [3, 1, 4, 1, 5, 9, 2, 6]
    params = SamplingParams(temperature=30.0, seed=11, max_tokens=16, ignore_eos=True)
    others = [[100 + i, 3, 4, 5] for i in range(3)]

    def tokens(speculate: bool, batch: list[list[int]]) -> list[int]:
        engine = make_engine(FIXED, Constant(), num_blocks=128) if speculate else make_engine(num_blocks=128)
        engine.add_request("me", prompt, params)
        for i, p in enumerate(batch):
            engine.add_request(f"o{i}", p, SamplingParams(temperature=30.0, seed=i, max_tokens=16))
        done = {}
        while engine.has_unfinished_requests():
            for out in engine.step():
                if out.finished:
                    done[out.request_id] = out.outputs[0].token_ids
        assert engine.check_integrity() is None
        if speculate:
            assert engine.speculative.stats.num_draft_tokens > engine.speculative.stats.num_accepted_tokens
        return done["me"]

    plain = tokens(False, [])
    assert len(set(plain)) > 4  # a flat distribution: the noise decides every token
    assert tokens(True, []) == plain
    assert tokens(True, others) == plain
