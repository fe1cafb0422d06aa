"""Integration: tools, the Responses API and the vLLM extras on the real default model
(SmolLM2-135M-Instruct, whose chat template has no tool support: requests with tools get
the tool prompt). A 135M model does not call tools reliably without constrained decoding,
so these check the plumbing and the shapes the clients parse, not the model's choice."""

from __future__ import annotations

import json

import httpx
import pytest

pytestmark = pytest.mark.integration
NAME = "smollm2"
TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "The current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]}}}]
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]


def test_tool_prompt_reaches_the_model(oai, real) -> None:
    ids = httpx.post(real.url + "/tokenize", json={"messages": ASK, "tools": TOOLS}).json()
    text = real.engine.tokenizer.decode(ids["tokens"])
    assert text.startswith("<|im_start|>system\n# Tools\n")
    assert json.dumps(TOOLS[0]) in text and text.endswith("<|im_start|>assistant\n")
    r = oai.chat.completions.create(model=NAME, messages=ASK, tools=TOOLS, max_tokens=40,
                                    temperature=0)
    choice = r.choices[0]
    assert r.usage.prompt_tokens == ids["count"]
    if choice.message.tool_calls:  # the model chose to call: the call parses
        assert choice.finish_reason == "tool_calls"
        assert all(c.function.name for c in choice.message.tool_calls)
    else:
        assert choice.finish_reason in ("stop", "length") and choice.message.content
    real.wait_idle()


def test_responses_on_the_real_model(oai, real) -> None:
    r = oai.responses.create(model=NAME, input="What is the capital of France?",
                             instructions="Answer in one sentence.", max_output_tokens=24,
                             temperature=0)
    assert r.output[0].type == "message" and "Paris" in r.output_text
    streamed = "".join(e.delta for e in oai.responses.create(
        model=NAME, input="What is the capital of France?", instructions="Answer in one sentence.",
        max_output_tokens=24, temperature=0, stream=True) if e.type == "response.output_text.delta")
    assert streamed == r.output_text
    real.wait_idle()


def test_assistant_prefill_is_continued(oai, real) -> None:
    r = oai.chat.completions.create(
        model=NAME, max_tokens=6, temperature=0,
        messages=[{"role": "user", "content": "What is the capital of France?"},
                  {"role": "assistant", "content": "The capital of France is"}],
        extra_body={"add_generation_prompt": False, "continue_final_message": True})
    assert r.choices[0].message.content.strip().startswith("Paris")
    real.wait_idle()
