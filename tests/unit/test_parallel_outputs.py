"""What a parallel-paths request reports, on the tiny model: its prompt ids and prompt
logprobs are a plain request's for the same prompt (the summary prompt is internal, a
one-token prompt gives ``[None]``), and a vote answers with the tokens (and logprobs) in
which the first path giving the majority answer wrote it."""

from __future__ import annotations

import pytest
from helpers.parallel import run_paths
from helpers.tiny import tiny_checkpoint

from thinkstream.config import EngineConfig
from thinkstream.engine.llm_engine import LLMEngine
from thinkstream.parallel.config import ParallelConfig
from thinkstream.parallel.paths import extract_answer, majority, span_tokens
from thinkstream.sampling_params import SamplingParams

SCORED = SamplingParams(temperature=0, max_tokens=3, prompt_logprobs=2, ignore_eos=True)


def _plain_prompt_logprobs(ckpt, prompts: list[list[int]]) -> list:
    engine = LLMEngine(checkpoint=ckpt, config=EngineConfig(num_blocks=64, block_size=4))
    for i, p in enumerate(prompts):
        engine.add_request(str(i), p, SCORED)
    got: dict[str, list] = {}
    while engine.has_unfinished_requests():
        got.update({o.request_id: o.prompt_logprobs for o in engine.step() if o.finished})
    return [got[str(i)] for i in range(len(prompts))]


def test_prompt_ids_and_logprobs_are_a_plain_requests() -> None:
    ckpt = tiny_checkpoint()
    prompts = [[5], [5, 17, 33, 8, 91]]
    plain = _plain_prompt_logprobs(ckpt, prompts)
    assert plain[0] == [None] and len(plain[1]) == 5
    for merge in ("summary", "vote", "none"):
        cfg = ParallelConfig(paths=2, path_tokens=3, merge=merge, summary_prompt=" so:")
        for prompt, want in zip(prompts, plain, strict=True):
            out, _, _ = run_paths(ckpt, cfg, SCORED, prompt=prompt)
            assert out.prompt_token_ids == prompt, merge
            got = out.prompt_logprobs
            assert got is not None and len(got) == len(prompt) and got[0] is None, merge
            for g, w in zip(got[1:], want[1:], strict=True):
                assert list(g) == list(w), merge  # the same tokens, in rank order
                assert [x.rank for x in g.values()] == [x.rank for x in w.values()]
                assert [x.logprob for x in g.values()] == pytest.approx(
                    [x.logprob for x in w.values()], abs=1e-4)


def test_a_vote_answers_with_the_winning_paths_tokens_and_logprobs() -> None:
    ckpt = tiny_checkpoint()
    params = SamplingParams(temperature=6.0, seed=4, max_tokens=4, logprobs=3, ignore_eos=True)
    out, paths, engine = run_paths(ckpt, ParallelConfig(paths=3, path_tokens=10, merge="vote"),
                                   params)
    o = out.outputs[0]
    answer = majority([extract_answer(t) for t in o.paths])
    assert answer and o.text == answer
    win = next(p for p, t in zip(paths.paths, o.paths, strict=True) if extract_answer(t) == answer)
    tok = engine.tokenizer
    ends = [len(tok.decode(win.token_ids[: k + 1])) for k in range(len(win.token_ids))]
    at = tok.decode(win.token_ids).lower().rfind(answer)  # seeded: "...hu\fqqq" votes "qqq"
    assert at >= 0
    start, end = at, at + len(answer)
    want = [k for k, e in enumerate(ends) if e > start and (k == 0 or ends[k - 1] < end)]
    assert 0 < len(want) < len(win.token_ids)  # the answer's tokens, not the whole path
    assert o.token_ids == [win.token_ids[k] for k in want]
    assert o.logprobs is not None and len(o.logprobs) == len(o.token_ids)
    for k, entry, tid in zip(want, o.logprobs, o.token_ids, strict=True):
        assert next(iter(entry)) == tid and len(entry) >= 3  # the chosen token, then top 3
        assert entry[tid].logprob == win.seq.logprobs[k].logprob


def test_an_answers_tokens_include_those_whose_bytes_it_released() -> None:
    """Tokens that added no text (bytes of a character held back) belong with the token
    whose text released them; a token overlapping the answer's edge is in."""
    assert list(span_tokens([0, 0, 3, 5], 0, 3)) == [0, 1, 2]
    assert list(span_tokens([2, 4, 4, 7], 5, 7)) == [2, 3]
    assert list(span_tokens([2, 4, 4, 7], 3, 4)) == [1]
    assert list(span_tokens([1, 2, 3], 1, 2)) == [1]
