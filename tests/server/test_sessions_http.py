"""Session routes and the session WebSocket on the tiny model: acknowledgements and 409s,
update mode, SSE answers, limits (idle timeout, per key, size, rate), disconnects, and the
KV pool full again afterwards."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest
from conftest import tiny_llm, wait_pool_full
from fastapi.testclient import TestClient

from thinkstream.server.app import create_app
from thinkstream.server.config import ServerConfig
from thinkstream.server.session_hub import SessionLimits

KEY = {"Authorization": "Bearer k1"}
OTHER = {"Authorization": "Bearer k2"}
MSGS = [{"role": "system", "content": "Be brief."}]
OPEN = {"messages": MSGS, "temperature": 0, "max_tokens": 8, "ignore_eos": True}


@pytest.fixture(scope="module")
def llm():
    llm = tiny_llm()
    yield llm
    llm.shutdown()


def make_client(llm, api_keys: tuple[str, ...] = ("k1", "k2"), **limits) -> TestClient:
    cfg = ServerConfig(served_model_name="tiny", api_keys=api_keys)
    return TestClient(create_app(llm, cfg, SessionLimits(**limits)))


@pytest.fixture()
def client(llm) -> Iterator[TestClient]:
    with make_client(llm) as c:
        yield c
    wait_pool_full(llm)


def one_shot(client: TestClient, content: str) -> str:
    r = client.post("/v1/chat/completions", headers=KEY, json={
        "messages": [*MSGS, {"role": "user", "content": content}], "temperature": 0,
        "max_tokens": 8, "ignore_eos": True})
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]["message"]["content"]


def test_append_close_matches_one_shot(client: TestClient) -> None:
    r = client.post("/v1/sessions", headers=KEY, json=OPEN)
    assert r.status_code == 200, r.text
    sid = r.json()["id"]
    assert r.json()["state"] == "open" and r.json()["next_seq"] == 0
    pieces = ["What is the capi", "tal of Fra", "nce? 東", "京"]
    for i, p in enumerate(pieces):
        ack = client.post(f"/v1/sessions/{sid}/append", headers=KEY, json={"text": p, "seq": i})
        assert ack.status_code == 200, ack.text
        assert ack.json()["seq"] == i and not ack.json()["duplicate"]
    again = client.post(f"/v1/sessions/{sid}/append", headers=KEY, json={"text": "zzz", "seq": 2})
    assert again.status_code == 200 and again.json()["duplicate"] and again.json()["next_seq"] == 4
    gap = client.post(f"/v1/sessions/{sid}/append", headers=KEY, json={"text": "x", "seq": 6})
    assert gap.status_code == 409 and gap.headers["x-expected-seq"] == "4"
    assert gap.json()["error"]["code"] == "sequence_gap" and "expects seq 4" in gap.json()["error"]["message"]
    info = client.get(f"/v1/sessions/{sid}", headers=KEY).json()
    assert info["state"] == "open" and info["tokens_received"] > 0
    assert client.get(f"/v1/sessions/{sid}", headers=OTHER).status_code == 404  # not yours
    done = client.post(f"/v1/sessions/{sid}/close", headers=KEY, json={})
    assert done.status_code == 200, done.text
    body = done.json()
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"]["content"] == one_shot(client, "".join(pieces))
    late = client.post(f"/v1/sessions/{sid}/append", headers=KEY, json={"text": "x", "seq": 4})
    assert late.status_code == 409 and late.json()["error"]["code"] == "session_closed"
    assert "expected seq was 4" in late.json()["error"]["message"]
    assert client.get(f"/v1/sessions/{sid}", headers=KEY).json()["state"] == "finished"


def test_close_with_last_chunk(client: TestClient) -> None:
    """The last chunk rides on the close (HTTP and WebSocket): same answer as a one-shot."""
    sid = client.post("/v1/sessions", headers=KEY, json=OPEN).json()["id"]
    assert client.post(f"/v1/sessions/{sid}/append", headers=KEY,
                       json={"text": "What is the capital ", "seq": 0}).status_code == 200
    bad = client.post(f"/v1/sessions/{sid}/close", headers=KEY,
                      json={"text": "of France?", "token_ids": [1]})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "text"
    gap = client.post(f"/v1/sessions/{sid}/close", headers=KEY, json={"text": "of France?", "seq": 2})
    assert gap.status_code == 409 and gap.headers["x-expected-seq"] == "1"
    done = client.post(f"/v1/sessions/{sid}/close", headers=KEY, json={"text": "of France?", "seq": 1})
    assert done.status_code == 200, done.text
    want = one_shot(client, "What is the capital of France?")
    assert done.json()["choices"][0]["message"]["content"] == want
    with client.websocket_connect("/v1/sessions/ws", headers=KEY) as ws:
        ws.send_json({"type": "open", **OPEN})
        assert ws.receive_json()["type"] == "opened"
        ws.send_json({"type": "append", "text": "What is the capital ", "seq": 0})
        assert ws.receive_json()["type"] == "ack"
        ws.send_json({"type": "close", "text": "of France?", "seq": 1})
        text, msg = "", ws.receive_json()
        while msg["type"] == "chunk":
            text += "".join(ch["delta"].get("content") or "" for ch in msg["choices"])
            msg = ws.receive_json()
        assert msg["type"] == "done" and text == want


def test_ended_sessions_are_forgotten_oldest_first(llm, client: TestClient) -> None:
    """The hub keeps ended sessions' records only as long as the engine remembers them."""
    old = llm.sessions.remember
    llm.sessions.remember = 2
    try:
        ids = []
        for _ in range(4):
            sid = client.post("/v1/sessions", headers=KEY, json=OPEN).json()["id"]
            assert client.post(f"/v1/sessions/{sid}/close", headers=KEY, json={"text": "Hi"}).status_code == 200
            ids.append(sid)
        hub = client.app.state.session_hub
        assert [sid for sid in ids if sid in hub._owned] == ids[2:]
        assert client.get(f"/v1/sessions/{ids[0]}", headers=KEY).status_code == 404
        assert client.get(f"/v1/sessions/{ids[3]}", headers=KEY).json()["state"] == "finished"
    finally:
        llm.sessions.remember = old


def test_update_mode_and_sse(client: TestClient) -> None:
    sid = client.post("/v1/sessions", headers=KEY, json=OPEN).json()["id"]
    client.post(f"/v1/sessions/{sid}/append", headers=KEY, json={"text": "The quick brown fox", "seq": 0})
    r = client.put(f"/v1/sessions/{sid}/input", headers=KEY, json={"text": "The quick red fox", "seq": 1})
    assert r.status_code == 200 and r.json()["tokens_kept"] > 0
    text, chunks = "", []
    with client.stream("POST", f"/v1/sessions/{sid}/close", headers=KEY,
                       json={"stream": True, "stream_options": {"include_usage": True}}) as s:
        assert s.headers["content-type"].startswith("text/event-stream")
        lines = [ln for ln in s.iter_lines() if ln]
        chunks = [json.loads(ln[6:]) for ln in lines[:-1]]
        assert lines[-1] == "data: [DONE]"
    for c in chunks:
        assert c["object"] == "chat.completion.chunk"
        for ch in c["choices"]:
            text += ch["delta"].get("content") or ""
    assert chunks[-1]["usage"]["completion_tokens"] == 8
    assert text == one_shot(client, "The quick red fox")


def test_delete_and_unknown(client: TestClient) -> None:
    sid = client.post("/v1/sessions", headers=KEY, json={"prompt": "hello", "max_tokens": 4}).json()["id"]
    client.post(f"/v1/sessions/{sid}/append", headers=KEY, json={"text": " world"})
    r = client.delete(f"/v1/sessions/{sid}", headers=KEY)
    assert r.status_code == 200 and r.json()["aborted"]
    info = client.get(f"/v1/sessions/{sid}", headers=KEY).json()
    assert info["state"] == "aborted" and info["reason"] == "abort"
    missing = client.post("/v1/sessions/nope/append", headers=KEY, json={"text": "x"})
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "session_not_found"
    bad = client.post("/v1/sessions", headers=KEY, json={"prompt": 5})
    assert bad.status_code == 400 and set(bad.json()["error"]) == {"message", "type", "param", "code"}
    both = client.post(f"/v1/sessions/{sid}/append", headers=KEY, json={})
    assert both.status_code in (400, 409)


def test_limits(llm) -> None:
    with make_client(llm, max_sessions_per_key=2, max_chunk_chars=10, max_tokens_per_session=40,
                     max_chunks_per_s=5, chunk_burst=3) as c:
        a = c.post("/v1/sessions", headers=KEY, json={"prompt": "a"}).json()["id"]
        c.post("/v1/sessions", headers=KEY, json={"prompt": "b"})
        third = c.post("/v1/sessions", headers=KEY, json={"prompt": "c"})
        assert third.status_code == 429 and third.json()["error"]["code"] == "too_many_sessions"
        assert c.post("/v1/sessions", headers=OTHER, json={"prompt": "c"}).status_code == 200
        big = c.post(f"/v1/sessions/{a}/append", headers=KEY, json={"text": "x" * 11})
        assert big.status_code == 413 and big.json()["error"]["code"] == "chunk_too_large"
        codes = [c.post(f"/v1/sessions/{a}/append", headers=KEY, json={"text": "0123456789"}).status_code
                 for _ in range(6)]
        assert 429 in codes  # rate: a burst of 3, then 5 per second
        time.sleep(1.0)
        over = [c.post(f"/v1/sessions/{a}/append", headers=KEY, json={"text": "0123456789"})
                for _ in range(3)]
        assert any(r.status_code == 413 and r.json()["error"]["code"] == "session_tokens_exceeded"
                   for r in over)
        for sid in list(c.app.state.session_hub._owned):
            c.delete(f"/v1/sessions/{sid}", headers={"Authorization": "Bearer k1"})
            c.delete(f"/v1/sessions/{sid}", headers=OTHER)
    wait_pool_full(llm)


def test_idle_timeout_frees_blocks(llm) -> None:
    with make_client(llm, idle_timeout_s=0.3) as c:
        sid = c.post("/v1/sessions", headers=KEY, json={"prompt": "The quick brown fox jumps"}).json()["id"]
        c.post(f"/v1/sessions/{sid}/append", headers=KEY, json={"text": " over the lazy dog"})
        assert llm.engine.kv.num_free_blocks < llm.engine.kv.num_blocks
        deadline = time.monotonic() + 5
        while c.get(f"/v1/sessions/{sid}", headers=KEY).json()["state"] == "open":
            assert time.monotonic() < deadline
            time.sleep(0.1)
        info = c.get(f"/v1/sessions/{sid}", headers=KEY).json()
        assert info["state"] == "aborted" and info["reason"] == "idle_timeout"
        late = c.post(f"/v1/sessions/{sid}/append", headers=KEY, json={"text": "x"})
        assert late.status_code == 409 and "idle_timeout" in late.json()["error"]["message"]
    wait_pool_full(llm)


def test_websocket_flow(client: TestClient) -> None:
    with client.websocket_connect("/v1/sessions/ws", headers=KEY) as ws:
        ws.send_json({"type": "open", **OPEN})
        opened = ws.receive_json()
        assert opened["type"] == "opened"
        ws.send_json({"type": "append", "text": "What is the capital of ", "seq": 0})
        assert ws.receive_json()["seq"] == 0
        raw = "France? 東京".encode()
        ws.send_bytes(raw[:-2])  # ends inside a character: held back
        assert ws.receive_json()["type"] == "ack"
        ws.send_bytes(raw[-2:])
        m = ws.receive_json()
        assert m.get("next_seq") == 3, m
        ws.send_json({"type": "append", "text": "x", "seq": 9})
        err = ws.receive_json()
        assert err["type"] == "error" and err["error"]["code"] == "sequence_gap"
        ws.send_json({"type": "close"})
        text, msg = "", ws.receive_json()
        while msg["type"] == "chunk":
            for ch in msg["choices"]:
                text += ch["delta"].get("content") or ""
            msg = ws.receive_json()
        assert msg["type"] == "done"
    assert text == one_shot(client, "What is the capital of France? 東京")


def test_websocket_disconnect_aborts(client: TestClient, llm) -> None:
    with client.websocket_connect("/v1/sessions/ws", headers=KEY) as ws:
        ws.send_json({"type": "open", "prompt": "The quick brown fox jumps over", "max_tokens": 4})
        sid = ws.receive_json()["session"]["id"]
        ws.send_json({"type": "append", "text": " the lazy dog", "seq": 0})
        ws.receive_json()
        assert sid in llm.engine.requests
    wait_pool_full(llm)  # the vanished client's session was aborted, its blocks freed
    assert llm.sessions.info(sid).reason == "client_gone"


def test_websocket_needs_the_key(llm) -> None:
    with make_client(llm, api_keys=("secret",)) as c:
        with c.websocket_connect("/v1/sessions/ws") as ws:
            assert ws.receive_json()["error"]["code"] == "invalid_api_key"
        with c.websocket_connect("/v1/sessions/ws?api_key=secret") as ws:
            ws.send_json({"type": "open", "prompt": "hi", "max_tokens": 2})
            assert ws.receive_json()["type"] == "opened"
        assert c.post("/v1/sessions", json={"prompt": "hi"}).status_code == 401
    wait_pool_full(llm)


def test_websocket_on_a_live_uvicorn(llm) -> None:
    """A real server (uvicorn with the ``websockets`` dependency) accepts the upgrade and
    runs a session; the answer equals the same session over HTTP."""
    import asyncio

    from conftest import live_server
    from websockets.asyncio.client import connect

    async def run(url: str) -> str:
        async with connect(url) as ws:
            await ws.send(json.dumps({"type": "open", **OPEN}))
            opened = json.loads(await ws.recv())
            assert opened["type"] == "opened", (opened, llm.dead)
            await ws.send(json.dumps({"type": "append", "text": "What is the capital ", "seq": 0}))
            assert json.loads(await ws.recv())["type"] == "ack"
            await ws.send(json.dumps({"type": "close", "text": "of France?", "seq": 1}))
            text, msg = "", json.loads(await ws.recv())
            while msg["type"] == "chunk":
                text += "".join(ch["delta"].get("content") or "" for ch in msg["choices"])
                msg = json.loads(await ws.recv())
            assert msg["type"] == "done", msg
            return text

    with live_server(llm, ServerConfig(served_model_name="tiny")) as live:
        got = asyncio.run(run(live.url.replace("http://", "ws://") + "/v1/sessions/ws"))
    with make_client(llm) as c:
        assert got == one_shot(c, "What is the capital of France?")
    wait_pool_full(llm)


def test_an_append_that_can_never_be_closed_is_a_413_at_once(llm) -> None:
    """At most 40 tokens per session: the append after which the closed input (with the
    template's end) would pass 40 is refused with 413 naming ``input``; the session keeps its
    previous content and still answers."""
    with make_client(llm, max_tokens_per_session=40) as c:
        sid = c.post("/v1/sessions", headers=KEY, json=OPEN).json()["id"]
        tok = llm.engine.tokenizer
        content, seq = "", 0

        def closed(text: str) -> int:
            return len(tok.encode_chat([*MSGS, {"role": "user", "content": text}], True))

        while closed(content + "fox jumps ") <= 40:
            ack = c.post(f"/v1/sessions/{sid}/append", headers=KEY, json={"text": "fox jumps ", "seq": seq})
            assert ack.status_code == 200, ack.text
            content, seq = content + "fox jumps ", seq + 1
        n = closed(content + "fox jumps ")
        r = c.post(f"/v1/sessions/{sid}/append", headers=KEY, json={"text": "fox jumps ", "seq": seq})
        assert r.status_code == 413
        assert r.json()["error"] == {
            "message": f"input: {n} tokens when closed exceed the session limit of 40",
            "type": "invalid_request_error", "param": "input", "code": "session_tokens_exceeded"}
        info = c.get(f"/v1/sessions/{sid}", headers=KEY).json()
        assert (info["state"], info["next_seq"]) == ("open", seq)
        done = c.post(f"/v1/sessions/{sid}/close", headers=KEY, json={"seq": seq}).json()
        usage = done["usage"]
        assert (usage["prompt_tokens"], usage["completion_tokens"]) == (closed(content), 8)
    wait_pool_full(llm)


class Clock:
    """A hand-moved clock for the hub's rate buckets (seconds)."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_replace_costs_what_appending_it_would(llm) -> None:
    """Chunks of at most 10 characters, a burst of 3, 1 per second (the hub's clock moved by
    hand): a replace of 25 characters costs 3 chunks, one of 31 could never be sent as
    appends within the burst (413)."""
    clock = Clock()
    with make_client(llm, max_chunk_chars=10, chunk_burst=3, max_chunks_per_s=1.0) as c:
        c.app.state.session_hub.clock = clock
        sid = c.post("/v1/sessions", headers=KEY, json=OPEN).json()["id"]

        def update(text: str, replace: bool = False):
            if replace:
                return c.put(f"/v1/sessions/{sid}/input", headers=KEY, json={"text": text})
            return c.post(f"/v1/sessions/{sid}/append", headers=KEY, json={"text": text})

        assert update("x" * 25, replace=True).status_code == 200  # 3 of 3
        limited = update("y")
        assert limited.status_code == 429
        assert limited.json()["error"]["code"] == "chunk_rate_exceeded"
        clock.now += 1.0
        assert update("y").status_code == 200  # 1 refilled, spent
        clock.now += 2.0
        costly = update("z" * 25, replace=True)  # 2 held, 3 asked
        assert costly.status_code == 429 and "counts as 3" in costly.json()["error"]["message"]
        clock.now += 1.0
        assert update("z" * 25, replace=True).status_code == 200
        clock.now += 10.0
        big = update("w" * 31, replace=True)
        assert big.status_code == 413 and big.json()["error"]["param"] == "input"
        assert big.json()["error"]["code"] == "chunk_too_large"
        info = c.get(f"/v1/sessions/{sid}", headers=KEY).json()
        assert info["next_seq"] == 3  # the refused updates changed nothing
        c.delete(f"/v1/sessions/{sid}", headers=KEY)
    wait_pool_full(llm)


def test_session_times_are_unix_seconds(client: TestClient) -> None:
    """``created`` / ``last_activity`` as OpenAI gives times (they were monotonic seconds:
    the machine's uptime, not a date)."""
    before = time.time()
    opened = client.post("/v1/sessions", headers=KEY, json=OPEN).json()
    got = client.get(f"/v1/sessions/{opened['id']}", headers=KEY).json()
    assert isinstance(got["created"], int) and int(before) - 1 <= got["created"] <= time.time() + 1
    assert before - 1 <= got["last_activity"] <= time.time() + 1
    assert client.delete(f"/v1/sessions/{opened['id']}", headers=KEY).status_code == 200


def test_a_websocket_whose_session_ended_under_it_opens_another(client: TestClient) -> None:
    """One session at a time per connection: once it ended under the connection (a DELETE
    here; the idle timeout alike) a new open is served, where every open was a 409
    ``session_open`` and the connection could only be dropped."""
    want = one_shot(client, "What is the capital of France?")
    with client.websocket_connect("/v1/sessions/ws", headers=KEY) as ws:
        ws.send_json({"type": "open", **OPEN})
        sid = ws.receive_json()["session"]["id"]
        ws.send_json({"type": "open", **OPEN})  # still live: refused
        assert ws.receive_json()["error"]["code"] == "session_open"
        assert client.delete(f"/v1/sessions/{sid}", headers=KEY).json()["aborted"] is True
        ws.send_json({"type": "open", **OPEN})
        assert ws.receive_json()["type"] == "opened"
        ws.send_json({"type": "close", "text": "What is the capital of France?"})
        text, msg = "", ws.receive_json()
        while msg["type"] == "chunk":
            text += "".join(ch["delta"].get("content") or "" for ch in msg["choices"])
            msg = ws.receive_json()
        assert msg["type"] == "done" and text == want


def test_legacy_function_turns_open_a_session_as_chat_renders_them(client: TestClient) -> None:
    """OpenAI's deprecated ``function`` messages (and an assistant's ``function_call``) are
    rendered as a chat request renders them (tool turns, ``legacy_functions.tool_turns``);
    a session took them as a role "function" turn and dropped the call (another prompt,
    another answer), and a ``function`` message without a name is the chat's 400."""
    history = [{"role": "user", "content": "weather in Paris?"},
               {"role": "assistant", "content": None,
                "function_call": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
               {"role": "function", "name": "get_weather", "content": "22 C, sunny"}]
    sampling = {"temperature": 0, "max_tokens": 8, "ignore_eos": True}
    chat = client.post("/v1/chat/completions", headers=KEY, json={
        "messages": [*history, {"role": "user", "content": "And tomorrow?"}], **sampling})
    assert chat.status_code == 200, chat.text
    r = client.post("/v1/sessions", headers=KEY, json={"messages": history, **sampling})
    assert r.status_code == 200, r.text
    done = client.post(f"/v1/sessions/{r.json()['id']}/close", headers=KEY,
                       json={"text": "And tomorrow?"})
    assert done.status_code == 200, done.text
    assert done.json()["usage"]["prompt_tokens"] == chat.json()["usage"]["prompt_tokens"]
    assert done.json()["choices"][0]["message"] == chat.json()["choices"][0]["message"]
    bad = client.post("/v1/sessions", headers=KEY, json={
        "messages": [{"role": "function", "content": "x"}], **sampling})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "messages[0].name"


TOOL = {"type": "function", "function": {"name": "f"}}


@pytest.mark.parametrize(("field", "value"), [
    ("tools", [TOOL]), ("tool_choice", "required"), ("functions", [{"name": "f"}]),
    ("function_call", {"name": "f"}), ("echo", True), ("add_generation_prompt", False),
    ("continue_final_message", True), ("chat_template_kwargs", {"enable_thinking": False}),
    ("reasoning_effort", "low"), ("chat_template", "{{ messages }}")])
def test_chat_options_a_session_cannot_honour_are_refused(client: TestClient, field,
                                                          value) -> None:
    """A session answered in plain text whatever ``tools`` / ``tool_choice: required``
    (or ``echo``, the template's options) its open asked for: silently ignored, as if
    honoured. Now a 400 naming the field, and no session is left open."""
    r = client.post("/v1/sessions", headers=KEY, json={**OPEN, field: value})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert (err["param"], err["code"], err["type"]) == (field, "unsupported",
                                                        "invalid_request_error")
    assert err["message"].startswith(f"{field}: not supported on a session")
    with client.websocket_connect("/v1/sessions/ws", headers=KEY) as ws:
        ws.send_json({"type": "open", **OPEN, field: value})
        assert ws.receive_json()["error"]["param"] == field
    assert client.get("/v1/sessions/nope", headers=KEY).status_code == 404


@pytest.mark.parametrize("extra", [{"tools": []}, {"tool_choice": "none"}, {"echo": False},
                                   {"add_generation_prompt": True}, {"tools": None}])
def test_chat_options_that_ask_for_nothing_still_open_a_session(client: TestClient,
                                                                extra) -> None:
    r = client.post("/v1/sessions", headers=KEY, json={**OPEN, **extra})
    assert r.status_code == 200, r.text
    assert client.delete(f"/v1/sessions/{r.json()['id']}", headers=KEY).status_code == 200


def test_serve_flags_set_the_session_limits(llm) -> None:
    """``thinkstream serve`` had no flags for them (only ``create_app``'s argument)."""
    import argparse

    from thinkstream.server.cli import add_server_args, server_config

    p = argparse.ArgumentParser()
    p.add_argument("model", nargs="?")
    add_server_args(p)
    assert server_config(p.parse_args([])).sessions == SessionLimits()
    cfg = server_config(p.parse_args([
        "--served-model-name", "tiny", "--max-sessions-per-key", "1", "--session-idle-timeout",
        "7.5", "--max-tokens-per-session", "40", "--max-session-chunk-chars", "10",
        "--max-session-chunks-per-s", "2", "--session-chunk-burst", "3"]))
    assert cfg.sessions == SessionLimits(idle_timeout_s=7.5, max_sessions_per_key=1,
                                         max_tokens_per_session=40, max_chunk_chars=10,
                                         max_chunks_per_s=2.0, chunk_burst=3)
    with pytest.raises(ValueError, match="max_sessions_per_key"):
        server_config(p.parse_args(["--max-sessions-per-key", "0"]))
    with TestClient(create_app(llm, cfg)) as c:  # the config's limits reach the hub
        sid = c.post("/v1/sessions", json={"prompt": "a"}).json()["id"]
        second = c.post("/v1/sessions", json={"prompt": "b"})
        assert second.status_code == 429 and second.json()["error"]["code"] == "too_many_sessions"
        big = c.post(f"/v1/sessions/{sid}/append", json={"text": "x" * 11})
        assert big.status_code == 413 and big.json()["error"]["code"] == "chunk_too_large"
        assert c.delete(f"/v1/sessions/{sid}").status_code == 200
    wait_pool_full(llm)
