"""A tensor-parallel rank killed in the middle of a step: every request in flight ends
with an error, ``/health`` turns 503 and new requests are refused, long before the
collective timeout (the dead peer's closed sockets fail the step; the watchdog marks the
group broken). One that dies while the engine idles turns it dead too. Never a hang."""

from __future__ import annotations

import json
import threading
import time

import httpx
from conftest import TINY_ENGINE, live_server
from helpers.tiny import tiny_checkpoint

from thinkstream.async_llm import AsyncLLM
from thinkstream.config import EngineConfig
from thinkstream.distributed.comm import RankFailedError
from thinkstream.engine.llm_engine import LLMEngine

LONG = {"model": "tiny", "prompt": "The quick brown fox", "max_tokens": 400,
        "ignore_eos": True, "temperature": 0}
TIMEOUT_S = 60.0


def test_rank_killed_mid_step_fails_requests_not_hangs() -> None:
    cfg = EngineConfig(**TINY_ENGINE, tensor_parallel_size=2, num_threads=1,
                       collective_timeout_s=TIMEOUT_S)
    engine = LLMEngine(config=cfg, checkpoint=tiny_checkpoint())
    runner, worker = engine.runner, engine.runner.procs[0]
    execute, armed, killed_at = runner.execute, threading.Event(), []

    def kill_then_execute(batch):  # rank 1 dies after this step has started on rank 0
        time.sleep(0.005)
        if armed.is_set() and not killed_at:
            worker.kill()
            worker.join()
            killed_at.append(time.monotonic())
        return execute(batch)

    runner.execute = kill_then_execute
    llm = AsyncLLM(engine)
    with live_server(llm) as live, httpx.Client(base_url=live.url, timeout=30) as c:
        assert c.get("/health").status_code == 200
        results = {}
        t = threading.Thread(target=lambda: results.setdefault(
            "plain", c.post("/v1/completions", json=LONG)))
        t.start()
        with c.stream("POST", "/v1/completions", json={**LONG, "stream": True}) as s:
            lines = []
            for line in s.iter_lines():
                if line.startswith("data: "):
                    lines.append(line)
                    if len(lines) == 3:
                        armed.set()
        t.join(30)
        assert killed_at and time.monotonic() - killed_at[0] < TIMEOUT_S / 2
        assert lines[-1] == "data: [DONE]"
        err = json.loads(lines[-2][6:])["error"]
        assert err["type"] == "server_error" and "tensor-parallel" in err["message"]
        assert results["plain"].status_code == 500
        assert "tensor-parallel" in results["plain"].json()["error"]["message"]
        assert c.get("/health").status_code == 503
        assert c.post("/v1/completions", json=LONG).status_code == 503
        assert not live.engine.requests
        assert isinstance(llm.dead, RankFailedError) and "rank" in str(llm.dead)
    llm.shutdown()
    engine.close()


def test_rank_dying_while_idle_turns_the_engine_dead() -> None:
    cfg = EngineConfig(**TINY_ENGINE, tensor_parallel_size=2, num_threads=1,
                       collective_timeout_s=TIMEOUT_S)
    engine = LLMEngine(config=cfg, checkpoint=tiny_checkpoint())
    llm = AsyncLLM(engine)
    engine.runner.procs[0].kill()  # no request in flight: the watchdog notices
    deadline = time.monotonic() + 10
    while llm.dead is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert isinstance(llm.dead, RankFailedError) and "rank 1" in str(llm.dead)
    llm.shutdown()
    engine.close()
