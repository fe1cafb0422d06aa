"""A chat session on the real default model (SmolLM2-135M-Instruct): streamed in uneven
chunks (mid-word, mid-character), its final prompt is the chat template's and its greedy
answer is token for token the one-shot chat answer; then the pool is full again."""

from __future__ import annotations

import pytest

from thinkstream.llm import LLM
from thinkstream.sampling_params import SamplingParams

pytestmark = pytest.mark.integration


def test_chat_session_matches_one_shot_chat() -> None:
    llm = LLM(dtype="float32", max_num_batched_tokens=64)
    greedy = SamplingParams(temperature=0.0, max_tokens=24)
    history = [{"role": "system", "content": "You answer in one short sentence."}]
    content = "Here is a note: the café on Rue Lepic opens at 7am, closes at 6pm. When does it open?"
    data = content.encode()
    cuts = [0, 3, 11, 12, 29, 30, 31, 47, 60, len(data)]
    session = llm.open_session(messages=history, sampling_params=greedy)
    for a, b in zip(cuts, cuts[1:], strict=False):
        session.append(data[a:b])
        seq = llm.engine.requests[session.id].seqs[0]
        assert seq.num_computed_tokens == seq.num_tokens - 1  # prefilled as it arrived
    out = session.complete()
    messages = [*history, {"role": "user", "content": content}]
    want = llm.chat(messages, greedy)[0]
    assert out.prompt_token_ids == want.prompt_token_ids
    assert out.outputs[0].token_ids == want.outputs[0].token_ids
    assert out.outputs[0].text == want.outputs[0].text
    llm.engine.check_integrity()
    assert llm.engine.kv.num_free_blocks == llm.engine.kv.num_blocks
