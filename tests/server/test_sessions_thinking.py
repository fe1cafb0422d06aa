"""Think while reading over HTTP and WebSocket on the tiny model: the reasoning/answer split
in SSE (``/events`` while the input is open, the close stream) and in WebSocket messages,
equal to the non-streamed answer of an identical greedy session; bad thinking configs; and
aborting in the middle of a note leaves the KV pool full."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from conftest import Live, live_server, tiny_llm, wait_pool_full
from fastapi.testclient import TestClient

from thinkstream.server.app import create_app
from thinkstream.server.config import ServerConfig
from thinkstream.thinking import ThinkConfig

THINK = {"layout": "gap", "gap": 40, "note_tokens": 6, "pass_tokens": 5, "depth": "D2",
         "fold_last_unit": False}  # the last unit's note and the D2 pass both come after close
OPEN = {"messages": [], "temperature": 0, "max_tokens": 6, "ignore_eos": True, "thinking": THINK}
FIRST = "The quick brown fox. Paris is"  # completes unit 0: its note starts at once
REST = " the capital of France."
# One long note (the tiny model fills the budget), so an abort lands in its middle.
LONG_NOTE = {"layout": "gap", "gap": 300, "note_tokens": 240, "max_reasoning_tokens": 1000}


@pytest.fixture(scope="module")
def llm():
    llm = tiny_llm()
    yield llm
    llm.shutdown()


@pytest.fixture(scope="module")
def live(llm) -> Iterator[Live]:
    with live_server(llm) as live:
        yield live


@pytest.fixture()
def http(live: Live, llm) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=live.url, timeout=60) as c:
        yield c
    wait_pool_full(llm)


@pytest.fixture()
def client(llm) -> Iterator[TestClient]:
    with TestClient(create_app(llm, ServerConfig(served_model_name="tiny"))) as c:
        yield c
    wait_pool_full(llm)


# ------------------------------------------------------------------ helpers
def answer_tokens(usage: dict) -> int:
    """The answer's tokens: ``completion_tokens`` counts the notes' tokens too, as
    ``completion_tokens_details.reasoning_tokens`` (OpenAI's reasoning tokens)."""
    reasoning = usage["completion_tokens_details"]["reasoning_tokens"]
    assert reasoning > 0
    return usage["completion_tokens"] - reasoning


def on_engine(llm, fn: Callable[[], Any]) -> Any:
    """``fn()`` run on the engine thread between steps (a consistent view of a session)."""
    async def run() -> Any:
        return await llm.call(lambda _: fn())

    return asyncio.run(run())


def wait_for(llm, cond: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not on_engine(llm, cond):
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def settle(llm, sid: str) -> str:
    """Wait until the input received so far is read and noted; returns the reasoning."""
    def idle() -> bool:
        ctrl = llm.sessions.thinker(sid)
        return (ctrl.note is None and ctrl.S.num_pending_tokens == 0
                and all(u.seg_len is not None for u in ctrl.units))

    wait_for(llm, idle)
    return reasoning_now(llm, sid)


def reasoning_now(llm, sid: str) -> str:
    return on_engine(llm, lambda: llm.sessions.thinker(sid).state.reasoning)


def sse_chunks(lines: list[str]) -> list[dict]:
    lines = [ln for ln in lines if ln]
    assert lines[-1] == "data: [DONE]"
    return [json.loads(ln.removeprefix("data: ")) for ln in lines[:-1]]


def reading(c, llm, open_body: dict = OPEN) -> tuple[str, str]:
    """Open, append FIRST, let its note finish, append REST, settle; -> (id, reasoning)."""
    r = c.post("/v1/sessions", json=open_body)
    assert r.status_code == 200, r.text
    sid = r.json()["id"]
    for seq, piece in enumerate([FIRST, REST]):
        ack = c.post(f"/v1/sessions/{sid}/append", json={"text": piece, "seq": seq})
        assert ack.status_code == 200, ack.text
        before = settle(llm, sid)
    return sid, before


def message_of(body: dict) -> tuple[str, str]:
    msg = body["choices"][0]["message"]
    return msg.get("reasoning_content", ""), msg["content"]


def reference(c, llm) -> tuple[str, str]:
    """(reasoning_content, content) of a session answered without streaming."""
    sid, _ = reading(c, llm)
    r = c.post(f"/v1/sessions/{sid}/close", json={})
    assert r.status_code == 200, r.text
    assert set(r.json()["choices"][0]["message"]) == {"role", "content", "reasoning_content"}
    return message_of(r.json())


# ------------------------------------------------------------------ HTTP SSE
def test_events_stream_reasoning_while_the_input_is_open(http: httpx.Client, live: Live,
                                                         llm) -> None:
    sid = http.post("/v1/sessions", json=OPEN).json()["id"]
    lines: list[str] = []
    first = threading.Event()

    def listen() -> None:  # its own client: one per thread
        with httpx.Client(base_url=live.url, timeout=60) as c, \
                c.stream("GET", f"/v1/sessions/{sid}/events") as s:
            assert s.status_code == 200 and s.headers["content-type"].startswith("text/event-stream")
            for ln in s.iter_lines():
                lines.append(ln)
                if ln.startswith("data: {"):
                    first.set()

    reader = threading.Thread(target=listen)
    reader.start()
    assert http.post(f"/v1/sessions/{sid}/append", json={"text": FIRST, "seq": 0}).status_code == 200
    assert first.wait(60), "no reasoning before close"
    assert http.get(f"/v1/sessions/{sid}").json()["state"] == "open"  # it came while reading
    before = settle(llm, sid)
    with http.stream("GET", f"/v1/sessions/{sid}/events") as s:  # joins late: starts from now
        line = next(ln for ln in s.iter_lines() if ln)
    assert json.loads(line.removeprefix("data: "))["choices"][0]["delta"] == {"reasoning_content": before}
    assert http.get(f"/v1/sessions/{sid}").json()["state"] == "open"  # leaving did not abort
    assert http.post(f"/v1/sessions/{sid}/append", json={"text": REST, "seq": 1}).status_code == 200
    done = http.post(f"/v1/sessions/{sid}/close", json={})
    assert done.status_code == 200, done.text
    reader.join(60)
    assert not reader.is_alive()
    chunks = sse_chunks(lines)  # the stream ended with the session
    for c in chunks:
        assert c["object"] == "chat.completion.chunk" and c["id"] == sid
        [choice] = c["choices"]
        assert set(choice["delta"]) == {"reasoning_content"} and choice["finish_reason"] is None
    final_reasoning, content = message_of(done.json())
    assert "".join(c["choices"][0]["delta"]["reasoning_content"] for c in chunks) == final_reasoning
    assert final_reasoning and content and answer_tokens(done.json()["usage"]) == 6
    # a listener that comes after the end gets the whole reasoning at once, then [DONE]
    late = sse_chunks(http.get(f"/v1/sessions/{sid}/events").text.split("\n"))
    assert [c["choices"][0]["delta"] for c in late] == [{"reasoning_content": final_reasoning}]


def test_close_stream_reasoning_then_content(http: httpx.Client, llm) -> None:
    ref_reasoning, ref_content = reference(http, llm)
    sid, before = reading(http, llm)
    with http.stream("POST", f"/v1/sessions/{sid}/close",
                     json={"stream": True, "stream_options": {"include_usage": True}}) as s:
        assert s.status_code == 200
        chunks = sse_chunks(list(s.iter_lines()))
    kinds = []
    for c in chunks:
        if not c["choices"]:
            kinds.append("usage")
            continue
        delta = c["choices"][0]["delta"]
        assert not ("reasoning_content" in delta and "content" in delta), delta
        kinds.append("role" if "role" in delta else "reasoning" if "reasoning_content" in delta
                     else "content" if "content" in delta else "finish")
    groups = [k for i, k in enumerate(kinds) if i == 0 or kinds[i - 1] != k]
    assert groups == ["role", "reasoning", "content", "finish", "usage"], kinds
    reasoning = "".join(c["choices"][0]["delta"].get("reasoning_content", "")
                        for c in chunks if c["choices"])
    content = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert (reasoning, content) == (ref_reasoning, ref_content)
    assert reasoning.startswith(before) and len(reasoning) > len(before)  # last note, D2 pass
    assert chunks[-2]["choices"][0]["finish_reason"] == "length"
    assert answer_tokens(chunks[-1]["usage"]) == 6


def test_session_without_thinking_has_no_reasoning_field(http: httpx.Client) -> None:
    sid = http.post("/v1/sessions", json={**OPEN, "thinking": None}).json()["id"]
    http.post(f"/v1/sessions/{sid}/append", json={"text": FIRST + REST, "seq": 0})
    body = http.post(f"/v1/sessions/{sid}/close", json={}).json()
    assert set(body["choices"][0]["message"]) == {"role", "content"}


# ------------------------------------------------------------------ WebSocket
def ws_until(ws, stop: Callable[[dict, list[dict]], bool]) -> list[dict]:
    """Messages up to and including the one ``stop`` accepts (given those before it)."""
    got: list[dict] = []
    while True:
        msg = ws.receive_json()
        got.append(msg)
        if stop(msg, got):
            return got


def joined(msgs: list[dict]) -> str:
    return "".join(m["delta"] for m in msgs if m["type"] == "reasoning")


def test_websocket_reasoning_messages_then_answer(client: TestClient, llm) -> None:
    ref_reasoning, ref_content = reference(client, llm)
    with client.websocket_connect("/v1/sessions/ws") as ws:
        ws.send_json({"type": "open", **OPEN})
        opened = ws.receive_json()
        assert opened["type"] == "opened"
        sid = opened["session"]["id"]
        reading_msgs: list[dict] = []
        for seq, piece in enumerate([FIRST, REST]):
            ws.send_json({"type": "append", "text": piece, "seq": seq})
            reading_msgs += ws_until(ws, lambda m, _, seq=seq: m["type"] == "ack" and m["seq"] == seq)
            before = settle(llm, sid)
            while joined(reading_msgs) != before:  # the rest of the note is on its way
                reading_msgs.append(ws.receive_json())
        assert {m["type"] for m in reading_msgs} == {"ack", "reasoning"}
        assert all(set(m) == {"type", "delta"} for m in reading_msgs if m["type"] == "reasoning")
        assert joined(reading_msgs) == before != ""  # pushed before the client sent close
        ws.send_json({"type": "close"})
        after = ws_until(ws, lambda m, _: m["type"] == "done")
    types = [m["type"] for m in after]
    assert set(types) == {"chunk", "reasoning", "done"}
    answer = [m for m in after if m["type"] == "chunk"]
    for m in answer:
        for choice in m["choices"]:
            assert "reasoning_content" not in choice["delta"]
    first_text = next(i for i, m in enumerate(after)
                      if m["type"] == "chunk" and m["choices"] and m["choices"][0]["delta"].get("content"))
    assert max(i for i, t in enumerate(types) if t == "reasoning") < first_text
    content = "".join(ch["delta"].get("content", "") for m in answer for ch in m["choices"])
    assert (joined(reading_msgs) + joined(after), content) == (ref_reasoning, ref_content)
    assert joined(after) != ""  # the last note and the D2 pass, after close
    assert answer_tokens(answer[-1]["usage"]) == 6


# ------------------------------------------------------------------ refusals
def gap_message(llm) -> str:
    tok, cfg = llm.tokenizer, ThinkConfig()
    need = sum(len(tok.encode(t, add_special_tokens=False)) for t in (cfg.note_head, cfg.note_tail)) + 6
    return f"thinking: layout gap 5 cannot hold a note segment of up to {need} tokens " \
           "(head + note_tokens + tail)"


def bad_configs(llm) -> list[tuple[dict, str]]:
    return [
        ({"layout": "zig"}, "thinking: layout: 'zig' is not one of interleaved, gap, grouped"),
        ({"depth": "D4"}, "thinking: depth: 'D4' is not one of D1, D2, D3"),
        ({"note_tokens": 0}, "thinking: note_tokens must be >= 1"),
        ({"gap": 5}, gap_message(llm)),
    ]


def test_bad_thinking_config_is_400(client: TestClient, llm) -> None:
    for change, message in bad_configs(llm):
        r = client.post("/v1/sessions", json={**OPEN, "thinking": {**THINK, **change}})
        assert r.status_code == 400, (change, r.text)
        assert r.json() == {"error": {"message": message, "type": "invalid_request_error",
                                      "param": "thinking", "code": "invalid_value"}}
        assert not llm.engine.requests  # nothing was left open
    wrong_type = client.post("/v1/sessions", json={**OPEN, "thinking": {"gap": "wide"}})
    assert wrong_type.status_code == 400
    assert set(wrong_type.json()["error"]) == {"message", "type", "param", "code"}
    with client.websocket_connect("/v1/sessions/ws") as ws:
        for change, message in bad_configs(llm):
            ws.send_json({"type": "open", **OPEN, "thinking": {**THINK, **change}})
            assert ws.receive_json() == {"type": "error", "error": {
                "message": message, "type": "invalid_request_error", "param": "thinking",
                "code": "invalid_value"}}
        ws.send_json({"type": "open", **OPEN})  # the connection is still usable
        assert ws.receive_json()["type"] == "opened"
    wait_pool_full(llm)


# ------------------------------------------------------------------ aborts
def in_note(llm, sid: str) -> Callable[[], bool]:
    def cond() -> bool:
        note = llm.sessions.thinker(sid).note
        return note is not None and note.count >= 1

    return cond


def assert_cut_mid_note(llm, sid: str) -> None:
    seg = llm.sessions.thinker(sid).segs[-1]
    assert not seg.done and 1 <= seg.count < LONG_NOTE["note_tokens"], (seg.done, seg.count)


def test_delete_mid_note_frees_every_block(client: TestClient, llm) -> None:
    sid = client.post("/v1/sessions", json={**OPEN, "thinking": LONG_NOTE}).json()["id"]
    client.post(f"/v1/sessions/{sid}/append", json={"text": FIRST, "seq": 0})
    wait_for(llm, in_note(llm, sid))
    r = client.delete(f"/v1/sessions/{sid}")
    assert r.status_code == 200
    assert r.json() == {"id": sid, "object": "session.deleted", "deleted": True, "aborted": True}
    assert_cut_mid_note(llm, sid)
    wait_pool_full(llm)
    info = client.get(f"/v1/sessions/{sid}").json()
    assert (info["state"], info["reason"]) == ("aborted", "abort")


def test_websocket_abort_and_drop_mid_note_free_every_block(client: TestClient, llm) -> None:
    with client.websocket_connect("/v1/sessions/ws") as ws:
        for reason in ("abort", "client_gone"):
            ws.send_json({"type": "open", **OPEN, "thinking": LONG_NOTE})
            sid = ws.receive_json()["session"]["id"]
            ws.send_json({"type": "append", "text": FIRST, "seq": 0})
            ws_until(ws, lambda m, _: m["type"] == "reasoning")  # the note is being written
            wait_for(llm, in_note(llm, sid))
            if reason == "client_gone":
                break  # leaving the block drops the connection
            ws.send_json({"type": "abort"})
            ws_until(ws, lambda m, _: m["type"] == "aborted")
            assert_cut_mid_note(llm, sid)
            wait_pool_full(llm)
            assert client.get(f"/v1/sessions/{sid}").json()["reason"] == "abort"
    wait_pool_full(llm)
    assert_cut_mid_note(llm, sid)
    assert llm.sessions.info(sid).reason == "client_gone"


def test_thinking_body_maps_answer_request_and_fold() -> None:
    """The session body's ``thinking`` object reaches ``ThinkConfig``: ``answer_request``
    (omitted: the default; "": none) and ``fold_last_unit``."""
    from thinkstream.server.session_protocol import SessionThinking

    default = SessionThinking().config()
    assert default.answer_request == ThinkConfig().answer_request and default.fold_last_unit
    cfg = SessionThinking(answer_request="", fold_last_unit=False, depth="D3").config()
    assert (cfg.answer_request, cfg.fold_last_unit, cfg.passes) == (
        "", False, (ThinkConfig().integrate_head, ThinkConfig().reflect_head))
