"""One engine replica inside a Ray actor: the whole thinkstream server (``create_app``
over an ``AsyncLLM``) on its own port, so every route, sessions included, works the same
behind the router. The router speaks plain HTTP to it; Ray places, starts, watches and
kills the process (``ray start --head`` / ``--address`` for several machines).

The class is plain Python; ``launch.start_replicas`` wraps it with ``ray.remote``, so
importing this module needs no Ray.
"""

from __future__ import annotations

import os
import socket
import threading
import time

from thinkstream.config import EngineConfig
from thinkstream.server.config import ServerConfig


class ReplicaServer:
    def __init__(self, index: int, model: str | None, engine: EngineConfig, server: ServerConfig,
                 checkpoint=None, host: str = "127.0.0.1") -> None:
        import torch

        from thinkstream.async_llm import AsyncLLM
        from thinkstream.engine.llm_engine import LLMEngine
        from thinkstream.server.app import create_app
        from thinkstream.server.lifecycle import DrainingServer, uvicorn_config

        if engine.num_threads is not None:
            torch.set_num_threads(engine.num_threads)
        self.index = index
        self.llm = AsyncLLM(LLMEngine(model, engine, checkpoint=checkpoint))
        app = create_app(self.llm, server)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, 0))
        uv = uvicorn_config(app, server, log_level="warning", timeout_graceful_shutdown=1)
        self._server = DrainingServer(uv, app.state.server, server.shutdown_timeout)
        threading.Thread(target=self._server.run, kwargs={"sockets": [sock]}, daemon=True,
                         name="thinkstream-replica-http").start()
        deadline = time.monotonic() + 30
        while not self._server.started and time.monotonic() < deadline:
            time.sleep(0.01)
        if host == "0.0.0.0":  # reached from the router's node: this node's address
            import ray

            host = ray.util.get_node_ip_address()
        self._url = f"http://{host}:{sock.getsockname()[1]}"

    def url(self) -> str:
        return self._url

    def ping(self) -> str | None:
        """None while the engine serves; else why it stopped."""
        return None if self.llm.dead is None else f"engine stopped: {self.llm.dead!r}"

    def pid(self) -> int:
        return os.getpid()
