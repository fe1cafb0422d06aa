"""``thinkstream serve [MODEL]``: the OpenAI-compatible HTTP server (FastAPI + uvicorn)."""

from __future__ import annotations

import argparse
import logging
import os
import socket
from pathlib import Path

from thinkstream.parsers.reasoning import REASONING_PARSERS
from thinkstream.parsers.tool_calls import TOOL_PARSERS
from thinkstream.server.config import ServerConfig, SessionLimits

_LIMITS = SessionLimits()  # the session flags' defaults


def add_server_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key", action="append", default=[],
                   help="accept this key (Bearer); repeatable, each key owns its sessions "
                        "and requests; default: $THINKSTREAM_API_KEY if set")
    p.add_argument("--api-key-file", action="append", default=[],
                   help="accept the keys in this file, one per line ('#' comments); repeatable")
    p.add_argument("--allowed-origins", action="append", default=[],
                   help="CORS / WebSocket origin to allow (repeatable); none by default")
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
                   help="seconds SIGTERM waits for requests and sessions in flight")
    p.add_argument("--header-timeout", type=float, default=10.0,
                   help="seconds a connection may take to send its request headers")
    p.add_argument("--keep-alive-timeout", type=float, default=5.0,
                   help="seconds an idle keep-alive connection stays open")
    p.add_argument("--max-connections", type=int, default=1024,
                   help="open connections past which a new one gets 503")
    p.add_argument("--tool-call-parser", default="hermes", choices=sorted(TOOL_PARSERS),
                   help="format of the model's tool calls (requests with tools)")
    p.add_argument("--reasoning-parser", default=None, choices=sorted(REASONING_PARSERS),
                   help="split <think>...</think> output into reasoning_content (off by default)")
    p.add_argument("--no-tool-prompt", dest="tool_prompt", action="store_false",
                   help="a model whose chat template has no tool support answers requests "
                        "with tools with 400 instead of getting the tool prompt")
    p.add_argument("--metrics-require-key", action="store_true",
                   help="/metrics needs an API key (by default it is open)")
    p.add_argument("--return-tokens-as-token-ids", action="store_true",
                   help="logprobs name tokens 'token_id:N' (a request's "
                        "return_tokens_as_token_ids overrides it), as vLLM's flag")
    p.add_argument("--responses-store-size", type=int, default=1024,
                   help="Responses API responses kept for retrieval, previous_response_id "
                        "and background (least recently used forgotten first; 0: none)")
    p.add_argument("--responses-store-bytes", type=int, default=256 * 1024 * 1024,
                   help="their budget in bytes of JSON (least recently used forgotten first; "
                        "a response over it on its own is not kept)")
    p.add_argument("--session-idle-timeout", type=float, default=_LIMITS.idle_timeout_s,
                   help="seconds an open streaming-input session may go without an update "
                        "before it is closed (idle_timeout) and its blocks freed")
    p.add_argument("--max-sessions-per-key", type=int, default=_LIMITS.max_sessions_per_key,
                   help="open streaming-input sessions per API key (past it: 429)")
    p.add_argument("--max-tokens-per-session", type=int, default=_LIMITS.max_tokens_per_session,
                   help="input tokens a session may hold (default: the context; past it: 413)")
    p.add_argument("--max-session-chunk-chars", type=int, default=_LIMITS.max_chunk_chars,
                   help="characters per session append, replace or opening prompt (413)")
    p.add_argument("--max-session-chunks-per-s", type=float, default=_LIMITS.max_chunks_per_s,
                   help="sustained session updates a second (token bucket; past it: 429)")
    p.add_argument("--session-chunk-burst", type=int, default=_LIMITS.chunk_burst,
                   help="updates a session may send at once before the rate applies")
    p.add_argument("--replicas", type=int, default=1,
                   help="engine replicas on Ray behind one endpoint (pip install thinkstream[ray])")
    p.add_argument("--ray-address", default=None,
                   help="a Ray cluster to place the replicas on ('auto': the one `ray start` made)")
    p.add_argument("--log-level", default="info",
                   choices=["critical", "error", "warning", "info", "debug"])


def read_key_files(paths: list[str]) -> list[str]:
    """Keys from files, one per line; blank lines and lines starting with '#' are skipped."""
    keys = []
    for path in paths:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise ValueError(f"--api-key-file: cannot read {path}: {exc.strerror}") from None
        keys += [line.strip() for line in text.splitlines()
                 if line.strip() and not line.strip().startswith("#")]
    return keys


def server_config(args: argparse.Namespace) -> ServerConfig:
    keys = list(args.api_key) + read_key_files(args.api_key_file)
    if not keys and os.environ.get("THINKSTREAM_API_KEY", "").strip():
        keys = [os.environ["THINKSTREAM_API_KEY"].strip()]
    return ServerConfig(
        host=args.host, port=args.port, api_keys=tuple(keys),
        allowed_origins=tuple(args.allowed_origins),
        served_model_name=args.served_model_name or args.model or "smollm2-135m",
        max_queue=args.max_queue, max_n=args.max_n, max_logprobs=args.max_logprobs,
        max_stop=args.max_stop, max_stop_len=args.max_stop_len,
        max_body_bytes=args.max_body_bytes, shutdown_timeout=args.shutdown_timeout,
        header_timeout=args.header_timeout, keep_alive_timeout=args.keep_alive_timeout,
        max_connections=args.max_connections, tool_call_parser=args.tool_call_parser,
        reasoning_parser=args.reasoning_parser, tool_prompt=args.tool_prompt,
        metrics_require_key=args.metrics_require_key,
        return_tokens_as_token_ids=args.return_tokens_as_token_ids,
        responses_store_size=args.responses_store_size,
        responses_store_bytes=args.responses_store_bytes,
        sessions=SessionLimits(
            idle_timeout_s=args.session_idle_timeout,
            max_sessions_per_key=args.max_sessions_per_key,
            max_tokens_per_session=args.max_tokens_per_session,
            max_chunk_chars=args.max_session_chunk_chars,
            max_chunks_per_s=args.max_session_chunks_per_s,
            chunk_burst=args.session_chunk_burst),
    )


def cmd_serve(args: argparse.Namespace) -> int:
    from thinkstream.async_llm import AsyncLLM
    from thinkstream.cli import engine_config, set_process_threads
    from thinkstream.engine.llm_engine import LLMEngine
    from thinkstream.server.app import create_app
    from thinkstream.server.lifecycle import serve

    config = server_config(args)  # validate flags before loading the model
    if args.replicas < 1:
        raise ValueError(f"replicas must be >= 1, got {args.replicas}")
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    engine_cfg = engine_config(args)
    if args.replicas > 1 or args.ray_address:  # N servers on Ray behind one router
        from thinkstream.distributed.replicas.launch import serve_replicas

        return serve_replicas(args.replicas, args.model, engine_cfg, config, args.ray_address,
                              args.log_level)
    sock = listen_socket(config.host, config.port)  # a port in use fails before the model loads
    set_process_threads(engine_cfg)
    llm = AsyncLLM(LLMEngine(args.model, engine_cfg))
    return serve(create_app(llm, config), args.log_level, [sock])


def listen_socket(host: str, port: int) -> socket.socket:
    """The server's socket, bound now (as uvicorn binds it: ``SO_REUSEADDR``): a host or
    port it cannot have is a ``ValueError`` naming them (the CLI exits 2), not uvicorn's
    error once the model has loaded."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        sock = socket.socket(family, socket.SOCK_STREAM)
    except OSError as exc:
        raise ValueError(f"--host {host}: {exc.strerror or exc}") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ValueError(f"--host {host} --port {port}: cannot listen there "
                         f"({exc.strerror or exc})") from None
    return sock


def register(subparsers: argparse._SubParsersAction, name: str) -> None:
    from thinkstream.cli import add_engine_args

    p = subparsers.add_parser(name, help="OpenAI-compatible HTTP server")
    add_engine_args(p)
    add_server_args(p)
    p.set_defaults(fn=cmd_serve)
