"""Several API keys: each key owns its sessions, request ids and per-key limits (another
key cannot see, append to, close, cancel or collide with them); without keys every client is
one anonymous owner, whatever bearer token it sends; keys from repeated flags and files."""

from __future__ import annotations

import argparse
import json
import threading

import httpx
import pytest
from conftest import live_server, slow_down, tiny_llm, wait_for, wait_pool_full
from fastapi.testclient import TestClient
from websockets.sync.client import connect

from thinkstream.server.app import create_app
from thinkstream.server.auth import owner_name
from thinkstream.server.cli import add_server_args, server_config
from thinkstream.server.config import ServerConfig
from thinkstream.server.session_hub import SessionLimits

A, B = "sk-key-a-0123", "sk-key-b-4567"
AUTH_A, AUTH_B = {"Authorization": f"Bearer {A}"}, {"Authorization": f"Bearer {B}"}
OPEN = {"prompt": "The quick brown fox", "max_tokens": 4, "temperature": 0}
LONG = {"prompt": "The quick brown fox", "max_tokens": 400, "ignore_eos": True,
        "temperature": 0, "stream": True}
NOT_FOUND = {"message": None, "type": "not_found_error", "param": "session_id",
             "code": "session_not_found"}


@pytest.fixture(scope="module")
def llm():
    llm = tiny_llm()
    yield llm
    llm.shutdown()


def test_two_keys_own_their_sessions(llm) -> None:
    cfg = ServerConfig(served_model_name="tiny", api_keys=(A, B))
    with TestClient(create_app(llm, cfg)) as c:
        sid = c.post("/v1/sessions", headers=AUTH_A, json=OPEN).json()["id"]
        attempts = [c.get(f"/v1/sessions/{sid}", headers=AUTH_B),
                    c.post(f"/v1/sessions/{sid}/append", headers=AUTH_B, json={"text": " x"}),
                    c.put(f"/v1/sessions/{sid}/input", headers=AUTH_B, json={"text": "x"}),
                    c.get(f"/v1/sessions/{sid}/events", headers=AUTH_B),
                    c.post(f"/v1/sessions/{sid}/close", headers=AUTH_B, json={}),
                    c.delete(f"/v1/sessions/{sid}", headers=AUTH_B)]
        for r in attempts:
            assert r.status_code == 404, r.text
            assert r.json()["error"] == {**NOT_FOUND, "message": f"session {sid!r} not found"}
        info = c.get(f"/v1/sessions/{sid}", headers=AUTH_A).json()
        assert info["state"] == "open" and info["next_seq"] == 0  # B changed nothing
        ack = c.post(f"/v1/sessions/{sid}/append", headers=AUTH_A, json={"text": " jumps"})
        assert ack.status_code == 200 and ack.json()["seq"] == 0
        done = c.post(f"/v1/sessions/{sid}/close", headers=AUTH_A, json={})
        assert done.status_code == 200 and done.json()["choices"][0]["finish_reason"] == "length"
    wait_pool_full(llm)


def test_per_key_session_limit(llm) -> None:
    cfg = ServerConfig(served_model_name="tiny", api_keys=(A, B))
    with TestClient(create_app(llm, cfg, SessionLimits(max_sessions_per_key=2))) as c:
        for _ in range(2):
            assert c.post("/v1/sessions", headers=AUTH_A, json=OPEN).status_code == 200
        third = c.post("/v1/sessions", headers=AUTH_A, json=OPEN)
        assert third.status_code == 429 and third.json()["error"]["code"] == "too_many_sessions"
        assert c.post("/v1/sessions", headers=AUTH_B, json=OPEN).status_code == 200
        for sid, owned in list(c.app.state.session_hub._owned.items()):
            auth = AUTH_A if owned.key == owner_name(A) else AUTH_B
            assert c.delete(f"/v1/sessions/{sid}", headers=auth).status_code == 200
    wait_pool_full(llm)


def test_rotating_bearer_tokens_are_one_identity_without_keys(llm) -> None:
    """The issue's input: without keys, 20 opens with 20 made-up tokens; the per-key limit
    (16) holds, since a token nobody configured is no identity."""
    with TestClient(create_app(llm, ServerConfig(served_model_name="tiny"))) as c:
        codes = [c.post("/v1/sessions", json=OPEN,
                        headers={"Authorization": f"Bearer rotating-{i}"}).status_code
                 for i in range(20)]
        assert codes == [200] * 16 + [429] * 4
        sids = list(c.app.state.session_hub._owned)
        for i, sid in enumerate(sids):  # any token reaches them: one shared owner
            r = c.delete(f"/v1/sessions/{sid}", headers={"Authorization": f"Bearer other-{i}"})
            assert r.status_code == 200
    wait_pool_full(llm)


class _Stream(threading.Thread):
    def __init__(self, url: str, auth: dict, rid: str) -> None:
        super().__init__(daemon=True)
        self.url, self.auth, self.rid = url, auth, rid
        self.finish: list[str] = []
        self.ids: set[str] = set()

    def run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=60) as c, c.stream(
                "POST", "/v1/completions", json=LONG,
                headers={**self.auth, "X-Request-Id": self.rid}) as s:
            assert s.status_code == 200
            for line in s.iter_lines():
                if line.startswith("data: {"):
                    chunk = json.loads(line[6:])
                    self.ids.add(chunk["id"])
                    self.finish += [ch["finish_reason"] for ch in chunk["choices"]
                                    if ch["finish_reason"]]


def test_request_ids_are_per_key() -> None:
    """Both keys use the id "same": no collision, the client sees its own id, and a cancel
    by B reaches only B's request."""
    llm = tiny_llm()
    slow_down(llm, 0.01)
    cfg = ServerConfig(served_model_name="tiny", api_keys=(A, B))
    with live_server(llm, cfg) as live:
        a, b = _Stream(live.url, AUTH_A, "same"), _Stream(live.url, AUTH_B, "same")
        a.start()
        b.start()
        ids = {f"{owner_name(A)}/same", f"{owner_name(B)}/same"}
        wait_for(lambda: ids <= set(live.engine.requests), what="both requests")
        assert httpx.post(f"{live.url}/v1/requests/same/cancel").status_code == 401
        r = httpx.post(f"{live.url}/v1/requests/same/cancel", headers=AUTH_B)
        assert r.status_code == 200 and r.json() == {"id": "same", "object": "request.cancelled",
                                                     "cancelled": True}
        b.join(30)
        assert b.finish[-1] == "abort" and b.ids == {"same"}
        assert f"{owner_name(A)}/same" in live.engine.requests  # A's goes on
        r = httpx.post(f"{live.url}/v1/requests/same/cancel", headers=AUTH_B)
        assert r.status_code == 404 and r.json()["error"]["code"] == "request_not_found"
        assert httpx.post(f"{live.url}/v1/requests/same/cancel",
                          headers=AUTH_A).status_code == 200
        a.join(30)
        assert a.finish[-1] == "abort" and a.ids == {"same"}
        live.wait_idle()
    llm.shutdown()


def test_websocket_sessions_belong_to_the_key(llm) -> None:
    cfg = ServerConfig(served_model_name="tiny", api_keys=(A, B))
    with live_server(llm, cfg) as live:
        url = live.url.replace("http", "ws") + "/v1/sessions/ws"
        with connect(f"{url}?api_key={A}") as ws:
            ws.send(json.dumps({"type": "open", **OPEN}))
            sid = json.loads(ws.recv())["session"]["id"]
            assert httpx.get(f"{live.url}/v1/sessions/{sid}", headers=AUTH_B).status_code == 404
            assert httpx.get(f"{live.url}/v1/sessions/{sid}", headers=AUTH_A).status_code == 200
        with connect(url, additional_headers={"X-API-Key": "sk-wrong"}) as ws:
            err = json.loads(ws.recv())
        assert err["error"]["code"] == "invalid_api_key"
    wait_pool_full(llm)


def test_keys_from_flags_and_files(tmp_path, monkeypatch) -> None:
    keyfile = tmp_path / "keys.txt"
    keyfile.write_text("# team keys\nsk-file-1\n\n  sk-file-2  \n")
    p = argparse.ArgumentParser()
    p.add_argument("model", nargs="?")
    add_server_args(p)
    monkeypatch.setenv("THINKSTREAM_API_KEY", "sk-env")
    cfg = server_config(p.parse_args(["--api-key", "sk-1", "--api-key", "sk-2",
                                      "--api-key-file", str(keyfile)]))
    assert cfg.api_keys == ("sk-1", "sk-2", "sk-file-1", "sk-file-2")
    assert server_config(p.parse_args([])).api_keys == ("sk-env",)
    monkeypatch.delenv("THINKSTREAM_API_KEY")
    assert server_config(p.parse_args([])).api_keys == ()
    with pytest.raises(ValueError, match="cannot read"):
        server_config(p.parse_args(["--api-key-file", str(tmp_path / "missing")]))
    with pytest.raises(ValueError, match="api_keys"):
        ServerConfig(api_keys=("",))
