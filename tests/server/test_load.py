"""A bounded load test: 300 requests at concurrency 32, a fifth of them cancelled at random
moments (stream dropped, or ``/v1/requests/{id}/cancel``). Every other request completes
with a finish_reason, every stream ends with [DONE], and the block pool returns to full."""

from __future__ import annotations

import asyncio
import json
import random
import time

import httpx
import pytest
from conftest import live_server, tiny_llm

from thinkstream.server.config import ServerConfig

TOTAL, CONCURRENCY, CANCEL_FRACTION = 300, 32, 0.2


async def _stream(c: httpx.AsyncClient, rid: str, body: dict, drop_after: int | None) -> dict:
    url = "/v1/chat/completions" if "messages" in body else "/v1/completions"
    lines, reasons = [], []
    async with c.stream("POST", url, json={**body, "stream": True},
                        headers={"X-Request-Id": rid}) as r:
        assert r.status_code == 200, await r.aread()
        async for line in r.aiter_lines():
            if not line.startswith("data: "):
                continue
            lines.append(line)
            if line != "data: [DONE]":
                chunk = json.loads(line[6:])
                assert "error" not in chunk, chunk
                reasons += [ch["finish_reason"] for ch in chunk["choices"] if ch["finish_reason"]]
            if drop_after is not None and len(lines) >= drop_after:
                return {"cancelled": True}
    return {"cancelled": False, "done": lines[-1] == "data: [DONE]", "reasons": reasons}


async def _plain(c: httpx.AsyncClient, rid: str, body: dict, cancel_after: float | None) -> dict:
    url = "/v1/chat/completions" if "messages" in body else "/v1/completions"
    task = asyncio.ensure_future(c.post(url, json=body, headers={"X-Request-Id": rid}))
    if cancel_after is not None:
        await asyncio.sleep(cancel_after)
        await c.post(f"/v1/requests/{rid}/cancel")  # 404 if it already finished: fine
    r = await task
    assert r.status_code == 200, r.text
    reasons = [ch["finish_reason"] for ch in r.json()["choices"]]
    return {"cancelled": cancel_after is not None, "done": True, "reasons": reasons}


def _body(rng: random.Random) -> dict:
    common = {"model": "tiny", "max_tokens": rng.randint(1, 12), "temperature": rng.random(),
              "seed": rng.randint(0, 1000), "n": rng.choice([1, 1, 1, 2])}
    if rng.random() < 0.5:
        return {**common, "prompt": " ".join(rng.choice(["fox", "dog", "Paris", "42"])
                                             for _ in range(rng.randint(1, 30)))}
    return {**common, "messages": [{"role": "user", "content": "hello " * rng.randint(1, 20)}]}


async def _run_load(url: str) -> list[dict]:
    rng = random.Random(1234)
    sem = asyncio.Semaphore(CONCURRENCY)
    limits = httpx.Limits(max_connections=CONCURRENCY + 8)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as c:
        async def one(i: int) -> dict:
            body, cancel, streaming = _body(rng), rng.random() < CANCEL_FRACTION, rng.random() < 0.6
            async with sem:
                if streaming:
                    return await _stream(c, f"load-{i}", body,
                                         rng.randint(1, 6) if cancel else None)
                return await _plain(c, f"load-{i}", body, rng.random() * 0.05 if cancel else None)

        return await asyncio.gather(*(one(i) for i in range(TOTAL)))


@pytest.fixture(scope="module")
def load_server():
    llm = tiny_llm(max_num_seqs=16)
    with live_server(llm, ServerConfig(served_model_name="tiny", max_queue=512)) as live:
        yield live
    llm.shutdown()


def test_load_with_random_cancels(load_server) -> None:
    start = time.monotonic()
    results = asyncio.run(_run_load(load_server.url))
    elapsed = time.monotonic() - start
    assert elapsed < 60, elapsed
    completed = [r for r in results if not r["cancelled"]]
    assert len(results) == TOTAL and len(completed) >= TOTAL // 2
    for r in completed:
        assert r["done"] and r["reasons"] and all(x in ("stop", "length") for x in r["reasons"])
    for r in results:
        if r["cancelled"] and "reasons" in r:  # a plain request cancelled in flight
            assert all(x in ("stop", "length", "abort") for x in r["reasons"])
    load_server.wait_idle(timeout=20)
    usage = load_server.engine.usage()
    assert usage.kv_blocks_used == 0 and usage.num_running == usage.num_waiting == 0
