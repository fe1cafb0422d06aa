"""Fixtures for server tests: a tiny-model engine behind a live uvicorn on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from helpers.tiny import tiny_checkpoint

from thinkstream.async_llm import AsyncLLM
from thinkstream.config import EngineConfig
from thinkstream.engine.llm_engine import LLMEngine
from thinkstream.server.app import create_app
from thinkstream.server.config import ServerConfig
from thinkstream.server.lifecycle import DrainingServer, uvicorn_config

TINY_ENGINE = dict(block_size=4, num_blocks=512, max_num_seqs=16, max_num_batched_tokens=256)


@dataclass
class Live:
    url: str
    app: object
    llm: AsyncLLM
    server: DrainingServer
    thread: threading.Thread

    @property
    def engine(self) -> LLMEngine:
        return self.llm.engine

    @property
    def state(self):
        return self.app.state.server

    def wait_idle(self, timeout: float = 10.0) -> None:
        """Until no request is left in the server or the engine, then check the pool."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.state.live and not self.engine.requests \
                    and self.engine.kv.num_free_blocks == self.engine.kv.num_blocks:
                break
            time.sleep(0.02)
        assert not self.state.live, list(self.state.live)
        assert not self.engine.requests, list(self.engine.requests)
        assert self.state.admission.in_flight == 0
        self.engine.check_integrity()
        assert self.engine.kv.num_free_blocks == self.engine.kv.num_blocks


def final_output(llm: AsyncLLM, prompt, params):
    """The last output of one request run through ``llm`` (from a test thread)."""
    async def run():
        outputs = [out async for out in llm.generate(prompt, params)]
        return outputs[-1]

    return asyncio.run(run())


def tiny_llm(**engine_overrides) -> AsyncLLM:
    cfg = EngineConfig(**{**TINY_ENGINE, **engine_overrides})
    return AsyncLLM(LLMEngine(config=cfg, checkpoint=tiny_checkpoint()))


@contextlib.contextmanager
def live_server(llm: AsyncLLM, config: ServerConfig | None = None,
                session_limits=None) -> Iterator[Live]:
    app = create_app(llm, config or ServerConfig(served_model_name="tiny"), session_limits)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    uv = uvicorn_config(app, app.state.server.config, log_level="warning",
                        timeout_graceful_shutdown=2)
    server = DrainingServer(uv, app.state.server, app.state.server.config.shutdown_timeout)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.01)
    try:
        yield Live(f"http://127.0.0.1:{port}", app, llm, server, thread)
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


@pytest.fixture(scope="module")
def tiny_server() -> Iterator[Live]:
    llm = tiny_llm()
    with live_server(llm) as live:
        yield live
    llm.shutdown()


def wait_pool_full(llm, timeout: float = 20.0) -> None:
    """Wait until the engine has no requests and every KV block is free, then check it."""
    engine = llm.engine
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not engine.requests and engine.kv.num_free_blocks == engine.kv.num_blocks:
            break
        time.sleep(0.02)
    assert not engine.requests, list(engine.requests)
    engine.check_integrity()
    assert engine.kv.num_free_blocks == engine.kv.num_blocks


def slow_down(llm, delay: float) -> None:
    """Make every engine step take at least ``delay`` s (test-only wrapper)."""
    forward = llm.engine.runner.forward

    def slow(*args, **kwargs):
        time.sleep(delay)
        return forward(*args, **kwargs)

    llm.engine.runner.forward = slow


def wait_for(cond, timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)


def post_response(url: str, body: dict, request_id: str, into: list) -> None:
    """POST ``body`` to ``/v1/responses`` as ``request_id``; append the response object (or,
    streamed, every SSE event) to ``into``. For a thread that a test cancels under."""
    with httpx.Client(base_url=url, timeout=30) as c:
        headers = {"X-Request-Id": request_id}
        if not body.get("stream"):
            into.append(c.post("/v1/responses", json=body, headers=headers).json())
            return
        with c.stream("POST", "/v1/responses", json=body, headers=headers) as s:
            into.extend(json.loads(ln[6:]) for ln in s.iter_lines() if ln.startswith("data: "))


@dataclass
class Proc:
    process: subprocess.Popen
    url: str
    log: Path

    def text(self) -> str:
        return self.log.read_text(errors="replace")


@contextlib.contextmanager
def server_process(tmp_path: Path, fields: dict | None = None,
                   step_delay: float = 0.0) -> Iterator[Proc]:
    """``serve_tiny.py`` as a child process (stdout and stderr into one log file); killed
    on the way out if still running."""
    import httpx

    log = tmp_path / "server.log"
    script = Path(__file__).with_name("serve_tiny.py")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, str(script), json.dumps(fields or {}),
                                 str(step_delay)], stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + 120
        port = None
        while port is None:
            assert proc.poll() is None, log.read_text(errors="replace")
            assert time.monotonic() < deadline, "the server process did not start"
            for line in log.read_text(errors="replace").splitlines():
                if line.startswith("PORT "):
                    port = int(line.split()[1])
            time.sleep(0.05)
        url = f"http://127.0.0.1:{port}"
        while True:
            assert proc.poll() is None, log.read_text(errors="replace")
            assert time.monotonic() < deadline, "the server process does not answer"
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            time.sleep(0.05)
        yield Proc(proc, url, log)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


@pytest.fixture(scope="session")
def real_server() -> Iterator[Live]:
    """The default model (SmolLM2-135M) behind a live server, shared by every real-model
    server test (loaded once per run)."""
    llm = AsyncLLM(LLMEngine(config=EngineConfig(max_model_len=2048, max_num_seqs=32)))
    with live_server(llm, ServerConfig(served_model_name="smollm2")) as live:
        yield live
    llm.shutdown()


@pytest.fixture(scope="module")
def real(real_server) -> Live:
    return real_server


@pytest.fixture(scope="module")
def oai(real_server):
    """An ``openai`` client on ``real_server`` (generous timeout: constrained batches)."""
    import openai

    return openai.OpenAI(base_url=real_server.url + "/v1", api_key="x", max_retries=0,
                         timeout=300)
