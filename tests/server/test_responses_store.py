"""The Responses API's stored responses, through the ``openai`` SDK on a live server:
retrieve / delete / input_items, ``previous_response_id`` (the same greedy text as the
whole conversation sent), ``store: false``, LRU eviction by count and bytes, owners, and ``background``
(detached from its connection, cancel, resumed streams, a drain's end)."""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import signal
import threading
import time
from collections import Counter

import httpx
import pytest
from conftest import TINY_ENGINE, live_server, slow_down, wait_for, wait_pool_full
from helpers.tiny import tiny_checkpoint

from thinkstream.async_llm import AsyncLLM
from thinkstream.config import EngineConfig
from thinkstream.engine.llm_engine import LLMEngine
from thinkstream.server.auth import owner_name
from thinkstream.server.cli import add_server_args, server_config
from thinkstream.server.config import ServerConfig
from thinkstream.server.responses_store import ResponseStore, StoredResponse

openai = pytest.importorskip("openai")

A, B = "sk-resp-a-0123", "sk-resp-b-4567"
GREEDY = {"model": "tiny", "temperature": 0, "extra_body": {"ignore_eos": True}}
TOOLS = [{"type": "function", "name": "get_weather", "description": "The weather in a city",
          "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                         "required": ["city"]}}]


@pytest.fixture(scope="module")
def llm():
    ckpt = tiny_checkpoint(max_position_embeddings=2048)  # room for the tool prompt
    llm = AsyncLLM(LLMEngine(config=EngineConfig(**TINY_ENGINE), checkpoint=ckpt))
    yield llm
    llm.shutdown()


@pytest.fixture(scope="module")
def live(llm):
    with live_server(llm, ServerConfig(served_model_name="tiny", api_keys=(A, B))) as live:
        yield live


@pytest.fixture(scope="module")
def a(live):
    return openai.OpenAI(base_url=live.url + "/v1", api_key=A, max_retries=0, timeout=30)


@pytest.fixture(scope="module")
def b(live):
    return openai.OpenAI(base_url=live.url + "/v1", api_key=B, max_retries=0, timeout=30)


def raw(live, method: str, path: str, key: str = A, **kw) -> httpx.Response:
    return httpx.request(method, live.url + path, headers={"Authorization": f"Bearer {key}"},
                         timeout=30, **kw)


def not_found(rid: str) -> dict:
    return {"error": {"message": f"Response with id '{rid}' not found.",
                      "type": "invalid_request_error", "param": None, "code": None}}


def metric_counts(text: str) -> dict[str, float]:
    """End-to-end latency observations (``e2e``) and finished sequences by reason."""
    found = re.findall(r'^thinkstream_(?:e2e_request_latency_seconds_count|request_success_total)'
                       r'\{(?:finished_reason="(\w+)",)?model_name="tiny"\} (\S+)$', text, re.M)
    return {reason or "e2e": float(value) for reason, value in found}


def finished(client, rid: str):
    deadline = time.monotonic() + 30
    while (r := client.responses.retrieve(rid)).status in ("queued", "in_progress"):
        assert time.monotonic() < deadline, "the background response did not finish"
        time.sleep(0.02)
    return r


def test_create_retrieve_input_items_delete(live, a) -> None:
    made = raw(live, "POST", "/v1/responses", json={"model": "tiny", "input": "hello there",
                                                    "max_output_tokens": 5})
    body = made.json()
    assert body["store"] is True and body["background"] is False
    assert raw(live, "GET", f"/v1/responses/{body['id']}").json() == body  # same object
    r = a.responses.create(input=[{"role": "system", "content": "Be brief."},
                                  {"role": "user", "content": [
                                      {"type": "input_text", "text": "one"}]},
                                  {"role": "user", "content": "two"}], max_output_tokens=3,
                           **GREEDY)
    assert a.responses.retrieve(r.id).model_dump() == r.model_dump()
    items = a.responses.input_items.list(r.id)
    assert [(i.role, i.content[0].text) for i in items.data] == [
        ("user", "two"), ("user", "one"), ("system", "Be brief.")]  # newest first, by default
    asc = raw(live, "GET", f"/v1/responses/{r.id}/input_items?order=asc&limit=2").json()
    ids = [i["id"] for i in asc["data"]]
    assert [i["content"][0]["text"] for i in asc["data"]] == ["Be brief.", "one"]
    assert (asc["first_id"], asc["last_id"], asc["has_more"]) == (ids[0], ids[1], True)
    rest = raw(live, "GET", f"/v1/responses/{r.id}/input_items?order=asc&after={ids[1]}").json()
    assert [i["content"][0]["text"] for i in rest["data"]] == ["two"] and not rest["has_more"]
    for query, param in (("order=up", "order"), ("limit=0", "limit"), ("limit=x", "limit"),
                         ("after=msg_nope", "after")):
        got = raw(live, "GET", f"/v1/responses/{r.id}/input_items?{query}")
        assert got.status_code == 400 and got.json()["error"]["param"] == param, got.text
    streamed = list(a.responses.create(input="streamed", max_output_tokens=3, stream=True,
                                       **GREEDY))[-1].response
    assert a.responses.retrieve(streamed.id).model_dump() == streamed.model_dump()
    assert a.responses.delete(r.id) is None
    with pytest.raises(openai.NotFoundError) as err:
        a.responses.retrieve(r.id)
    assert err.value.body == not_found(r.id)["error"]
    for method, path in (("GET", ""), ("DELETE", ""), ("GET", "/input_items")):
        got = raw(live, method, f"/v1/responses/{r.id}{path}")
        assert got.status_code == 404 and got.json() == not_found(r.id)
    live.wait_idle()


def test_other_key_gets_404(live, a, b) -> None:
    r = a.responses.create(input="mine", max_output_tokens=3, **GREEDY)
    for call in (lambda: b.responses.retrieve(r.id), lambda: b.responses.delete(r.id),
                 lambda: b.responses.input_items.list(r.id),
                 lambda: b.responses.cancel(r.id)):
        with pytest.raises(openai.NotFoundError):
            call()
    with pytest.raises(openai.NotFoundError) as err:
        b.responses.create(input="yours?", previous_response_id=r.id, **GREEDY)
    assert err.value.body == {"message": f"Previous response with id '{r.id}' not found.",
                              "type": "invalid_request_error",
                              "param": "previous_response_id",
                              "code": "previous_response_not_found"}
    assert a.responses.retrieve(r.id).output_text == r.output_text  # B changed nothing


def test_previous_response_id_is_the_whole_conversation(a) -> None:
    """Three turns chained by id give the text (and prompt length) of the conversation sent
    whole; the first turn's instructions are not carried over."""
    r1 = a.responses.create(input="The quick brown fox", instructions="Be brief.",
                            max_output_tokens=6, **GREEDY)
    r2 = a.responses.create(input="jumps over", previous_response_id=r1.id,
                            max_output_tokens=6, **GREEDY)
    r3 = a.responses.create(input=[{"role": "user", "content": "the lazy dog"}],
                            previous_response_id=r2.id, instructions="Answer.",
                            max_output_tokens=6, **GREEDY)
    assert (r2.previous_response_id, r3.previous_response_id) == (r1.id, r2.id)
    turns = [{"role": "user", "content": "The quick brown fox"},
             {"role": "assistant", "content": r1.output_text},
             {"role": "user", "content": "jumps over"}]
    whole2 = a.responses.create(input=turns, store=False, max_output_tokens=6, **GREEDY)
    whole3 = a.responses.create(input=turns + [
        {"role": "assistant", "content": r2.output_text},
        {"role": "user", "content": "the lazy dog"}], instructions="Answer.", store=False,
        max_output_tokens=6, **GREEDY)
    assert (r2.output_text, r2.usage.input_tokens) == (whole2.output_text,
                                                       whole2.usage.input_tokens)
    assert (r3.output_text, r3.usage.input_tokens) == (whole3.output_text,
                                                       whole3.usage.input_tokens)
    items = a.responses.input_items.list(r3.id, order="asc").data  # its own input only
    assert [i.content[0].text for i in items] == ["the lazy dog"]


def test_previous_response_id_and_item_references_carry_function_calls(a, b) -> None:
    r1 = a.responses.create(input="Weather in Paris?", tools=TOOLS, tool_choice="required",
                            max_output_tokens=60, **GREEDY)
    call = r1.output[-1]
    assert call.type == "function_call" and call.name == "get_weather"
    result = {"type": "function_call_output", "call_id": call.call_id, "output": "sunny"}
    r2 = a.responses.create(input=[result], previous_response_id=r1.id, tools=TOOLS,
                            max_output_tokens=6, **GREEDY)
    whole = a.responses.create(input=[{"role": "user", "content": "Weather in Paris?"},
                                      {"type": "function_call", "call_id": call.call_id,
                                       "name": call.name, "arguments": call.arguments},
                                      result], tools=TOOLS, store=False, max_output_tokens=6,
                               **GREEDY)
    assert (r2.output_text, r2.usage.input_tokens) == (whole.output_text,
                                                       whole.usage.input_tokens)
    ask = a.responses.input_items.list(r1.id).data[0]
    refs = [{"type": "item_reference", "id": ask.id}, {"type": "item_reference", "id": call.id},
            result]  # stored items by id, as Codex sends them
    by_ref = a.responses.create(input=refs, tools=TOOLS, store=False, max_output_tokens=6,
                                **GREEDY)
    assert by_ref.output_text == whole.output_text
    with pytest.raises(openai.NotFoundError) as err:  # another key's items are not found
        b.responses.create(input=refs, tools=TOOLS, **GREEDY)
    assert err.value.body == {"message": f"Item with id {ask.id!r} not found.",
                              "type": "invalid_request_error", "param": "input[0].id",
                              "code": "item_not_found"}


def test_store_false_is_not_kept(live, a) -> None:
    r = a.responses.create(input="forget me", store=False, max_output_tokens=3, **GREEDY)
    assert r.store is False
    with pytest.raises(openai.NotFoundError):
        a.responses.retrieve(r.id)
    with pytest.raises(openai.NotFoundError):
        a.responses.create(input="and?", previous_response_id=r.id, **GREEDY)
    got = raw(live, "POST", "/v1/responses", json={"input": "x", "background": True,
                                                   "store": False})
    assert got.status_code == 400 and got.json()["error"]["param"] == "background"


def test_store_evicts_the_least_recently_used(live, a) -> None:
    kept, live.state.store = live.state.store, ResponseStore(2)
    try:
        r1, r2 = (a.responses.create(input=t, max_output_tokens=2, **GREEDY) for t in "ab")
        a.responses.retrieve(r1.id)  # r1 used last: r2 goes first
        r3 = a.responses.create(input="c", max_output_tokens=2, **GREEDY)
        owner = owner_name(A)
        assert live.state.store.keys() == [(owner, r1.id), (owner, r3.id)]
        with pytest.raises(openai.NotFoundError):
            a.responses.retrieve(r2.id)
        r4 = a.responses.create(input="d", previous_response_id=r1.id, max_output_tokens=2,
                                **GREEDY)  # continuing r1 uses it: r3 goes
        assert live.state.store.keys() == [(owner, r1.id), (owner, r4.id)]
    finally:
        live.state.store = kept


def test_store_byte_budget_forgets_an_oversized_response_alone(live, a) -> None:
    """A response whose JSON is over the byte budget on its own (here already when admitted)
    is answered but not kept (a 404 after), and evicts nothing else."""
    kept, live.state.store = live.state.store, ResponseStore(1024, max_bytes=1300)
    try:
        small = a.responses.create(input="hi", max_output_tokens=2, **GREEDY)
        big = a.responses.create(input="word " * 150, max_output_tokens=2, **GREEDY)
        assert big.status == "incomplete" and big.store is True  # answered all the same
        assert live.state.store.keys() == [(owner_name(A), small.id)]
        assert live.state.store.nbytes == live.state.store.get((owner_name(A), small.id)).nbytes
        assert raw(live, "GET", f"/v1/responses/{big.id}").json() == not_found(big.id)
        with pytest.raises(openai.NotFoundError):
            a.responses.create(input="and?", previous_response_id=big.id, **GREEDY)
        assert a.responses.retrieve(small.id).output_text == small.output_text
    finally:
        live.state.store = kept


def test_store_off_keeps_the_stateless_400s(live, a) -> None:
    kept, live.state.store = live.state.store, ResponseStore(0)
    try:
        for field, value in (("previous_response_id", "resp_1"), ("store", True),
                             ("background", True)):
            got = raw(live, "POST", "/v1/responses", json={"input": "hi", field: value})
            assert got.status_code == 400, got.text
            assert (got.json()["error"]["param"], got.json()["error"]["code"]) == (
                field, "unsupported")
        got = raw(live, "POST", "/v1/responses",
                  json={"input": [{"type": "item_reference", "id": "msg_1"}]})
        assert got.status_code == 400 and got.json()["error"]["param"] == "input[0]"
        r = a.responses.create(input="hi", max_output_tokens=2, **GREEDY)
        assert r.store is False
        assert raw(live, "GET", f"/v1/responses/{r.id}").status_code == 404
    finally:
        live.state.store = kept


def test_background_completes_as_the_foreground(live, a) -> None:
    fg = a.responses.create(input="Tell me a story", max_output_tokens=12, store=False,
                            **GREEDY)
    bg = a.responses.create(input="Tell me a story", max_output_tokens=12, background=True,
                            **GREEDY)
    assert bg.status == "queued" and bg.background is True and bg.output == []
    done = finished(a, bg.id)
    assert (done.status, done.incomplete_details.reason) == ("incomplete", "max_output_tokens")
    assert done.output_text == fg.output_text and done.usage.output_tokens == 12
    live.wait_idle()


def test_background_cancel(live, a) -> None:
    forward = live.engine.runner.forward
    slow_down(live.llm, 0.01)
    try:
        bg = a.responses.create(input="Go on", max_output_tokens=200, background=True, **GREEDY)
        engine_id = f"{owner_name(A)}/{bg.id}"
        wait_for(lambda: (st := live.engine.requests.get(engine_id)) is not None
                 and st.seqs[0].num_output_tokens > 1)
        assert a.responses.retrieve(bg.id).status == "in_progress"
        cancelled = a.responses.cancel(bg.id)
    finally:
        live.engine.runner.forward = forward
    assert cancelled.status == "cancelled" and 1 < cancelled.usage.output_tokens < 200
    assert a.responses.retrieve(bg.id).model_dump() == cancelled.model_dump()
    live.wait_idle()
    gone = a.responses.create(input="Go on", max_output_tokens=200, background=True, **GREEDY)
    assert a.responses.delete(gone.id) is None  # a running one is aborted too
    live.wait_idle()
    with pytest.raises(openai.NotFoundError):
        a.responses.retrieve(gone.id)
    assert not live.state.background


def test_background_stream_outlives_its_client_and_resumes(live, a) -> None:
    fg = a.responses.create(input="Once upon", max_output_tokens=10, store=False, **GREEDY)
    body = {"model": "tiny", "input": "Once upon", "max_output_tokens": 10, "temperature": 0,
            "ignore_eos": True, "background": True, "stream": True}
    forward = live.engine.runner.forward
    slow_down(live.llm, 0.01)
    try:
        with httpx.stream("POST", live.url + "/v1/responses", json=body, timeout=30,
                          headers={"Authorization": f"Bearer {A}"}) as s:
            rid = s.headers["x-request-id"]
            for line in s.iter_lines():  # leave after the first delta
                if line == "event: response.output_text.delta":
                    break
    finally:
        live.engine.runner.forward = forward
    done = finished(a, rid)
    assert done.status == "incomplete" and done.output_text == fg.output_text
    events = list(a.responses.retrieve(rid, stream=True))
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") \
        == fg.output_text
    assert events[-1].type == "response.incomplete"
    assert events[-1].response.model_dump() == done.model_dump()
    later = list(a.responses.retrieve(rid, stream=True, starting_after=3))
    assert [e.model_dump() for e in later] == [e.model_dump() for e in events[4:]]
    plain = a.responses.create(input="x", max_output_tokens=2, **GREEDY)
    got = raw(live, "GET", f"/v1/responses/{plain.id}?stream=true")
    assert got.status_code == 400 and got.json()["error"]["param"] == "stream"
    live.wait_idle()


def test_many_background_responses_end_and_leave_nothing(live, a) -> None:
    """24 background responses at once, more than the 16 running slots (a third streamed):
    the 20 short ones end at their limit, the 4 long ones are cancelled while they run (two
    by /cancel, two by DELETE). Then the KV pool is full, no response is left running
    (tasks, ledger), and /metrics counts every one, end-to-end latency included (streamed
    and background responses were not observed)."""
    before = metric_counts(raw(live, "GET", "/metrics").text)

    async def run() -> tuple[list[httpx.Response], list[httpx.Response]]:
        async with httpx.AsyncClient(base_url=live.url, timeout=30,
                                     headers={"Authorization": f"Bearer {A}"}) as c:
            made = await asyncio.gather(*(c.post("/v1/responses", json={
                "input": f"story {i}", "max_output_tokens": 200 if i < 4 else 4,
                "ignore_eos": True, "background": True, "stream": i >= 4 and i % 3 == 0})
                for i in range(24)))
            ids = [r.headers["x-request-id"] for r in made]
            ends = await asyncio.gather(*(c.post(f"/v1/responses/{rid}/cancel") for rid in ids[:2]),
                                        *(c.delete(f"/v1/responses/{rid}") for rid in ids[2:4]))
            return made, ends

    forward = live.engine.runner.forward
    slow_down(live.llm, 0.01)
    try:
        made, ends = asyncio.run(run())
    finally:
        live.engine.runner.forward = forward
    ids = [r.headers["x-request-id"] for r in made]
    assert [e.json()["status"] for e in ends[:2]] == ["cancelled"] * 2
    assert [e.json() for e in ends[2:]] == [
        {"id": rid, "object": "response", "deleted": True} for rid in ids[2:4]]
    assert [r.status_code for r in made] == [200] * 24
    streamed = [r for i, r in enumerate(made) if i >= 4 and i % 3 == 0]
    for r in streamed:  # each tail ran to the response's last event
        last = [json.loads(ln[6:]) for ln in r.text.splitlines() if ln.startswith("data: ")][-1]
        assert (last["type"], last["response"]["status"]) == ("response.incomplete",
                                                              "incomplete")
    wait_for(lambda: not live.state.background, what="the background tasks' ends")
    live.wait_idle()
    assert not live.state.responses.running
    store, owner = live.state.store, owner_name(A)
    assert Counter(store.get((owner, rid)).body["status"] for rid in ids[:2] + ids[4:]) == {
        "incomplete": 20, "cancelled": 2}
    assert [store.get((owner, rid)) for rid in ids[2:4]] == [None, None]
    after = metric_counts(raw(live, "GET", "/metrics").text)
    assert {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)} == {
        "e2e": 24, "length": 20, "abort": 4}


def test_drain_cancels_background_work(llm) -> None:
    """A drain's end cancels every background response still running, streamed ones too
    (their tails end with the cancelled object), and leaves nothing running."""
    config = ServerConfig(served_model_name="tiny", shutdown_timeout=0.0)
    forward = llm.engine.runner.forward
    slow_down(llm, 0.01)
    tail: list[str] = []

    def follow(url: str) -> None:
        with httpx.stream("POST", url + "/v1/responses", timeout=30, json={
                "input": "Go on", "max_output_tokens": 200, "ignore_eos": True,
                "background": True, "stream": True, "request_id": "resp_tail"}) as s:
            tail.extend(ln for ln in s.iter_lines() if ln.startswith("data: "))

    try:
        with live_server(llm, config) as live:
            ids = [httpx.post(live.url + "/v1/responses", timeout=30, json={
                "input": f"Go on {i}", "max_output_tokens": 200, "ignore_eos": True,
                "background": True}).json()["id"] for i in range(3)] + ["resp_tail"]
            reader = threading.Thread(target=follow, args=(live.url,))
            reader.start()
            wait_for(lambda: all((st := llm.engine.requests.get(rid)) is not None
                                 and st.seqs[0].num_output_tokens > 1 for rid in ids))
            live.server.handle_exit(signal.SIGTERM, None)
            live.thread.join(10)
            reader.join(10)
            assert not live.thread.is_alive() and not reader.is_alive()
            assert [live.state.store.get(("anonymous", rid)).body["status"]
                    for rid in ids] == ["cancelled"] * 4
            assert json.loads(tail[-1][6:])["response"]["status"] == "cancelled"
            state = live.state
            assert not state.background and not state.responses.running and not state.live
            assert metric_counts(state.metrics.render().decode())["abort"] >= 4
    finally:
        llm.engine.runner.forward = forward
    wait_pool_full(llm)


def test_store_size_flag() -> None:
    p = argparse.ArgumentParser()
    add_server_args(p)
    p.add_argument("--model", default=None)
    assert server_config(p.parse_args([])).responses_store_size == 1024
    assert server_config(p.parse_args(["--responses-store-size", "0"])).responses_store_size == 0
    assert server_config(p.parse_args([])).responses_store_bytes == 256 * 1024 * 1024
    assert server_config(p.parse_args(["--responses-store-bytes", "4096"])
                         ).responses_store_bytes == 4096
    with pytest.raises(ValueError, match="responses_store_size"):
        ServerConfig(responses_store_size=-1)
    with pytest.raises(ValueError, match="responses_store_bytes must be >= 1"):
        ServerConfig(responses_store_bytes=0)


def test_store_lru_and_discard() -> None:
    store = ResponseStore(2)
    entries = {k: StoredResponse({"status": "completed", "output": []}, []) for k in "abc"}
    for k in "ab":
        store.put(("o", k), entries[k])
    assert store.get(("o", "a")) is entries["a"] and store.get(("p", "a")) is None
    store.put(("o", "c"), entries["c"])
    assert store.keys() == [("o", "a"), ("o", "c")]
    store.discard(("o", "a"), entries["b"])  # not the entry stored there: kept
    store.discard(("o", "c"), entries["c"])
    assert store.keys() == [("o", "a")] and not ResponseStore(0).enabled
    with pytest.raises(ValueError, match=">= 0"):
        ResponseStore(-1)


def _sized(text_len: int) -> StoredResponse:
    """A finished response of ``64 + text_len`` bytes: body 37, one input item 25 +
    ``text_len``, context 2."""
    return StoredResponse({"status": "completed", "output": []},
                          [{"id": "i", "text": "x" * text_len}])


def _grown(entry: StoredResponse, text_len: int) -> None:
    """A new body of ``49 + text_len`` bytes (was 37)."""
    entry.update({"status": "completed", "output": [{"text": "y" * text_len}]})


def test_store_byte_budget_evicts_least_recently_used() -> None:
    store = ResponseStore(10, max_bytes=250)
    a, b, c, d = _sized(36), _sized(36), _sized(36), _sized(200)
    assert (a.nbytes, d.nbytes) == (100, 264)
    store.put(("o", "a"), a)
    store.put(("o", "b"), b)
    store.get(("o", "a"))
    store.put(("o", "c"), c)  # 300 > 250: b, least recently used, goes
    assert (store.keys(), store.nbytes) == ([("o", "a"), ("o", "c")], 200)
    _grown(c, 20)  # c: 132, 232 in all: within the budget
    assert (c.nbytes, store.keys(), store.nbytes) == (132, [("o", "a"), ("o", "c")], 232)
    _grown(c, 60)  # c: 172, 272 in all: a goes
    assert (store.keys(), store.nbytes) == ([("o", "c")], 172)
    store.put(("o", "d"), d)  # over the budget on its own: d alone is not kept
    assert (store.keys(), store.nbytes, d.resized) == ([("o", "c")], 172, None)
    _grown(c, 140)  # c grows past the budget on its own: forgotten
    assert (c.nbytes, store.keys(), store.nbytes) == (252, [], 0)
    _grown(c, 0)  # a forgotten response's changes count no more
    assert store.nbytes == 0
    store.put(("o", "a"), a)
    store.put(("o", "a"), b)  # the same key replaced: only the new one counts
    assert (store.keys(), store.nbytes, a.resized) == ([("o", "a")], 100, None)
    assert store.pop(("o", "a")) is b and store.nbytes == 0
    with pytest.raises(ValueError, match="bytes must be >= 1"):
        ResponseStore(1, max_bytes=0)


def test_store_counts_a_streamed_response_s_events() -> None:
    store = ResponseStore(10, max_bytes=100)
    entry = StoredResponse({"status": "in_progress", "output": []}, [], events=[])
    store.put(("o", "e"), entry)
    assert (entry.nbytes, store.nbytes) == (43, 43)  # body 39, items 2, context 2
    entry.update(event={"type": "e"})  # 13 bytes an event
    assert (entry.nbytes, store.nbytes) == (56, 56)
    for _ in range(4):  # 108 > 100: the running response is forgotten
        entry.update(event={"type": "e"})
    assert (entry.nbytes, store.keys(), store.nbytes) == (108, [], 0)
