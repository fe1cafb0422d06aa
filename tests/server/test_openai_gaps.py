"""OpenAI request fields a QA pass found silently ignored, one test per item: the legacy
chat ``functions`` / ``function_call`` (honoured as tools, answered in the legacy shape),
audio output (a 400), ``POST /v1/responses/{id}/cancel`` and the Responses API's
``truncation: "auto"``. The tiny model's replies are scripted (``helpers.scripted``)."""

from __future__ import annotations

import json
import threading

import httpx
import pytest
from conftest import live_server, post_response, slow_down, wait_for
from helpers.scripted import script
from helpers.tiny import tiny_checkpoint

from thinkstream.async_llm import AsyncLLM
from thinkstream.config import EngineConfig
from thinkstream.engine.llm_engine import LLMEngine
from thinkstream.server.config import ServerConfig

openai = pytest.importorskip("openai")

CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'


def reply(prompt: str) -> str:
    if "[marks]" in prompt:  # which numbered input items the prompt kept
        marks = [w for w in ("SYS", *(f"M{i}" for i in range(9))) if f"<{w}>" in prompt]
        calls = ["CALL"] * ('"name": "f"' in prompt) + ["OUT"] * ("<tool_response>" in prompt)
        return " ".join(marks + calls)
    last = prompt.rsplit("<|im_start|>", 2)[-2] if "<|im_start|>" in prompt else prompt
    if "<tool_response>" in last:
        return "It is sunny in Paris."
    if "[named]" in last:  # a named call's constraint holds the arguments object
        return '{"city": "Paris"}'
    return CALL if "weather" in last else "Hello there."


@pytest.fixture(scope="module")
def server():
    cfg = EngineConfig(block_size=16, num_blocks=512, max_num_seqs=8, max_num_batched_tokens=1024)
    llm = AsyncLLM(LLMEngine(config=cfg, checkpoint=tiny_checkpoint(max_position_embeddings=8192)))
    script(llm, reply)
    with live_server(llm, ServerConfig(served_model_name="tiny")) as live:
        yield live
    llm.shutdown()


@pytest.fixture(scope="module")
def short():
    """A context of 256 tokens."""
    cfg = EngineConfig(block_size=16, num_blocks=64, max_num_seqs=4, max_num_batched_tokens=256,
                       max_model_len=256)
    llm = AsyncLLM(LLMEngine(config=cfg, checkpoint=tiny_checkpoint(max_position_embeddings=8192)))
    script(llm, reply)
    with live_server(llm, ServerConfig(served_model_name="tiny")) as live:
        yield live
    llm.shutdown()


def post(server, path: str, body: dict) -> httpx.Response:
    return httpx.post(server.url + path, json=body, timeout=60)


def ask(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


FUNCTIONS = [{"name": "get_weather", "description": "The current weather in a city",
              "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                             "required": ["city"]}}]
LEGACY_CALL = {"name": "get_weather", "arguments": '{"city": "Paris"}'}


def sse(r: httpx.Response) -> list[dict]:
    assert r.status_code == 200, r.text
    lines = [ln[6:] for ln in r.text.splitlines() if ln.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    return [json.loads(ln) for ln in lines[:-1]]


def test_legacy_functions_are_answered_as_openai_answers_them(server) -> None:
    """``functions`` + ``function_call`` (auto or named) give ``message.function_call`` and
    finish_reason ``function_call``; streamed, ``delta.function_call`` (name first, then the
    arguments); the result goes back as a ``function`` message and the model answers."""
    for choice in ("auto", {"name": "get_weather"}, None):
        text = "weather in Paris?" + (" [named]" if isinstance(choice, dict) else "")
        body = {"messages": ask(text), "functions": FUNCTIONS, "max_tokens": 200,
                **({"function_call": choice} if choice else {})}
        r = post(server, "/v1/chat/completions", body)
        assert r.status_code == 200, r.text
        out = r.json()["choices"][0]
        assert out["finish_reason"] == "function_call", out
        assert out["message"] == {"role": "assistant", "content": None,
                                  "function_call": LEGACY_CALL}
        chunks = sse(post(server, "/v1/chat/completions", {**body, "stream": True}))
        calls = [c["choices"][0]["delta"]["function_call"] for c in chunks
                 if "function_call" in c["choices"][0]["delta"]]
        assert calls[0] == {"name": "get_weather", "arguments": ""}
        assert all(set(c) == {"arguments"} for c in calls[1:])
        assert "".join(c["arguments"] for c in calls) == LEGACY_CALL["arguments"]
        assert not any("tool_calls" in c["choices"][0]["delta"] for c in chunks)
        assert chunks[-1]["choices"][0]["finish_reason"] == "function_call"
    history = ask("weather in Paris?") + [
        {"role": "assistant", "content": None, "function_call": LEGACY_CALL},
        {"role": "function", "name": "get_weather", "content": "22 C, sunny"}]
    sdk = openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0)
    message = sdk.chat.completions.create(model="tiny", messages=ask("weather in Paris?"),
                                          functions=FUNCTIONS, max_tokens=200).choices[0].message
    assert message.function_call.model_dump() == LEGACY_CALL and message.tool_calls is None
    r = post(server, "/v1/chat/completions", {"messages": history, "functions": FUNCTIONS})
    out = r.json()["choices"][0]
    assert (out["message"]["content"], out["finish_reason"]) == ("It is sunny in Paris.", "stop")
    assert "function_call" not in out["message"]
    r = post(server, "/v1/chat/completions", {"messages": ask("weather in Paris?"),
                                              "functions": FUNCTIONS, "function_call": "none"})
    assert r.json()["choices"][0]["message"]["content"] == CALL  # no calls parsed


def test_legacy_functions_refusals_name_the_legacy_field(server) -> None:
    tool = {"type": "function", "function": FUNCTIONS[0]}
    cases = [({"functions": FUNCTIONS, "tools": [tool]}, "functions"),
             ({"function_call": "auto"}, "function_call"),
             ({"functions": FUNCTIONS, "function_call": "auto", "tool_choice": "auto"},
              "function_call"),
             ({"functions": FUNCTIONS, "function_call": {"name": "nope"}}, "function_call"),
             ({"functions": [{"name": "f", "parameters": {"type": 5}}]},
              "functions[0].parameters"),
             ({"messages": [{"role": "function", "content": "x"}]}, "messages[0].name")]
    for extra, param in cases:
        r = post(server, "/v1/chat/completions", {"messages": ask("hi"), **extra})
        assert r.status_code == 400, r.text
        err = r.json()["error"]
        assert err["param"] == param and err["message"].startswith(param + ":"), err


def test_audio_output_is_a_400_naming_the_field(server) -> None:
    for field, value in (("audio", {"voice": "alloy", "format": "wav"}),
                         ("modalities", ["text", "audio"]), ("modalities", ["audio"])):
        r = post(server, "/v1/chat/completions", {"messages": ask("hi"), field: value})
        assert r.status_code == 400, r.text
        err = r.json()["error"]
        assert (err["param"], err["code"]) == (field, "unsupported")
        assert err["message"].startswith(f"{field}: this server has no audio output")
    for value in (["text"], None):
        r = post(server, "/v1/chat/completions", {"messages": ask("hi"), "modalities": value,
                                                   "audio": None, "max_tokens": 3})
        assert r.status_code == 200, r.text
        assert r.json()["choices"][0]["message"]["content"] == "Hel"


def test_responses_truncation_auto_drops_the_oldest_items(short) -> None:
    """Nine items (344 tokens rendered) in a 256-token context: "disabled" (the default) is the
    400; "auto" keeps the instructions and the newest items that fit (whole turns: the
    function call's output is never kept without its call)."""
    def item(i: int) -> dict:
        role = "user" if i % 2 == 0 else "assistant"
        return {"role": role, "content": f"<M{i}> " + "hello " * 3}
    items = [item(i) for i in range(6)] + [
        {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c1", "output": "done " * 4},
        {"role": "user", "content": "<M8> [marks]"}]
    body = {"input": items, "instructions": "<SYS> Be brief.", "max_output_tokens": 30}
    for extra in ({}, {"truncation": "disabled"}):
        r = post(short, "/v1/responses", {**body, **extra})
        assert r.status_code == 400, r.text
        assert (r.json()["error"]["code"], r.json()["error"]["param"]) == (
            "context_length_exceeded", "input")
    r = post(short, "/v1/responses", {**body, "truncation": "auto"})
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["truncation"] == "auto" and out["status"] == "completed"
    assert out["output"][0]["content"][0]["text"] == "SYS M4 M5 M8 CALL OUT", out["usage"]
    assert 226 - 30 < out["usage"]["input_tokens"] <= 226
    # the last item alone does not fit: still the 400
    r = post(short, "/v1/responses", {"input": [item(0), {"role": "user", "content": "x" * 900}],
                                      "truncation": "auto"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"


@pytest.mark.parametrize("stream", [False, True])
def test_responses_cancel_endpoint(short, stream) -> None:
    """``POST /v1/responses/{id}/cancel`` (the SDK's ``responses.cancel``) aborts a running
    response and returns its object, status ``cancelled``, the one its own client gets; again:
    the same object; a completed one: a 400; an unknown id: a 404."""
    rid = f"resp-cancel-{stream}"
    body = {"input": "hi", "max_output_tokens": 200, "ignore_eos": True, "stream": stream}
    got: list = []

    forward = short.llm.engine.runner.forward
    slow_down(short.llm, 0.01)
    try:
        t = threading.Thread(target=post_response, args=(short.url, body, rid, got))
        t.start()
        wait_for(lambda: (state := short.engine.requests.get(rid)) is not None
                 and state.seqs[0].num_output_tokens > 1)
        r = post(short, f"/v1/responses/{rid}/cancel", {})
        t.join(10)
    finally:
        short.llm.engine.runner.forward = forward
    assert r.status_code == 200, r.text
    cancelled = r.json()
    own = got[-1]["response"] if stream else got[-1]
    assert cancelled == own and cancelled["status"] == "cancelled" and cancelled["id"] == rid
    assert 1 < cancelled["usage"]["output_tokens"] < 200
    again = openai.OpenAI(base_url=short.url + "/v1", api_key="none", max_retries=0)
    assert again.responses.cancel(rid).model_dump(exclude_unset=True) == cancelled  # idempotent
    done = post(short, "/v1/responses", {"input": "hi", "max_output_tokens": 2,
                                         "request_id": f"done-{stream}"})
    assert done.json()["status"] == "incomplete"
    r = post(short, f"/v1/responses/done-{stream}/cancel", {})
    assert r.status_code == 400 and r.json()["error"] == {
        "message": "response_id: cannot cancel a response that is already incomplete",
        "type": "invalid_request_error", "param": "response_id",
        "code": "response_not_cancellable"}
    r = post(short, "/v1/responses/resp_nope/cancel", {})
    assert r.status_code == 404 and r.json()["error"]["param"] == "response_id"
    assert r.json()["error"]["code"] == "response_not_found"
    short.wait_idle()
