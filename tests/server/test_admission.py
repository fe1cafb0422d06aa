"""Admission and metrics: a request that can never fit is a 400 (not a 429 to retry
forever), session opens hold admission until they end, aborts are counted by finish reason,
and gauges are read at scrape time (a request admitted during a step is waiting at once)."""

from __future__ import annotations

import threading

import httpx
import pytest
from conftest import live_server, slow_down, tiny_llm, wait_for

from thinkstream.server.config import ServerConfig

LONG = {"model": "tiny", "prompt": "The quick brown fox", "max_tokens": 400,
        "ignore_eos": True, "temperature": 0}
OPEN = {"prompt": "The quick brown fox", "max_tokens": 4, "temperature": 0}


@pytest.fixture()
def small():
    """Capacity 4: 2 running + 2 queued sequences."""
    llm = tiny_llm(max_num_seqs=2)
    with live_server(llm, ServerConfig(served_model_name="tiny", max_queue=2)) as live:
        yield live
    llm.shutdown()


def _never(n: int, param: str) -> dict:  # capacity 4
    return {"error": {"message": f"{param}: {n} sequences can never be admitted; the server "
                                 "holds at most 4 (max_num_seqs + max_queue)",
                      "type": "invalid_request_error", "param": param, "code": "exceeds_capacity"}}


def test_more_sequences_than_the_capacity_is_400(small) -> None:
    with httpx.Client(base_url=small.url, timeout=30) as c:
        r = c.post("/v1/completions", json={**LONG, "max_tokens": 2, "n": 5})
        assert r.status_code == 400 and "retry-after" not in r.headers
        assert r.json() == _never(5, "n")
        r = c.post("/v1/completions", json={**LONG, "prompt": ["a", "b", "c"], "n": 2})
        assert r.status_code == 400 and r.json() == _never(6, "prompt")
        r = c.post("/v1/chat/completions", json={
            "messages": [{"role": "user", "content": "hi"}], "n": 5})
        assert r.status_code == 400 and r.json() == _never(5, "n")
        r = c.post("/v1/sessions", json={**OPEN, "n": 5})
        assert r.status_code == 400 and r.json() == _never(5, "n")
        r = c.post("/v1/completions", json={**LONG, "max_tokens": 2, "n": 4})
        assert r.status_code == 200  # exactly the capacity: admitted
    small.wait_idle()


@pytest.fixture()
def slots():
    """Capacity 4, all running slots (idle open sessions hold theirs: no queue to wait in)."""
    llm = tiny_llm(max_num_seqs=4)
    with live_server(llm, ServerConfig(served_model_name="tiny", max_queue=0)) as live:
        yield live
    llm.shutdown()


def test_session_opens_hold_admission(slots) -> None:
    small = slots
    admission = small.state.admission
    with httpx.Client(base_url=small.url, timeout=30) as c:
        sids = [c.post("/v1/sessions", json=OPEN).json()["id"] for _ in range(4)]
        assert admission.in_flight == 4
        for r in (c.post("/v1/completions", json={**LONG, "max_tokens": 2}),
                  c.post("/v1/sessions", json=OPEN)):
            assert r.status_code == 429 and r.headers["retry-after"] == "1"
            assert r.json()["error"]["code"] == "queue_full"
        assert c.delete(f"/v1/sessions/{sids[0]}").status_code == 200
        assert admission.in_flight == 3
        assert c.post("/v1/completions", json={**LONG, "max_tokens": 2}).status_code == 200
        done = c.post(f"/v1/sessions/{sids[1]}/close", json={"text": " jumps"})
        assert done.status_code == 200 and admission.in_flight == 2  # answered: released
        with c.stream("POST", f"/v1/sessions/{sids[2]}/close", json={"stream": True}) as s:
            assert s.status_code == 200
            list(s.iter_lines())
        wait_for(lambda: admission.in_flight == 1)
        assert c.delete(f"/v1/sessions/{sids[3]}").status_code == 200
    small.wait_idle()


def _metrics(url: str) -> dict[str, float]:
    out = {}
    for line in httpx.get(url + "/metrics").text.splitlines():
        if line.startswith("thinkstream_") and "{" in line:
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def test_aborts_are_counted() -> None:
    llm = tiny_llm()
    slow_down(llm, 0.01)
    with live_server(llm, ServerConfig(served_model_name="tiny")) as live, \
            httpx.Client(base_url=live.url, timeout=30) as c:
        assert c.post("/v1/completions", json={**LONG, "max_tokens": 2}).status_code == 200
        with c.stream("POST", "/v1/completions", json={**LONG, "stream": True},
                      headers={"X-Request-Id": "victim"}) as s:
            lines = s.iter_lines()
            next(lines)
            assert c.post("/v1/requests/victim/cancel").status_code == 200
            list(lines)
        sid = c.post("/v1/sessions", json=OPEN).json()["id"]
        assert c.delete(f"/v1/sessions/{sid}").status_code == 200
        with httpx.Client(base_url=live.url, timeout=0.5) as impatient, \
                pytest.raises(httpx.ReadTimeout):
            impatient.post("/v1/completions", json=LONG, headers={"X-Request-Id": "gone"})
        wait_for(lambda: "gone" not in live.engine.requests)
        live.wait_idle()
        m = _metrics(live.url)
    llm.shutdown()
    done = 'thinkstream_request_success_total{finished_reason="%s",model_name="tiny"}'
    assert m[done % "length"] == 1.0
    assert m[done % "abort"] == 3.0


def test_gauges_are_read_at_scrape_time() -> None:
    llm = tiny_llm()
    forward, gate, inside = llm.engine.runner.forward, threading.Event(), threading.Event()
    gate.set()

    def held(*args, **kwargs):
        if not gate.is_set():
            inside.set()
            gate.wait()
        return forward(*args, **kwargs)

    llm.engine.runner.forward = held
    with live_server(llm, ServerConfig(served_model_name="tiny")) as live, \
            httpx.Client(base_url=live.url, timeout=30) as c, \
            c.stream("POST", "/v1/completions", json={**LONG, "stream": True},
                     headers={"X-Request-Id": "running"}) as s:
        lines = s.iter_lines()
        next(lines)
        gate.clear()
        wait_for(inside.is_set, what="a step to start")  # the engine is inside a step
        second = threading.Thread(target=lambda: httpx.post(
            live.url + "/v1/completions", json={**LONG, "max_tokens": 2}, timeout=30))
        second.start()
        wait_for(lambda: len(live.state.live) == 2, what="the second request's admission")
        m = _metrics(live.url)
        assert m['thinkstream_num_requests_running{model_name="tiny"}'] == 1.0
        assert m['thinkstream_num_requests_waiting{model_name="tiny"}'] == 1.0
        assert m['thinkstream_kv_blocks_used{model_name="tiny"}'] == \
            live.engine.kv.num_blocks - live.engine.kv.num_free_blocks
        gate.set()
        second.join(30)
        assert c.post("/v1/requests/running/cancel").status_code == 200
        list(lines)
        live.wait_idle()
        m = _metrics(live.url)
        assert m['thinkstream_num_requests_running{model_name="tiny"}'] == 0.0
        assert m['thinkstream_num_requests_waiting{model_name="tiny"}'] == 0.0
    llm.shutdown()
