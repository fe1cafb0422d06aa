"""Disconnects (at queueing, mid-prefill, mid-decode; streaming or not), cancels, overload,
an engine that fails mid-request, and SIGTERM draining. After each, no request is left and
the block pool is full."""

from __future__ import annotations

import json
import signal
import threading
import time

import httpx
import pytest
from conftest import live_server, post_response, slow_down, tiny_llm, wait_for

from thinkstream.engine.request import SeqStatus
from thinkstream.server.config import ServerConfig

LONG = {"model": "tiny", "prompt": "The quick brown fox", "max_tokens": 400,
        "ignore_eos": True, "temperature": 0}


@pytest.fixture(scope="module")
def slow_server():
    llm = tiny_llm(max_num_seqs=2, max_num_batched_tokens=16)
    slow_down(llm, 0.01)
    with live_server(llm, ServerConfig(served_model_name="tiny", max_queue=2)) as live:
        yield live
    llm.shutdown()


def _seq(live, rid: str):
    state = live.engine.requests.get(rid)
    return state.seqs[0] if state is not None else None


def _open_stream(live, body: dict, rid: str):
    client = httpx.Client(base_url=live.url, timeout=30)
    cm = client.stream("POST", "/v1/completions", json={**body, "stream": True},
                       headers={"X-Request-Id": rid})
    response = cm.__enter__()
    assert response.status_code == 200
    return client, cm


def _abandon(client, cm) -> None:
    cm.__exit__(None, None, None)
    client.close()


def _gone_within_a_step(live, rid: str) -> None:
    wait_for(lambda: rid not in live.engine.requests, 2.0, f"{rid} to be aborted")


def test_abandon_while_queued(slow_server) -> None:
    live = slow_server
    holders = [_open_stream(live, LONG, f"hold-{i}") for i in range(2)]
    wait_for(lambda: all(_seq(live, f"hold-{i}") is not None for i in range(2)), what="holders")
    client, cm = _open_stream(live, LONG, "queued")
    wait_for(lambda: _seq(live, "queued") is not None, what="queued request")
    assert _seq(live, "queued").status == SeqStatus.WAITING
    _abandon(client, cm)
    _gone_within_a_step(live, "queued")
    for c in holders:
        _abandon(*c)
    live.wait_idle()


def test_abandon_mid_prefill(slow_server) -> None:
    live = slow_server
    body = {**LONG, "prompt": list(range(10, 300)), "max_tokens": 4}
    client, cm = _open_stream(live, body, "prefill")

    def mid_prefill() -> bool:
        s = _seq(live, "prefill")
        return s is not None and 0 < s.num_computed_tokens < s.num_prompt_tokens

    wait_for(mid_prefill, what="mid-prefill")
    _abandon(client, cm)
    _gone_within_a_step(live, "prefill")
    live.wait_idle()


def test_abandon_mid_decode(slow_server) -> None:
    live = slow_server
    client, cm = _open_stream(live, LONG, "decode")
    wait_for(lambda: (s := _seq(live, "decode")) is not None and s.num_output_tokens > 3,
             what="decoding")
    _abandon(client, cm)
    _gone_within_a_step(live, "decode")
    live.wait_idle()


@pytest.mark.parametrize("endpoint", ["/v1/completions", "/v1/chat/completions"])
def test_non_streaming_client_disconnect(slow_server, endpoint) -> None:
    live = slow_server
    body = dict(LONG)
    if endpoint.endswith("chat/completions"):
        body = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}],
                "max_tokens": 400, "ignore_eos": True}
    with httpx.Client(base_url=live.url, timeout=0.5) as c, pytest.raises(httpx.ReadTimeout):
        c.post(endpoint, json=body, headers={"X-Request-Id": "gone"})
    _gone_within_a_step(live, "gone")
    live.wait_idle()


def test_cancel_endpoint(slow_server) -> None:
    live = slow_server
    with httpx.Client(base_url=live.url, timeout=30) as c:
        r = c.post("/v1/requests/nope/cancel")
        assert r.status_code == 404 and r.json()["error"]["param"] == "request_id"
        done = c.post("/v1/completions", json={**LONG, "max_tokens": 2},
                      headers={"X-Request-Id": "done-1"})
        assert done.status_code == 200 and done.json()["id"] == "done-1"
        assert c.post("/v1/requests/done-1/cancel").status_code == 404
        finish, lines = [], []

        def consume() -> None:
            with c.stream("POST", "/v1/completions", json={**LONG, "stream": True},
                          headers={"X-Request-Id": "victim"}) as s:
                for line in s.iter_lines():
                    if line.startswith("data: "):
                        lines.append(line)
                        if line != "data: [DONE]":
                            finish.extend(ch["finish_reason"] for ch in json.loads(line[6:])["choices"])

        t = threading.Thread(target=consume)
        t.start()
        wait_for(lambda: (s := _seq(live, "victim")) is not None and s.num_output_tokens > 1)
        r = httpx.post(f"{live.url}/v1/requests/victim/cancel")
        assert r.status_code == 200 and r.json()["cancelled"] is True
        t.join(10)
        assert lines[-1] == "data: [DONE]"
        assert finish[-1] == "abort"
        assert httpx.post(f"{live.url}/v1/requests/victim/cancel").status_code == 404
    live.wait_idle()


@pytest.mark.parametrize("stream", [False, True])
def test_cancelled_response_says_cancelled(slow_server, stream) -> None:
    """A Responses request aborted (cancel endpoint, drain) is ``cancelled``, as vLLM marks
    it, its open item ``incomplete``; a stream ends with ``response.incomplete`` (OpenAI has
    no cancelled event), so the SDK and openai-agents do not take the cut text as done (it
    said ``completed``)."""
    live, rid = slow_server, f"resp-victim-{stream}"
    body = {"model": "tiny", "input": "hi", "max_output_tokens": 400, "ignore_eos": True,
            "stream": stream}
    got: list = []

    t = threading.Thread(target=post_response, args=(live.url, body, rid, got))
    t.start()
    wait_for(lambda: (s := _seq(live, rid)) is not None and s.num_output_tokens > 1)
    assert httpx.post(f"{live.url}/v1/requests/{rid}/cancel").status_code == 200
    t.join(10)
    last = got[-1]["response"] if stream else got[-1]
    assert (got[-1]["type"] if stream else "") == ("response.incomplete" if stream else "")
    assert last["status"] == "cancelled" and last["incomplete_details"] is None
    assert [item["status"] for item in last["output"]] == ["incomplete"]
    assert last["usage"]["output_tokens"] > 1
    live.wait_idle()


def test_overload_429_and_n_admitted_whole(slow_server) -> None:
    live = slow_server  # capacity: 2 running + 2 queued sequences
    holders = [_open_stream(live, LONG, f"load-{i}") for i in range(3)]
    wait_for(lambda: live.state.admission.in_flight == 3)
    with httpx.Client(base_url=live.url, timeout=30) as c:
        start = time.monotonic()
        r = c.post("/v1/completions", json={**LONG, "n": 2})  # 3 + 2 > 4: refused whole
        assert time.monotonic() - start < 1.0
        assert r.status_code == 429 and r.headers["retry-after"] == "1"
        assert r.json()["error"]["type"] == "rate_limit_error"
        assert live.state.admission.in_flight == 3
        r = c.post("/v1/completions", json={**LONG, "max_tokens": 2, "n": 1})
        assert r.status_code == 200  # exactly fills the capacity
    for h in holders:
        _abandon(*h)
    live.wait_idle()


def test_engine_failure_fails_requests_and_health() -> None:
    llm = tiny_llm()
    slow_down(llm, 0.01)
    forward = llm.engine.runner.forward
    armed = threading.Event()

    def failing(*args, **kwargs):
        if armed.is_set():
            raise RuntimeError("boom in /secret/path/model.py")
        return forward(*args, **kwargs)

    llm.engine.runner.forward = failing
    with live_server(llm) as live, httpx.Client(base_url=live.url, timeout=30) as c:
        assert c.get("/health").status_code == 200
        results = {}

        def non_stream() -> None:
            results["plain"] = c.post("/v1/completions", json=LONG)

        t = threading.Thread(target=non_stream)
        t.start()
        with c.stream("POST", "/v1/chat/completions", json={
                "messages": [{"role": "user", "content": "hi"}], "max_tokens": 300,
                "ignore_eos": True, "stream": True}) as s:
            lines = []
            for line in s.iter_lines():
                if line.startswith("data: "):
                    lines.append(line)
                    if len(lines) == 3:
                        armed.set()
        t.join(10)
        assert lines[-1] == "data: [DONE]"
        err = json.loads(lines[-2][6:])["error"]
        assert err["type"] == "server_error" and "secret" not in err["message"]
        plain = results["plain"]
        assert plain.status_code == 500 and "secret" not in plain.text
        assert plain.json()["error"]["type"] == "server_error"
        assert c.get("/health").status_code == 503
        r = c.post("/v1/completions", json=LONG)
        assert r.status_code == 503
        assert c.get("/metrics").status_code == 200
        assert not live.engine.requests
        assert live.engine.kv.num_free_blocks == live.engine.kv.num_blocks
    llm.shutdown()


@pytest.mark.parametrize("timeout", [10.0, 0.3])
def test_sigterm_drains(timeout: float) -> None:
    llm = tiny_llm()
    slow_down(llm, 0.01)
    config = ServerConfig(served_model_name="tiny", shutdown_timeout=timeout)
    with live_server(llm, config) as live, httpx.Client(base_url=live.url, timeout=30) as c:
        finish, lines = [], []

        def consume() -> None:
            with c.stream("POST", "/v1/completions", json={**LONG, "max_tokens": 60,
                                                           "stream": True}) as s:
                for line in s.iter_lines():
                    if line.startswith("data: "):
                        lines.append(line)
                        if line != "data: [DONE]":
                            finish.extend(ch["finish_reason"] for ch in json.loads(line[6:])["choices"])

        t = threading.Thread(target=consume)
        t.start()
        wait_for(lambda: live.state.live and live.engine.requests)
        live.server.handle_exit(signal.SIGTERM, None)
        wait_for(lambda: live.state.draining)
        with httpx.Client(base_url=live.url, timeout=5) as other:
            r = other.post("/v1/completions", json=LONG)
            assert r.status_code == 503 and "retry-after" in r.headers
            assert other.get("/health").status_code == 503
        t.join(20)
        assert lines[-1] == "data: [DONE]"
        assert finish[-1] == ("length" if timeout > 1 else "abort")
        live.thread.join(10)
        assert not live.thread.is_alive()
        assert not live.engine.requests
        live.engine.check_integrity()
        assert live.engine.kv.num_free_blocks == live.engine.kv.num_blocks
    llm.shutdown()
