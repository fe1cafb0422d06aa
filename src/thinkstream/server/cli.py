"""``thinkstream serve [MODEL]``: the OpenAI-compatible HTTP server (FastAPI + uvicorn)."""

from __future__ import annotations

import argparse
import logging
import os

from thinkstream.server.config import ServerConfig


def add_server_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key", default=None,
                   help="require this key (Bearer); default: $THINKSTREAM_API_KEY if set")
    p.add_argument("--allowed-origins", action="append", default=[],
                   help="CORS origin to allow (repeatable); none by default")
    p.add_argument("--served-model-name", default=None,
                   help="model id clients use (default: the model argument or smollm2-135m)")
    p.add_argument("--max-queue", type=int, default=256,
                   help="sequences that may wait beyond --max-num-seqs before 429")
    p.add_argument("--max-n", type=int, default=16)
    p.add_argument("--max-logprobs", type=int, default=20)
    p.add_argument("--max-stop", type=int, default=16)
    p.add_argument("--max-stop-len", type=int, default=256)
    p.add_argument("--max-body-bytes", type=int, default=4 * 1024 * 1024)
    p.add_argument("--shutdown-timeout", type=float, default=30.0,
                   help="seconds SIGTERM waits for requests in flight")
    p.add_argument("--log-level", default="info",
                   choices=["critical", "error", "warning", "info", "debug"])


def server_config(args: argparse.Namespace) -> ServerConfig:
    return ServerConfig(
        host=args.host, port=args.port,
        api_key=args.api_key or os.environ.get("THINKSTREAM_API_KEY") or None,
        allowed_origins=tuple(args.allowed_origins),
        served_model_name=args.served_model_name or args.model or "smollm2-135m",
        max_queue=args.max_queue, max_n=args.max_n, max_logprobs=args.max_logprobs,
        max_stop=args.max_stop, max_stop_len=args.max_stop_len,
        max_body_bytes=args.max_body_bytes, shutdown_timeout=args.shutdown_timeout,
    )


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from thinkstream.async_engine import AsyncLLM
    from thinkstream.cli import engine_config
    from thinkstream.engine import LLMEngine
    from thinkstream.server.app import DrainingServer, create_app

    config = server_config(args)  # validate flags before loading the model
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    llm = AsyncLLM(LLMEngine(args.model, engine_config(args)))
    app = create_app(llm, config)
    uv = uvicorn.Config(app, host=config.host, port=config.port, log_level=args.log_level,
                        timeout_graceful_shutdown=5, lifespan="off")
    try:
        DrainingServer(uv, app.state.server, config.shutdown_timeout).run()
    finally:
        llm.shutdown()
    return 0


def register(subparsers: argparse._SubParsersAction, name: str) -> None:
    from thinkstream.cli import add_engine_args

    p = subparsers.add_parser(name, help="OpenAI-compatible HTTP server")
    add_engine_args(p)
    add_server_args(p)
    p.set_defaults(fn=cmd_serve)
