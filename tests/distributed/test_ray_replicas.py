"""Two replicas of the tiny model on a local Ray instance behind the router: every call
of a session reaches the replica that opened it, prompts sharing their first KV blocks
reach one replica (and hit its prefix cache), metrics come per replica, a full house is
a 429, a session WebSocket is relayed, and a replica killed under load takes only its own
requests and sessions (410 naming it) while the other keeps serving; every request is
answered or cleanly failed, none hangs."""

from __future__ import annotations

import json
import os
import re
import socket
import threading
import time

import httpx
import pytest
from helpers.tiny import tiny_checkpoint

from thinkstream.config import EngineConfig
from thinkstream.server.config import ServerConfig

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.slow  # a local Ray instance and two actor processes: ~20-40 s

ENGINE = EngineConfig(block_size=4, num_blocks=512, max_num_seqs=16, max_num_batched_tokens=256,
                      num_threads=1)
SHARED = "The quick brown fox jumps over the lazy dog. The quick brown fox jumps. "


@pytest.fixture(scope="module")
def cluster():
    import uvicorn

    from thinkstream.distributed.replicas.launch import start_replicas

    # the suite's other servers share this machine's memory: Ray's OOM monitor must not
    # kill the replicas for memory it did not take (it did, under a loaded 24 GiB box)
    os.environ.setdefault("RAY_memory_monitor_refresh_ms", "0")
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    reps = start_replicas(2, None, ENGINE, ServerConfig(served_model_name="tiny"),
                          checkpoint=tiny_checkpoint())
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(reps.app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    with httpx.Client(base_url=f"http://127.0.0.1:{sock.getsockname()[1]}", timeout=60) as c:
        yield reps, c
    server.should_exit = True
    thread.join(10)
    reps.shutdown()
    ray.shutdown()


def _replica(r: httpx.Response) -> int:
    return int(r.headers["x-thinkstream-replica"])


def _session(c: httpx.Client, parts: list[str]) -> tuple[str, list[int]]:
    r = c.post("/v1/sessions", json={"model": "tiny", "messages": [], "max_tokens": 4})
    assert r.status_code == 200, r.text
    sid, seen = r.json()["id"], [_replica(r)]
    for i, text in enumerate(parts):
        r = c.post(f"/v1/sessions/{sid}/append", json={"text": text, "seq": i})
        assert r.status_code == 200, r.text
        seen.append(_replica(r))
    return sid, seen


def test_sessions_stay_on_their_replica(cluster) -> None:
    _, c = cluster
    opened = [_session(c, ["Streaming input ", "arrives in chunks"]) for _ in range(6)]
    for sid, seen in opened:
        r = c.post(f"/v1/sessions/{sid}/close", json={})
        assert r.status_code == 200 and r.json()["object"] == "chat.completion"
        seen.append(_replica(r))
        assert len(set(seen)) == 1, seen  # 100% of the session's calls on one replica
    assert {seen[0] for _, seen in opened} == {0, 1}  # sessions spread over both
    r = c.get(f"/v1/sessions/{opened[0][0]}")
    assert r.status_code == 404  # closed: the router forgot it


def test_shared_prefix_goes_to_one_replica(cluster) -> None:
    _, c = cluster
    replicas = set()
    for tail in ("Paris", "numbers 0123", "café", "symbols #$%"):
        r = c.post("/v1/completions", json={"model": "tiny", "prompt": SHARED + tail,
                                            "max_tokens": 3})
        assert r.status_code == 200
        replicas.add(_replica(r))
    assert len(replicas) == 1
    (owner,) = replicas
    metrics = c.get("/metrics").text
    hit = re.search(rf'thinkstream_prefix_cache_hit_rate{{replica="{owner}",[^}}]*}} (\S+)', metrics)
    assert hit and float(hit.group(1)) > 0  # the later prompts reused the first one's blocks
    for i in (0, 1):
        assert f'thinkstream_kv_blocks_total{{replica="{i}"' in metrics
        assert f'thinkstream_router_replica_alive{{replica="{i}"}} 1' in metrics


def test_session_websocket_is_relayed(cluster) -> None:
    from websockets.sync.client import connect

    _, c = cluster
    url = str(c.base_url).replace("http", "ws") + "/v1/sessions/ws"
    with connect(url) as ws:
        ws.send(json.dumps({"type": "open", "messages": [], "max_tokens": 4}))
        assert json.loads(ws.recv())["type"] == "opened"
        held = [r["sessions"] for r in c.get("/health").json()["replicas"]]
        assert sorted(held) == [0, 1]  # the connection is pinned to one replica
        ws.send(json.dumps({"type": "append", "text": "Streaming input ", "seq": 0}))
        assert json.loads(ws.recv())["type"] == "ack"
        ws.send(b"arrives in chunks")  # a binary frame: raw UTF-8 appended
        assert json.loads(ws.recv())["type"] == "ack"
        ws.send(json.dumps({"type": "close"}))
        kinds = []
        while not kinds or kinds[-1] == "chunk":
            kinds.append(json.loads(ws.recv())["type"])
        assert kinds[-1] == "done" and kinds.count("chunk") >= 1
    deadline = time.monotonic() + 10  # the router lets go once both sockets closed
    while [r["sessions"] for r in c.get("/health").json()["replicas"]] != [0, 0]:
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_every_replica_at_capacity_is_429(cluster) -> None:
    reps, c = cluster
    cap, reps.router.max_load = reps.router.max_load, 0
    try:
        r = c.post("/v1/completions", json={"model": "tiny", "prompt": "Hi", "max_tokens": 2})
        assert r.status_code == 429
        assert r.json()["error"]["code"] == "replicas_busy"
        r = c.post("/v1/sessions", json={"model": "tiny", "messages": []})
        assert r.status_code == 429
    finally:
        reps.router.max_load = cap


def _request(c: httpx.Client, i: int, results: list) -> None:
    body = {"model": "tiny", "prompt": f"{i} The quick brown fox", "max_tokens": 150,
            "ignore_eos": True}
    try:
        if i % 2:
            r = c.post("/v1/completions", json=body)
            results.append(("plain", r.status_code, _replica(r) if r.status_code != 503 else -1,
                            r.json()))
        else:
            with c.stream("POST", "/v1/completions", json={**body, "stream": True}) as s:
                if s.status_code != 200:  # failed before its first byte: a JSON error
                    s.read()
                    results.append(("plain", s.status_code, _replica(s), s.json()))
                    return
                lines = [ln for ln in s.iter_lines() if ln.startswith("data: ")]
                results.append(("stream", s.status_code, _replica(s), lines))
    except Exception as exc:  # a hang or a broken connection fails the test below
        results.append(("exception", 0, -1, repr(exc)))


def test_killed_replica_takes_only_its_own_work(cluster) -> None:
    reps, c = cluster
    sessions = [_session(c, ["hello "]) for _ in range(4)]
    on = {i: [sid for sid, seen in sessions if seen[0] == i] for i in (0, 1)}
    assert on[0] and on[1]
    results: list = []
    threads = [threading.Thread(target=_request, args=(c, i, results)) for i in range(16)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 30  # kill while replica 0 has requests in flight
    while reps.router.replicas[0].in_flight < 3:
        assert time.monotonic() < deadline
        time.sleep(0.002)
    reps.kill(0)
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads) and len(results) == 16
    for kind, status, replica, payload in results:
        assert kind != "exception", payload
        if kind == "plain" and status == 200:
            assert len(payload["choices"][0]["text"]) > 0
        elif kind == "plain":  # cleanly failed: an OpenAI-style error naming the replica
            assert status in (502, 503) and payload["error"]["code"] in ("replica_failed", "no_replica")
        else:
            assert status == 200 and payload[-1] == "data: [DONE]"
            last = json.loads(payload[-2][6:])
            assert "error" in last or last["choices"][0]["finish_reason"] == "length"
            if "error" in last:
                assert replica == 0
    assert all(s == 200 for k, s, rep, _ in results if rep == 1)  # the other replica's work
    failed = [r for r in results if r[1] != 200 or (r[0] == "stream" and "error" in r[3][-2])]
    assert failed  # the kill did land while replica 0 had requests in flight
    for sid in on[0]:
        r = c.post(f"/v1/sessions/{sid}/append", json={"text": "more", "seq": 1})
        assert r.status_code == 410
        err = r.json()["error"]
        assert err["type"] == "session_lost" and "replica 0" in err["message"]
    for sid in on[1]:
        r = c.post(f"/v1/sessions/{sid}/close", json={"text": "more"})
        assert r.status_code == 200 and _replica(r) == 1
    r = c.post("/v1/completions", json={"model": "tiny", "prompt": SHARED, "max_tokens": 3})
    assert r.status_code == 200 and _replica(r) == 1
    health = c.get("/health")
    assert health.status_code == 200 and health.json()["status"] == "degraded"
    assert 'thinkstream_router_replica_alive{replica="0"} 0' in c.get("/metrics").text
