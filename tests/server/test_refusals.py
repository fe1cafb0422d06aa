"""A refused request touches nothing (issue 16, faults replayed from peers' bug reports):
a duplicate id is refused without killing the request or session that holds it, and
automatic ids never collide with ids clients chose."""

from __future__ import annotations

import asyncio
import itertools
import uuid

import pytest
from conftest import tiny_llm, wait_pool_full
from fastapi.testclient import TestClient

from thinkstream.engine.llm_engine import RequestError
from thinkstream.sampling_params import SamplingParams
from thinkstream.server.app import create_app
from thinkstream.server.config import ServerConfig
from thinkstream.streaming import sessions as sessions_module

OPEN = {"messages": [{"role": "system", "content": "Be brief."}], "temperature": 0,
        "max_tokens": 6, "ignore_eos": True}
DUPLICATE = {"error": {"message": "request_id is already in use by a running request or an "
                                  "open session",
                       "type": "invalid_request_error", "param": "request_id",
                       "code": "duplicate_request_id"}}


@pytest.fixture(scope="module")
def llm():
    llm = tiny_llm()
    yield llm
    llm.shutdown()


@pytest.fixture()
def client(llm):
    with TestClient(create_app(llm, ServerConfig(served_model_name="tiny"))) as c:
        yield c
    wait_pool_full(llm)


def _session_answer(client: TestClient, sid: str) -> str:
    ack = client.post(f"/v1/sessions/{sid}/append", json={"text": "What is the capital?", "seq": 0})
    assert ack.status_code == 200, ack.text
    done = client.post(f"/v1/sessions/{sid}/close", json={})
    assert done.status_code == 200, done.text
    return done.json()["choices"][0]["message"]["content"]


@pytest.mark.parametrize("stream", [False, True])
def test_completion_with_an_open_sessions_id_is_refused_and_the_session_lives(
        client: TestClient, stream: bool) -> None:
    """The report: a completion whose ``request_id`` is an open session's id got its 400,
    but the session died (it still said "open"; append answered "unknown or finished")."""
    reference = _session_answer(client, client.post("/v1/sessions", json=OPEN).json()["id"])
    sid = client.post("/v1/sessions", json=OPEN).json()["id"]
    r = client.post("/v1/completions", json={"prompt": "hi", "max_tokens": 4, "request_id": sid,
                                             "stream": stream})
    assert (r.status_code, r.json()) == (400, DUPLICATE)
    assert client.get(f"/v1/sessions/{sid}").json()["state"] == "open"
    assert _session_answer(client, sid) == reference


def test_completion_with_an_automatic_session_ids_old_form_leaves_session_opens_working(
        client: TestClient, llm) -> None:
    """The report: a client request id equal to the next automatic session id ("sess-0")
    made another client's id-less session open fail. Automatic ids are random and skip ids
    in use, so a client cannot take one in advance."""
    with client.stream("POST", "/v1/completions", json={
            "prompt": "hi", "max_tokens": 40, "ignore_eos": True, "stream": True,
            "request_id": "sess-0"}) as held:
        assert held.status_code == 200
        r = client.post("/v1/sessions", json=OPEN)
        assert r.status_code == 200, r.text
        assert r.json()["id"].startswith("sess-") and r.json()["id"] != "sess-0"
        for _ in held.iter_lines():
            pass
    assert client.delete(f"/v1/sessions/{r.json()['id']}").status_code == 200


def test_automatic_session_id_skips_one_in_use(llm, monkeypatch) -> None:
    """Even a random id can be taken (a client chose it): the next one is drawn."""
    taken, fresh = uuid.UUID(int=1), uuid.UUID(int=2)
    draws = itertools.chain([taken, taken, fresh], iter(uuid.uuid4, None))
    monkeypatch.setattr(sessions_module.uuid, "uuid4", lambda: next(draws))
    params = SamplingParams(max_tokens=40, temperature=0, ignore_eos=True)

    async def run() -> tuple[str, list[int]]:
        first = llm.generate([5, 6, 7], params, request_id=f"sess-{taken.hex}")
        await first.__anext__()  # running now
        info = await llm.open_session(prompt=[5, 6], params=params)
        await llm.abort_session(info.session_id)
        rest = [o async for o in first]
        return info.session_id, rest[-1].outputs[0].token_ids

    sid, ids = asyncio.run(run())
    assert sid == f"sess-{fresh.hex}" and len(ids) == 40
    wait_pool_full(llm)


def test_second_generate_with_the_same_id_leaves_the_first_stream_whole(llm) -> None:
    """The report: the second ``AsyncLLM.generate`` with a running request's id raised, and
    the first stream never finished (the refused call took its stream slot and aborted it
    on clean-up)."""
    params = SamplingParams(max_tokens=12, temperature=0, ignore_eos=True)

    async def run() -> tuple[list[int], str]:
        first = llm.generate([5, 6, 7], params, request_id="dup")
        await first.__anext__()
        with pytest.raises(RequestError) as refused:
            async for _ in llm.generate([8, 9], params, request_id="dup"):
                pass
        rest = [o async for o in first]
        return rest[-1].outputs[0].token_ids, str(refused.value)

    async def reference() -> list[int]:
        return [o async for o in llm.generate([5, 6, 7], params)][-1].outputs[0].token_ids

    ids, message = asyncio.run(asyncio.wait_for(run(), 30))
    assert message == "request_id: 'dup' is already in use"
    assert ids == asyncio.run(reference()) and len(ids) == 12
    wait_pool_full(llm)
    assert not llm._streams


def test_generate_with_an_open_sessions_id_leaves_the_session_and_its_listener(llm) -> None:
    """The engine-level form of the first report: the refused request's error went to the
    session's listeners and its clean-up aborted the session by id."""
    params = SamplingParams(max_tokens=4, temperature=0, ignore_eos=True)

    async def run() -> tuple[str, list[int]]:
        await llm.open_session(prompt=[5, 6, 7], params=params, session_id="s-open")
        events = llm.session_events("s-open")
        await events.__anext__()  # subscribed
        with pytest.raises(RequestError):
            async for _ in llm.generate([8, 9], params, request_id="s-open"):
                pass
        await llm.append_session("s-open", [8])
        answer = [o async for o in await llm.close_session("s-open")]
        heard = [o async for o in events]
        return (await llm.session_info("s-open")).state, answer[-1].outputs[0].token_ids, heard

    state, ids, heard = asyncio.run(asyncio.wait_for(run(), 30))
    assert state == "finished" and len(ids) == 4
    assert heard[-1].finished and heard[-1].outputs[0].token_ids == ids
    wait_pool_full(llm)


def test_refused_close_keeps_the_answering_stream(llm) -> None:
    """A second close of a session that is answering is refused; the first close's stream
    still receives every token (the refusal used to drop its stream slot)."""
    params = SamplingParams(max_tokens=10, temperature=0, ignore_eos=True)

    async def run() -> list[int]:
        await llm.open_session(prompt=[5, 6, 7], params=params, session_id="s-close")
        stream = await llm.close_session("s-close")
        with pytest.raises(Exception, match="closed"):
            await llm.close_session("s-close")
        return [o async for o in stream][-1].outputs[0].token_ids

    assert len(asyncio.run(asyncio.wait_for(run(), 30))) == 10
    wait_pool_full(llm)
