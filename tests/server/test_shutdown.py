"""Shutdown with sessions in flight: SIGTERM drains sessions like requests (opens refused
with 503, answers finish, or end with ``abort`` and ``[DONE]`` at the timeout, the server
up until the drain is over), and a second signal exits at once: in a server thread, and as
a real process receiving real signals."""

from __future__ import annotations

import json
import signal
import threading
import time

import httpx
import pytest
from conftest import live_server, server_process, slow_down, tiny_llm, wait_for, wait_pool_full
from websockets.sync.client import connect

from thinkstream.server.config import ServerConfig

LONG = {"model": "tiny", "prompt": "The quick brown fox", "max_tokens": 400,
        "ignore_eos": True, "temperature": 0}
OPEN = {"prompt": "The quick brown fox", "max_tokens": 60, "ignore_eos": True, "temperature": 0}


class Stream(threading.Thread):
    """Reads one SSE response to its end: ``lines`` (``data: ...``) and finish reasons."""

    def __init__(self, url: str, path: str, body: dict) -> None:
        super().__init__(daemon=True)
        self.url, self.path, self.body = url, path, body
        self.lines: list[str] = []
        self.finish: list[str] = []
        self.status: int | None = None

    def run(self) -> None:
        try:
            with httpx.Client(base_url=self.url, timeout=60) as c, \
                    c.stream("POST", self.path, json={**self.body, "stream": True}) as s:
                self.status = s.status_code
                for line in s.iter_lines():
                    if line.startswith("data: "):
                        self.lines.append(line)
                        if line != "data: [DONE]":
                            chunk = json.loads(line[6:])
                            self.finish += [ch["finish_reason"] for ch in chunk.get("choices", [])
                                            if ch["finish_reason"]]
        except httpx.TransportError:
            pass  # cut: the assertions on ``lines`` say so

    def ended_cleanly(self, reason: str) -> None:
        self.join(30)
        assert not self.is_alive()
        assert self.lines and self.lines[-1] == "data: [DONE]", self.lines[-3:]
        assert self.finish and self.finish[-1] == reason, self.finish


def _answering(live, sid: str) -> bool:
    state = live.engine.requests.get(sid)
    return state is not None and state.seqs[0].num_output_tokens > 1


@pytest.mark.parametrize("timeout", [10.0, 0.3])
def test_sigterm_drains_sessions(timeout: float) -> None:
    llm = tiny_llm()
    slow_down(llm, 0.01)
    config = ServerConfig(served_model_name="tiny", shutdown_timeout=timeout)
    with live_server(llm, config) as live, httpx.Client(base_url=live.url, timeout=30) as c:
        answering = c.post("/v1/sessions", json=OPEN).json()["id"]
        still_open = c.post("/v1/sessions", json=OPEN).json()["id"]
        answer = Stream(live.url, f"/v1/sessions/{answering}/close", {"text": " jumps"})
        answer.start()
        wait_for(lambda: _answering(live, answering), what="the answer to stream")
        live.server.handle_exit(signal.SIGTERM, None)
        wait_for(lambda: live.state.draining)
        if timeout > 1:
            r = c.post("/v1/sessions", json=OPEN)
            assert r.status_code == 503 and r.headers["retry-after"] == "1"
            assert r.json()["error"] == {"message": "the server is shutting down",
                                         "type": "service_unavailable", "param": None,
                                         "code": "shutting_down"}
            with connect(live.url.replace("http", "ws") + "/v1/sessions/ws") as ws:
                ws.send(json.dumps({"type": "open", **OPEN}))
                refused = json.loads(ws.recv())
            assert refused["type"] == "error" and refused["error"]["code"] == "shutting_down"
            assert c.post("/v1/completions", json=LONG).status_code == 503
            # a session open before the signal is still served during the drain
            assert c.post(f"/v1/sessions/{still_open}/append",
                          json={"text": " over"}).status_code == 200
            done = c.post(f"/v1/sessions/{still_open}/close", json={})
            assert done.status_code == 200, done.text
            assert done.json()["choices"][0]["finish_reason"] == "length"
        answer.ended_cleanly("length" if timeout > 1 else "abort")
        live.thread.join(15)
        assert not live.thread.is_alive()
        assert not live.server.forced
        if timeout < 1:  # the open session was aborted at the timeout
            assert llm.sessions.info(still_open).state == "aborted"
        assert live.state.admission.in_flight == 0
        wait_pool_full(llm)
    llm.shutdown()


def test_server_stays_up_until_the_drain_is_over() -> None:
    """An open session keeps the drain (and the server) going until it is closed."""
    llm = tiny_llm()
    config = ServerConfig(served_model_name="tiny", shutdown_timeout=60)
    with live_server(llm, config) as live, httpx.Client(base_url=live.url, timeout=30) as c:
        sid = c.post("/v1/sessions", json=OPEN).json()["id"]
        live.server.handle_exit(signal.SIGTERM, None)
        wait_for(lambda: live.state.draining)
        for _ in range(3):  # the session's client is still being served
            assert c.get(f"/v1/sessions/{sid}").json()["state"] == "open"
            assert live.thread.is_alive()
            time.sleep(0.2)
        assert c.post(f"/v1/sessions/{sid}/close", json={}).status_code == 200
        live.thread.join(15)
        assert not live.thread.is_alive()
        wait_pool_full(llm)
    llm.shutdown()


def test_second_signal_exits_at_once() -> None:
    llm = tiny_llm()
    slow_down(llm, 0.02)  # 400 tokens: several seconds each, far past the test
    config = ServerConfig(served_model_name="tiny", shutdown_timeout=60)
    with live_server(llm, config) as live, httpx.Client(base_url=live.url, timeout=30) as c:
        sid = c.post("/v1/sessions", json={**OPEN, "max_tokens": 400}).json()["id"]
        streams = [Stream(live.url, "/v1/completions", LONG),
                   Stream(live.url, f"/v1/sessions/{sid}/close", {})]
        for s in streams:
            s.start()
        wait_for(lambda: all(s.finish or len(s.lines) > 1 for s in streams), what="streams")
        live.server.handle_exit(signal.SIGTERM, None)
        wait_for(lambda: live.state.draining)
        live.server.handle_exit(signal.SIGINT, None)
        live.thread.join(15)
        assert not live.thread.is_alive() and live.server.forced
        for s in streams:
            s.ended_cleanly("abort")
        wait_pool_full(llm)
    llm.shutdown()


@pytest.mark.parametrize("second", [signal.SIGTERM, signal.SIGINT])
def test_second_signal_in_a_real_process(tmp_path, second) -> None:
    with server_process(tmp_path, {"shutdown_timeout": 60}, step_delay=0.02) as proc:
        stream = Stream(proc.url, "/v1/completions", LONG)
        stream.start()
        wait_for(lambda: len(stream.lines) > 2, 30, "the stream")
        proc.process.send_signal(signal.SIGTERM)
        wait_for(lambda: httpx.get(proc.url + "/health").status_code == 503, 10, "the drain")
        assert proc.process.poll() is None  # draining: the stream goes on
        proc.process.send_signal(second)
        rc = proc.process.wait(10)
        stream.ended_cleanly("abort")
    assert rc == 1
    log = proc.text()
    assert "Traceback" not in log and "KeyboardInterrupt" not in log, log[-3000:]


def test_sigterm_in_a_real_process_drains_and_exits(tmp_path) -> None:
    with server_process(tmp_path, {"shutdown_timeout": 60}, step_delay=0.01) as proc:
        with httpx.Client(base_url=proc.url, timeout=30) as c:
            sid = c.post("/v1/sessions", json=OPEN).json()["id"]
        stream = Stream(proc.url, f"/v1/sessions/{sid}/close", {})
        stream.start()
        wait_for(lambda: len(stream.lines) > 2, 30, "the answer")
        proc.process.send_signal(signal.SIGTERM)
        stream.ended_cleanly("length")
        rc = proc.process.wait(30)
    assert rc == 0
    log = proc.text()
    assert "Traceback" not in log and "Cancel" not in log, log[-3000:]
