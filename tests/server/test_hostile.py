"""Hostile and careless clients: cross-site POSTs (JSON routes need ``application/json``),
WebSocket origins, half-sent requests (header timeout), too many connections, secrets in
logs (redacted, access log included), and validation errors told in words."""

from __future__ import annotations

import json
import logging
import signal
import socket

import httpx
import pytest
from conftest import live_server, server_process, tiny_llm, wait_for, wait_pool_full
from fastapi.testclient import TestClient
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from thinkstream.server.app import create_app
from thinkstream.server.config import ServerConfig
from thinkstream.server.redact import RedactFilter, redact

ALLOWED = "https://app.example.com"
EVIL = "https://evil.example"
BODIES = {"/v1/completions": {"model": "tiny", "prompt": "Hello", "max_tokens": 2},
          "/v1/chat/completions": {"model": "tiny", "max_tokens": 2,
                                   "messages": [{"role": "user", "content": "hi"}]},
          "/v1/sessions": {"prompt": "Hello", "max_tokens": 2}}
UNSUPPORTED = {"error": {"message": "Content-Type must be application/json",
                         "type": "invalid_request_error", "param": None,
                         "code": "unsupported_media_type"}}


# ------------------------------------------------------------------ cross-site requests
@pytest.mark.parametrize("path", list(BODIES))
@pytest.mark.parametrize("ctype", ["text/plain", "text/plain;charset=UTF-8",
                                   "application/x-www-form-urlencoded",
                                   "multipart/form-data; boundary=x", None])
def test_json_routes_refuse_other_content_types(tiny_server, path, ctype) -> None:
    """A web page's simple POST (no pre-flight) carries one of these types: refused before
    anything runs."""
    headers = {"Origin": EVIL, **({"content-type": ctype} if ctype else {})}
    before = len(tiny_server.app.state.session_hub._owned)
    r = httpx.post(tiny_server.url + path, content=json.dumps(BODIES[path]), headers=headers)
    assert r.status_code == 415 and r.json() == UNSUPPORTED
    assert len(tiny_server.app.state.session_hub._owned) == before
    tiny_server.wait_idle()


@pytest.mark.parametrize("ctype", ["application/json", "application/json; charset=utf-8",
                                   "Application/JSON"])
def test_json_content_types_accepted(tiny_server, ctype) -> None:
    r = httpx.post(tiny_server.url + "/v1/completions", headers={"content-type": ctype},
                   content=json.dumps(BODIES["/v1/completions"]))
    assert r.status_code == 200, r.text
    tiny_server.wait_idle()


def test_session_updates_refuse_other_content_types(tiny_server) -> None:
    with httpx.Client(base_url=tiny_server.url) as c:
        sid = c.post("/v1/sessions", json=BODIES["/v1/sessions"]).json()["id"]
        plain = {"content-type": "text/plain"}
        for method, path in [("POST", "append"), ("PUT", "input"), ("POST", "close")]:
            r = c.request(method, f"/v1/sessions/{sid}/{path}", headers=plain,
                          content=json.dumps({"text": " world"}))
            assert r.status_code == 415 and r.json() == UNSUPPORTED
        info = c.get(f"/v1/sessions/{sid}").json()
        assert info["state"] == "open" and info["next_seq"] == 0
        assert c.post(f"/v1/sessions/{sid}/close").status_code == 200  # no body: no type needed
    tiny_server.wait_idle()
    wait_pool_full(tiny_server.llm)


# ------------------------------------------------------------------ WebSocket origin
@pytest.fixture(scope="module")
def guarded():
    llm = tiny_llm()
    cfg = ServerConfig(served_model_name="tiny", allowed_origins=(ALLOWED,), header_timeout=0.3)
    with live_server(llm, cfg) as live:
        yield live
    llm.shutdown()


def _open_session(url: str, **kwargs) -> dict:
    with connect(url.replace("http", "ws") + "/v1/sessions/ws", **kwargs) as ws:
        ws.send(json.dumps({"type": "open", "prompt": "hi", "max_tokens": 2}))
        return json.loads(ws.recv())


def test_websocket_origin_checked(guarded, tiny_server) -> None:
    with pytest.raises(InvalidStatus) as refused:
        _open_session(guarded.url, origin=EVIL)
    assert refused.value.response.status_code == 403
    assert _open_session(guarded.url, origin=ALLOWED)["type"] == "opened"
    assert _open_session(guarded.url)["type"] == "opened"  # no Origin: not a browser
    with pytest.raises(InvalidStatus):  # none listed: every browser origin refused
        _open_session(tiny_server.url, origin=ALLOWED)
    wait_pool_full(guarded.llm)


# ------------------------------------------------------------------ connections
def _raw(live, data: bytes = b"") -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", int(live.url.rsplit(":", 1)[1])), timeout=20)
    if data:
        sock.sendall(data)
    return sock


def _read_all(sock: socket.socket) -> bytes:
    out = b""
    while chunk := sock.recv(65536):
        out += chunk
    return out


@pytest.mark.parametrize("sent", [b"", b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n",
                                  b"GET /health HTTP/1.1\r\nHost: x\r\n\r\nGET /heal"])
def test_half_sent_request_is_closed(guarded, sent) -> None:
    """Nothing, half the headers, or half of a second request: the server closes the
    connection after the header timeout (a blocked read would time out the test)."""
    with _raw(guarded, sent) as sock:
        got = _read_all(sock)  # returns when the server closes
    if sent.startswith(b"GET /health"):
        assert got.startswith(b"HTTP/1.1 200") and got.count(b"HTTP/1.1") == 1
    else:
        assert got == b""


def test_header_timeout_spares_requests_and_websockets(guarded) -> None:
    url = guarded.url.replace("http", "ws") + "/v1/sessions/ws"
    with connect(url) as ws:
        with pytest.raises(TimeoutError):
            ws.recv(timeout=1.0)  # idle well past the header timeout: still open
        ws.send(json.dumps({"type": "open", "prompt": "hi", "max_tokens": 2}))
        assert json.loads(ws.recv())["type"] == "opened"
    r = httpx.post(guarded.url + "/v1/completions",
                   json={"prompt": "The quick brown fox", "max_tokens": 64, "ignore_eos": True})
    assert r.status_code == 200
    wait_pool_full(guarded.llm)


def test_connection_cap() -> None:
    llm = tiny_llm()
    with live_server(llm, ServerConfig(served_model_name="tiny", max_connections=3)) as live:
        _connection_cap(live)
    llm.shutdown()


def _connection_cap(live) -> None:
    connections = live.server.server_state.connections
    held = [_raw(live, b"GET /he") for _ in range(3)]
    try:
        wait_for(lambda: len(connections) == 3, what="three connections")
        with _raw(live, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n") as extra:
            got = _read_all(extra)
        head, _, body = got.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 503") and b"retry-after: 1" in head
        assert json.loads(body) == {"error": {"message": "too many open connections; retry later",
                                              "type": "service_unavailable", "param": None,
                                              "code": "too_many_connections"}}
    finally:
        for s in held:
            s.close()
    wait_for(lambda: not connections, what="the held connections to close")
    assert httpx.get(live.url + "/health").status_code == 200


# ------------------------------------------------------------------ secrets in logs
def test_redact() -> None:
    key = "sk-live-0123456789"
    cases = [f'127.0.0.1:5 - "WebSocket /v1/sessions/ws?api_key={key}" [accepted]',
             f"GET /v1/models?x=1&api_key={key}&y=2", f"/p?token={key}", f"/p?access_token={key}",
             f"Authorization: Bearer {key}", f"x-api-key: {key}", f"headers={{'authorization': 'Bearer {key}'}}"]
    for text in cases:
        assert key not in redact(text), text
    assert redact(f"GET /v1/models?x=1&api_key={key}&y=2") == \
        "GET /v1/models?x=1&api_key=[REDACTED]&y=2"
    assert redact("GET /v1/sessions/abc?seq=1 200") == "GET /v1/sessions/abc?seq=1 200"


def test_redact_filter_keeps_access_log_arguments() -> None:
    from uvicorn.logging import AccessFormatter

    record = logging.LogRecord("uvicorn.access", logging.INFO, __file__, 1,
                               '%s - "%s %s HTTP/%s" %d',
                               ("127.0.0.1:5", "GET", "/v1/sessions/ws?api_key=sk-1", "1.1", 101),
                               None)
    assert RedactFilter().filter(record)
    line = AccessFormatter("%(client_addr)s %(request_line)s %(status_code)s").format(record)
    assert line == "127.0.0.1:5 GET /v1/sessions/ws?api_key=[REDACTED] HTTP/1.1 101 Switching Protocols"


def test_api_key_never_in_the_log(tmp_path) -> None:
    """The issue's case: a WebSocket client authenticating with ``?api_key=``, plus the
    key in a header and in an HTTP query, against a real server process at info level."""
    key = "sk-secret-9f8e7d6c5b4a"
    with server_process(tmp_path, {"api_keys": [key]}) as proc:
        ws_url = proc.url.replace("http", "ws") + f"/v1/sessions/ws?api_key={key}"
        with connect(ws_url) as ws:
            ws.send(json.dumps({"type": "open", "prompt": "hi", "max_tokens": 2}))
            assert json.loads(ws.recv())["type"] == "opened"
        auth = {"Authorization": f"Bearer {key}"}
        assert httpx.get(f"{proc.url}/v1/models?api_key={key}", headers=auth).status_code == 200
        assert httpx.get(f"{proc.url}/v1/models?api_key={key}x").status_code == 401
        proc.process.send_signal(signal.SIGTERM)
        assert proc.process.wait(30) == 0
    log = proc.text()
    assert "WebSocket /v1/sessions/ws?api_key=[REDACTED]" in log, log
    assert "GET /v1/models?api_key=[REDACTED] HTTP/1.1" in log, log
    assert key not in log


# ------------------------------------------------------------------ messages in words
INTERNALS = ("function-", "Input should", "Value error", "_valid_unicode", "pydantic", "list[",
             "str]", "type=")


@pytest.mark.parametrize(("message", "param", "text"), [
    ({"type": "open", "prompt": 5}, "prompt", "prompt: must be a string or a list of token ids"),
    ({"type": "open", "messages": [{"role": "user", "content": 3}]}, "messages[0].content",
     "messages[0].content: must be a string or a list of text parts"),
    ({"type": "open", "max_tokens": "5"}, "max_tokens", "max_tokens: must be a valid integer"),
    ({"type": "open", "thinking": {"gap": "x"}}, "thinking.gap",
     "thinking.gap: must be a valid integer"),
    ({"type": "append", "text": "\ud800"}, "text",
     "text: contains a lone surrogate (not valid Unicode)"),
    ({"type": "close", "text": 5}, "text", "text: must be a valid string"),
])
def test_websocket_validation_errors_in_words(message, param, text) -> None:
    llm = tiny_llm()
    with TestClient(create_app(llm, ServerConfig(served_model_name="tiny"))) as c, \
            c.websocket_connect("/v1/sessions/ws") as ws:
        if message["type"] != "open":
            ws.send_json({"type": "open", "prompt": "hi", "max_tokens": 2})
            assert ws.receive_json()["type"] == "opened"
        ws.send_text(json.dumps(message))
        err = ws.receive_json()
    llm.shutdown()
    assert err == {"type": "error", "error": {"message": text, "type": "invalid_request_error",
                                              "param": param, "code": "invalid_type"}}
    assert not any(word in text for word in INTERNALS)


# ------------------------------------------------------------------ a slow request check
JSON_OBJECT = {"type": "json_object"}
SLOW_CHECKS = {
    "/v1/completions": {"prompt": "hi", "max_tokens": 2, "response_format": JSON_OBJECT},
    "/v1/chat/completions": {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2,
                             "response_format": JSON_OBJECT},
    "/v1/responses": {"input": "hi", "max_output_tokens": 2, "text": {"format": JSON_OBJECT}},
    "/v1/sessions": {"prompt": "hi", "max_tokens": 2, "response_format": JSON_OBJECT},
}


@pytest.mark.parametrize("path", list(SLOW_CHECKS))
def test_a_slow_request_check_never_stalls_other_clients(tiny_server, monkeypatch, path) -> None:
    """Compiling a client's constraint (or tokenizing megabytes of prompt) runs off the
    event loop: a choice of 150,000 strings held every other client (health checks and
    streams included) for 53 s. Here the compile is held until the other clients have
    been answered."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    structured = tiny_server.engine.structured
    compile_, entered, release = structured.compile, threading.Event(), threading.Event()

    def held(constraint):
        entered.set()
        release.wait(30)
        return compile_(constraint)

    monkeypatch.setattr(structured, "compile", held)
    url = tiny_server.url
    with ThreadPoolExecutor(1) as pool:
        slow = pool.submit(httpx.post, url + path, json=SLOW_CHECKS[path], timeout=60)
        try:
            assert entered.wait(10)
            health = httpx.get(url + "/health", timeout=10)
            other = httpx.post(url + "/v1/completions", timeout=10,
                               json={"prompt": "Hello", "max_tokens": 2})
        finally:
            release.set()
        assert (health.status_code, other.status_code) == (200, 200)
        answer = slow.result()
    assert answer.status_code == 200, answer.text
    if path == "/v1/sessions":
        assert httpx.delete(f"{url}/v1/sessions/{answer.json()['id']}").status_code == 200
    tiny_server.wait_idle()


def test_tokenizing_for_tokenize_never_stalls_other_clients(tiny_server, monkeypatch) -> None:
    """``/tokenize`` of megabytes took ~5 s of the event loop (every client held)."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    tokenizer = tiny_server.llm.engine.tokenizer
    encode, entered, release = tokenizer.encode, threading.Event(), threading.Event()

    def held(*args, **kwargs):
        entered.set()
        release.wait(30)
        return encode(*args, **kwargs)

    monkeypatch.setattr(tokenizer, "encode", held)
    url = tiny_server.url
    with ThreadPoolExecutor(1) as pool:
        slow = pool.submit(httpx.post, url + "/tokenize", json={"prompt": "hi"}, timeout=60)
        try:
            assert entered.wait(10)
            health = httpx.get(url + "/health", timeout=10)
            other = httpx.post(url + "/v1/completions", timeout=10,  # token ids: no encode
                               json={"prompt": [5, 6, 7], "max_tokens": 2})
        finally:
            release.set()
        assert (health.status_code, other.status_code) == (200, 200)
        assert slow.result().json()["tokens"] == encode("hi")
    tiny_server.wait_idle()


class _GoneSocket:
    """A WebSocket whose client left after sending one frame: every send fails as
    starlette's does then (the answer task saw the disconnect first)."""

    def __init__(self, app, frames: list[str], state) -> None:
        self.app, self.scope, self.query_params = app, {"headers": []}, {}
        self.frames, self.application_state = list(frames), state

    async def accept(self) -> None:
        pass

    async def receive(self) -> dict:
        if self.frames:
            return {"type": "websocket.receive", "text": self.frames.pop(0)}
        return {"type": "websocket.disconnect", "code": 1006}

    async def send_json(self, msg: dict) -> None:
        from starlette import websockets

        gone = getattr(websockets, "WebSocketDisconnected", websockets.WebSocketDisconnect)
        raise gone('Cannot call "send" once a close message has been sent.')


@pytest.mark.parametrize("seen", ["by_a_send", "already"])
def test_a_client_gone_while_its_frame_is_handled_ends_quietly(tiny_server, seen) -> None:
    """The error for a frame that arrived before the client left cannot be sent: the
    connection ends as a disconnect (it escaped as 'Exception in ASGI application')."""
    import asyncio

    from starlette.websockets import WebSocketState

    from thinkstream.server.session_ws import WsSession

    state = WebSocketState.CONNECTED if seen == "by_a_send" else WebSocketState.DISCONNECTED
    ws = _GoneSocket(tiny_server.app, ['{"type": "append", "text": "x"}'], state)
    asyncio.run(WsSession(ws, tiny_server.state.hub).run())  # returns: no exception
    assert not ws.frames


def test_a_websocket_frame_nested_too_deeply_is_a_400_in_words(tiny_server) -> None:
    """A frame of 100,000 nested arrays overflowed the JSON parser's recursion: the client
    got a 500-style ``internal_error`` and the log a traceback (HTTP bodies answer 400)."""
    url = tiny_server.url.replace("http", "ws") + "/v1/sessions/ws"
    with connect(url) as ws:
        ws.send("[" * 100_000 + "]" * 100_000)
        err = json.loads(ws.recv())
        ws.send(json.dumps({"type": "open", "prompt": "hi", "max_tokens": 2}))
        opened = json.loads(ws.recv())  # the connection still serves
    assert err == {"type": "error", "error": {
        "message": "a text frame is nested too deeply", "type": "invalid_request_error",
        "param": None, "code": "invalid_body"}}
    assert opened["type"] == "opened"
