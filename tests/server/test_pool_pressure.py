"""Failure 1 of the reliability issue over HTTP: with an 11-block pool (``--kv-cache-memory-mb
8`` on the default model) a streamed request with ``max_tokens: null`` and ``ignore_eos``
ends with ``finish_reason: "length"`` and ``[DONE]``, and another client's short request
is answered while it runs (it used to stream ~173 chunks, then hang everyone)."""

from __future__ import annotations

import json
import threading

import httpx
import pytest
from conftest import live_server, tiny_llm

from thinkstream.server.config import ServerConfig


@pytest.fixture(scope="module")
def small_pool():
    llm = tiny_llm(block_size=16, num_blocks=11)
    with live_server(llm, ServerConfig(served_model_name="tiny")) as live:
        yield live
    llm.shutdown()


def _stream(url: str, path: str, body: dict) -> list[dict | str]:
    events: list[dict | str] = []
    with httpx.Client(base_url=url, timeout=60) as client, \
            client.stream("POST", path, json=body) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("data: "):
                data = line[len("data: "):]
                events.append(data if data == "[DONE]" else json.loads(data))
    return events


@pytest.mark.parametrize("route", ["completions", "chat"])
def test_unbounded_output_on_a_tiny_pool_ends_with_length_and_others_are_served(
        small_pool, route: str) -> None:
    live = small_pool
    if route == "completions":
        path, body = "/v1/completions", {"model": "tiny", "prompt": "Once upon a time"}
    else:
        path, body = "/v1/chat/completions", {
            "model": "tiny", "messages": [{"role": "user", "content": "Once upon a time"}]}
    body.update(max_tokens=None, ignore_eos=True, stream=True, temperature=0)
    result: dict[str, list] = {}
    worker = threading.Thread(target=lambda: result.update(events=_stream(live.url, path, body)))
    worker.start()
    with httpx.Client(base_url=live.url, timeout=60) as client:  # another client, meanwhile
        r = client.post("/v1/completions", json={"model": "tiny", "prompt": "Hi",
                                                 "max_tokens": 4, "ignore_eos": True})
    assert r.status_code == 200
    assert r.json()["choices"][0]["finish_reason"] == "length"
    assert r.json()["usage"]["completion_tokens"] == 4
    worker.join(60)
    assert not worker.is_alive()
    events = result["events"]
    assert events[-1] == "[DONE]"
    finals = [c["finish_reason"] for e in events[:-1] for c in e.get("choices", [])
              if c.get("finish_reason")]
    assert finals == ["length"]
    live.wait_idle()
