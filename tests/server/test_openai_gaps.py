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
