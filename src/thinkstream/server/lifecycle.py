"""Running the server: uvicorn set up with our guards, and shutdown on signals.

``serve`` runs the app under ``DrainingServer``, uvicorn with our own signal handling:

- the first SIGTERM / SIGINT starts ``drain``: new requests and session opens get 503,
  requests and sessions in flight (open sessions and answers being streamed) may finish for
  up to ``shutdown_timeout`` seconds, then the rest are aborted (their streams end with
  ``finish_reason="abort"`` and ``[DONE]``); only then does uvicorn close the connections
  and the process exit;
- a second signal aborts everything still running at once, gives the streams a moment
  (``FORCE_GRACE_S``) to send that last event, and exits without waiting for anything.

The signals are never handed back to uvicorn, which would re-raise them after its shutdown
(a ``KeyboardInterrupt`` traceback for SIGINT).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket

import uvicorn
from fastapi import FastAPI

from thinkstream.server.config import ServerConfig
from thinkstream.server.connections import guarded_protocol
from thinkstream.server.redact import install_redaction
from thinkstream.server.serving import ServerState

log = logging.getLogger("thinkstream.server")
FORCE_GRACE_S = 0.5  # after a second signal: time for aborted streams to send their last event
AFTER_DRAIN_S = 5  # uvicorn's wait for connections once the drain is over


async def drain(state: ServerState, timeout: float) -> None:
    """Refuse new work, wait up to ``timeout`` s for the work in flight, abort the rest."""
    state.draining = True
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while state.in_flight() and loop.time() < deadline:
        await asyncio.sleep(0.05)
    if state.in_flight():
        log.warning("shutdown timeout: aborting %d request(s) and session(s)", state.in_flight())
        await _abort_all(state)
        for _ in range(100):  # let aborted streams send their last chunk
            if not state.in_flight():
                break
            await asyncio.sleep(0.05)


async def _abort_all(state: ServerState) -> None:
    with contextlib.suppress(Exception):  # a dead engine has nothing left to abort
        await state.abort_all()


class DrainingServer(uvicorn.Server):
    """uvicorn, with ``drain`` on the first SIGTERM / SIGINT and an immediate exit on the
    second (``forced`` then turns True)."""

    def __init__(self, config: uvicorn.Config, state: ServerState, timeout: float) -> None:
        super().__init__(config)
        self.state, self.timeout = state, timeout
        self.signals = 0
        self.forced = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._drain_task: asyncio.Task | None = None

    async def serve(self, sockets=None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def handle_exit(self, sig, frame) -> None:
        self.signals += 1
        if self._loop is None:  # not serving yet
            self.should_exit = True
            return
        self.state.draining = True
        first = self.signals == 1
        self._loop.call_soon_threadsafe(self._start_drain if first else self._start_force)

    def _start_drain(self) -> None:
        async def run() -> None:
            await drain(self.state, self.timeout)
            self.should_exit = True

        self._drain_task = asyncio.ensure_future(run())

    def _start_force(self) -> None:
        if self.forced:
            return
        self.forced = True
        if self._drain_task is not None:
            self._drain_task.cancel()

        async def run() -> None:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + FORCE_GRACE_S
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(_abort_all(self.state), FORCE_GRACE_S)
            while self.state.in_flight() and loop.time() < deadline:
                await asyncio.sleep(0.02)
            self.config.timeout_graceful_shutdown = FORCE_GRACE_S  # cancel what is left
            self.force_exit = self.should_exit = True

        asyncio.ensure_future(run())


def uvicorn_config(app: FastAPI, config: ServerConfig, **overrides) -> uvicorn.Config:
    """uvicorn's settings from ``config``: header timeout, connection cap, keep-alive; then
    the log redaction on whatever handlers uvicorn's logging set-up made."""
    settings = dict(host=config.host, port=config.port, lifespan="off",
                    timeout_graceful_shutdown=AFTER_DRAIN_S,
                    timeout_keep_alive=config.keep_alive_timeout,
                    http=guarded_protocol(config.header_timeout, config.max_connections))
    uv = uvicorn.Config(app, **{**settings, **overrides})
    install_redaction()
    return uv


def serve(app: FastAPI, log_level: str = "info",
          sockets: list[socket.socket] | None = None) -> int:
    """Run ``app`` (from ``create_app``) until a signal; 0 after a drain, 1 when a second
    signal cut it short. The engine is shut down on the way out."""
    state: ServerState = app.state.server
    server = DrainingServer(uvicorn_config(app, state.config, log_level=log_level), state,
                            state.config.shutdown_timeout)
    for sock in sockets or ():  # uvicorn says where it listens only for sockets it binds
        host, port = sock.getsockname()[:2]
        logging.getLogger("uvicorn.error").info(
            "Uvicorn running on http://%s:%d (Press CTRL+C to quit)",
            f"[{host}]" if ":" in host else host, port)
    try:
        server.run(sockets)
    finally:
        state.llm.shutdown(timeout=FORCE_GRACE_S if server.forced else 5.0)
    return 1 if server.forced else 0
