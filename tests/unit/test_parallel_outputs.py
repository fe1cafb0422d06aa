"""What a parallel-paths request reports, on the tiny model: its prompt ids and prompt
logprobs are a plain request's for the same prompt (the summary prompt is internal, a
one-token prompt gives ``[None]``)."""

from __future__ import annotations

import pytest
from helpers.parallel import run_paths
from helpers.tiny import tiny_checkpoint

from thinkstream.config import EngineConfig
from thinkstream.engine.llm_engine import LLMEngine
from thinkstream.parallel.config import ParallelConfig
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
