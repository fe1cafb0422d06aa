"""Speculative decoding on the real default model (SmolLM2-135M-Instruct): greedy output is
token for token the output without speculation, for each proposer, alone and in a batch
beside requests that cannot speculate (a JSON-constrained one) or find nothing to draft,
with a streamed session's answer; the prompt-lookup drafts are mostly accepted on an
echo task."""

from __future__ import annotations

import pytest
from helpers.runs import drain

from thinkstream.llm import LLM
from thinkstream.sampling_params import SamplingParams, StructuredOutputsParams

pytestmark = pytest.mark.integration

PASSAGE = ("The committee met on Tuesday to review the budget. It approved the new library "
           "wing, delayed the road repairs until spring, and asked the treasurer to publish "
           "the accounts online by the end of the month.")
ECHO = [{"role": "user", "content": f"Repeat this text exactly:\n\n{PASSAGE}"}]
CHAT = [{"role": "user", "content": "Name three colours of the rainbow."}]
GREEDY = SamplingParams(temperature=0.0, max_tokens=32)


@pytest.fixture(scope="module")
def plain(refs):
    llm = LLM(checkpoint=refs.checkpoint(None), dtype="float32", quantization=None, max_num_batched_tokens=512)
    return llm, [o.outputs[0].token_ids for o in llm.chat([ECHO, CHAT], GREEDY)]


@pytest.mark.parametrize("method", ["early_exit", "fused"])
def test_greedy_identical_for_model_drafters(refs, plain, method) -> None:
    _, want = plain
    llm = LLM(checkpoint=refs.checkpoint(None), dtype="float32", quantization=None, max_num_batched_tokens=512,
              speculative={"method": method, "num_speculative_tokens": 3, "adaptive": False,
                           "early_exit_layer": 4})
    short = SamplingParams(temperature=0.0, max_tokens=8)
    got = [o.outputs[0].token_ids for o in llm.chat([ECHO, CHAT], short)]
    assert got == [w[:8] for w in want]
    assert llm.engine.speculative.stats.num_draft_tokens > 0
    llm.engine.check_integrity()


def test_greedy_identical_in_a_batch(refs, plain) -> None:
    base, want = plain
    llm = LLM(checkpoint=refs.checkpoint(None), dtype="float32", quantization=None, max_num_batched_tokens=512,
              speculative={"method": "ngram", "num_speculative_tokens": 5})
    json_params = SamplingParams(temperature=0.0, max_tokens=16, structured_outputs=(
        StructuredOutputsParams(json_object=True)))
    want_json = base.chat(CHAT, json_params)[0].outputs[0].token_ids
    engine = llm.engine
    ids = [engine.add_request(None, llm.chat_prompt(m), GREEDY) for m in (ECHO, CHAT)]
    ids.append(engine.add_request(None, llm.chat_prompt(CHAT), json_params))
    done = drain(engine)
    assert [done[i] for i in ids] == [*want, want_json]
    stats = llm.engine.speculative.stats  # the echo is mostly drafted right
    assert stats.num_accepted_tokens > 0.5 * stats.num_draft_tokens > 0


def test_session_answer_identical_with_speculation(refs, plain) -> None:
    _, want = plain
    llm = LLM(checkpoint=refs.checkpoint(None), dtype="float32", quantization=None, max_num_batched_tokens=512,
              speculative="ngram")
    text = ECHO[0]["content"]
    session = llm.open_session(messages=[], sampling_params=GREEDY)
    for a in range(0, len(text), 50):
        session.append(text[a : a + 50])
    assert session.complete().outputs[0].token_ids == want[0]
    assert llm.engine.speculative.stats.num_accepted_tokens > 0
    llm.engine.check_integrity()
