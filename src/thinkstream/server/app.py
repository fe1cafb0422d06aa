"""``create_app(async_llm, ServerConfig)``: the FastAPI app, its middleware and lifecycle.

Middleware, outermost first: CORS (denies unless ``allowed_origins`` lists the origin) ->
API key (everything but ``GET /health``) -> body-size limit (413) -> routes. Routes are
mounted as routers, so other route groups (the streaming-input sessions) are added the
same way beside the OpenAI ones: ``app.include_router(router)``; they reach the shared
``ServerState`` through ``request.app.state.server``.

Shutdown: ``drain`` refuses new requests with 503, waits up to ``shutdown_timeout`` for
those in flight, then aborts the rest (their streams end with ``finish_reason="abort"``).
``DrainingServer`` runs it on SIGTERM / SIGINT before uvicorn's own shutdown.
"""

from __future__ import annotations

import asyncio
import logging

import uvicorn
from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response

from thinkstream.async_engine import AsyncLLM
from thinkstream.server import protocol as P
from thinkstream.server.auth import ApiKeyMiddleware
from thinkstream.server.config import ServerConfig
from thinkstream.server.errors import install_handlers
from thinkstream.server.limits import Admission, BodyLimitMiddleware
from thinkstream.server.metrics import CONTENT_TYPE, ServerMetrics
from thinkstream.server.openai_routes import router as openai_router
from thinkstream.server.serving import ServerState
from thinkstream.server.session_hub import SessionLimits
from thinkstream.server.session_routes import session_router

log = logging.getLogger("thinkstream.server")


def create_app(llm: AsyncLLM, config: ServerConfig | None = None,
               session_limits: SessionLimits | None = None) -> FastAPI:
    config = config or ServerConfig()
    app = FastAPI(title="thinkstream", version="0.1.0",
                  description="OpenAI-compatible inference server")
    capacity = llm.engine.config.max_num_seqs + config.max_queue
    app.state.server = ServerState(llm, config, ServerMetrics(llm, config.served_model_name),
                                   Admission(capacity))
    install_handlers(app)
    app.include_router(openai_router)
    app.include_router(session_router(session_limits))

    @app.get("/health", responses={503: {"model": P.ErrorResponse}})
    async def health() -> Response:
        """200 while the engine runs; 503 once its loop died or the server is draining."""
        state: ServerState = app.state.server
        if state.llm.dead is not None:
            return JSONResponse({"status": "engine_dead"}, 503)
        if state.draining:
            return JSONResponse({"status": "draining"}, 503)
        return JSONResponse({"status": "ok"})

    @app.get("/metrics", response_class=Response)
    async def metrics(request: Request) -> Response:
        """Prometheus text format."""
        return Response(app.state.server.metrics.render(), media_type=CONTENT_TYPE)

    app.add_middleware(BodyLimitMiddleware, max_body_bytes=config.max_body_bytes)
    if config.api_key is not None:
        app.add_middleware(ApiKeyMiddleware, api_key=config.api_key)
    app.add_middleware(CORSMiddleware, allow_origins=list(config.allowed_origins),
                       allow_methods=["GET", "POST", "OPTIONS"], allow_headers=["*"],
                       expose_headers=["X-Request-Id", "Retry-After"])
    app.openapi = lambda: _openapi(app)
    return app


def _openapi(app: FastAPI) -> dict:
    if app.openapi_schema is None:
        schema = get_openapi(title=app.title, version=app.version,
                             description=app.description, routes=app.routes)
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        components.update(P.schema_components(P.CompletionRequest, P.ChatCompletionRequest))
        if "securitySchemes" not in schema["components"] and \
                app.state.server.config.api_key is not None:
            schema["components"]["securitySchemes"] = {"bearer": {"type": "http",
                                                                  "scheme": "bearer"}}
            schema["security"] = [{"bearer": []}]
        app.openapi_schema = schema
    return app.openapi_schema


async def drain(state: ServerState, timeout: float) -> None:
    """Refuse new requests, wait up to ``timeout`` s for those in flight, abort the rest."""
    state.draining = True
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while state.live and loop.time() < deadline:
        await asyncio.sleep(0.05)
    if state.live:
        log.warning("shutdown timeout: aborting %d request(s)", len(state.live))
        for job in list(state.live.values()):
            await job.cancel()
        for _ in range(100):  # let aborted streams send their last chunk
            if not state.live:
                break
            await asyncio.sleep(0.05)


class DrainingServer(uvicorn.Server):
    """uvicorn, with ``drain`` run on the first SIGTERM / SIGINT; a second one exits now."""

    def __init__(self, config: uvicorn.Config, state: ServerState, timeout: float) -> None:
        super().__init__(config)
        self.state, self.timeout = state, timeout
        self._loop: asyncio.AbstractEventLoop | None = None
        self._drain_task: asyncio.Task | None = None

    async def serve(self, sockets=None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def handle_exit(self, sig, frame) -> None:
        if self._loop is None or self._drain_task is not None or self.state.draining:
            super().handle_exit(sig, frame)
            return
        self.state.draining = True
        self._loop.call_soon_threadsafe(self._start_drain)

    def _start_drain(self) -> None:
        async def run() -> None:
            await drain(self.state, self.timeout)
            self.should_exit = True

        self._drain_task = asyncio.ensure_future(run())
