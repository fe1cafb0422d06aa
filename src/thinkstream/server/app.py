"""``create_app(async_llm, ServerConfig)``: the FastAPI app and its middleware.

Middleware, outermost first: CORS (denies unless ``allowed_origins`` lists the origin) ->
API key (everything but ``GET /health``, the playground's files (``GET /``, ``playground``)
and, unless ``metrics_require_key``, ``GET /metrics``; the key found becomes the request's
owner) ->
body-size limit (413) -> routes. Routes are mounted as routers, so other route groups (the
streaming-input sessions) are added the same way beside the OpenAI ones:
``app.include_router(router)``; they reach the shared ``ServerState`` through
``request.app.state.server``. Running it (uvicorn, signals, drain) is ``lifecycle``.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response

from thinkstream.async_llm import AsyncLLM
from thinkstream.server import protocol as P
from thinkstream.server.auth import OPEN_PATHS, ApiKeyMiddleware, KeyRing
from thinkstream.server.config import ServerConfig
from thinkstream.server.errors import install_handlers
from thinkstream.server.limits import Admission, BodyLimitMiddleware
from thinkstream.server.metrics import CONTENT_TYPE, ServerMetrics
from thinkstream.server.openai_routes import router as openai_router
from thinkstream.server.playground import PATHS as PLAYGROUND_PATHS
from thinkstream.server.playground import playground_router
from thinkstream.server.redact import install_redaction
from thinkstream.server.responses_protocol import ResponsesRequest
from thinkstream.server.responses_routes import router as responses_router
from thinkstream.server.responses_store import ResponseStore
from thinkstream.server.responses_store_routes import router as stored_responses_router
from thinkstream.server.serving import ServerState
from thinkstream.server.session_hub import SessionHub, SessionLimits
from thinkstream.server.session_routes import session_router
from thinkstream.server.tokenize_routes import DetokenizeRequest, TokenizeRequest
from thinkstream.server.tokenize_routes import router as tokenize_router


def create_app(llm: AsyncLLM, config: ServerConfig | None = None,
               session_limits: SessionLimits | None = None) -> FastAPI:
    config = config or ServerConfig()
    app = FastAPI(title="thinkstream", version="0.1.0",
                  description="OpenAI-compatible inference server")
    capacity = llm.engine.config.max_num_seqs + config.max_queue
    keys = KeyRing(config.api_keys)
    metrics = ServerMetrics(llm, config.served_model_name)
    state = app.state.server = ServerState(llm, config, metrics, Admission(capacity), keys,
                                           store=ResponseStore(config.responses_store_size,
                                                               config.responses_store_bytes))
    metrics.queued = state.queued_seqs
    state.hub = app.state.session_hub = SessionHub(state, session_limits)
    # llguidance builds its vocabulary index holding the GIL (Gemma 3's 262k tokens: 4-14 s
    # on 2 cores, every stream and /health stalled): once here, before serving, not in the
    # first constrained request (SmolLM2: ~0.35 s)
    llm.engine.structured.compiler.lltokenizer()
    install_redaction()
    install_handlers(app)
    app.include_router(openai_router)
    app.include_router(responses_router)
    app.include_router(stored_responses_router)
    app.include_router(tokenize_router)
    app.include_router(session_router())
    app.include_router(playground_router())

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
    if keys:
        open_paths = OPEN_PATHS | PLAYGROUND_PATHS
        if not config.metrics_require_key:
            open_paths |= {"/metrics"}
        app.add_middleware(ApiKeyMiddleware, keys=keys, open_paths=open_paths)
    app.add_middleware(CORSMiddleware, allow_origins=list(config.allowed_origins),
                       allow_methods=["GET", "POST", "PUT", "DELETE", "OPTIONS"],
                       allow_headers=["*"],
                       expose_headers=["X-Request-Id", "Retry-After"])
    app.openapi = lambda: _openapi(app)
    return app


def _openapi(app: FastAPI) -> dict:
    if app.openapi_schema is None:
        schema = get_openapi(title=app.title, version=app.version,
                             description=app.description, routes=app.routes)
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        components.update(P.schema_components(P.CompletionRequest, P.ChatCompletionRequest,
                                              ResponsesRequest, TokenizeRequest,
                                              DetokenizeRequest))
        if "securitySchemes" not in schema["components"] and app.state.server.keys:
            schema["components"]["securitySchemes"] = {"bearer": {"type": "http",
                                                                  "scheme": "bearer"}}
            schema["security"] = [{"bearer": []}]
        app.openapi_schema = schema
    return app.openapi_schema
