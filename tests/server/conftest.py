"""Fixtures for server tests: a tiny-model engine behind a live uvicorn on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import uvicorn
from helpers.tiny import tiny_checkpoint

from thinkstream.async_engine import AsyncLLM
from thinkstream.config import EngineConfig
from thinkstream.engine import LLMEngine
from thinkstream.server.app import DrainingServer, create_app
from thinkstream.server.config import ServerConfig

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
def live_server(llm: AsyncLLM, config: ServerConfig | None = None) -> Iterator[Live]:
    app = create_app(llm, config or ServerConfig(served_model_name="tiny"))
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    uv = uvicorn.Config(app, log_level="warning", lifespan="off", timeout_graceful_shutdown=2)
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
