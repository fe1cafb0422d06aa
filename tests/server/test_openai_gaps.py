"""OpenAI request fields a QA pass found silently ignored, one test per item: the legacy
chat ``functions`` / ``function_call`` (honoured as tools, answered in the legacy shape),
audio output (a 400), ``POST /v1/responses/{id}/cancel`` and the Responses API's
``truncation: "auto"``. The tiny model's replies are scripted (``helpers.scripted``)."""

from __future__ import annotations

import httpx
import pytest
from conftest import live_server
from helpers.scripted import script
from helpers.tiny import tiny_checkpoint

from thinkstream.async_llm import AsyncLLM
from thinkstream.config import EngineConfig
from thinkstream.engine.llm_engine import LLMEngine
from thinkstream.server.config import ServerConfig

CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'


def reply(prompt: str) -> str:
    if "[marks]" in prompt:  # which numbered input items the prompt kept
        marks = [w for w in ("SYS", *(f"M{i}" for i in range(9))) if f"<{w}>" in prompt]
        calls = ["CALL"] * ('"name": "f"' in prompt) + ["OUT"] * ("<tool_response>" in prompt)
        return " ".join(marks + calls)
    last = prompt.rsplit("<|im_start|>", 2)[-2] if "<|im_start|>" in prompt else prompt
    if "<tool_response>" in last:
        return "It is sunny in Paris."
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
