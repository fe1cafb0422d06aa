"""``ServerConfig``: the HTTP server's knobs, one frozen dataclass the CLI and tests build."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class SessionLimits:
    """Limits of streaming-input sessions (per server)."""

    idle_timeout_s: float = 120.0
    max_sessions_per_key: int = 16
    max_tokens_per_session: int | None = None  # None: the model's context
    max_chunk_chars: int = 16384
    max_chunks_per_s: float = 50.0  # sustained rate per session (token bucket)
    chunk_burst: int = 100

    def __post_init__(self) -> None:
        if self.idle_timeout_s <= 0 or self.max_chunks_per_s <= 0:
            raise ValueError("idle_timeout_s and max_chunks_per_s must be > 0")
        for name in ("max_sessions_per_key", "max_chunk_chars", "chunk_burst"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.max_tokens_per_session is not None and self.max_tokens_per_session < 1:
            raise ValueError("max_tokens_per_session must be >= 1")


@dataclass(frozen=True)
class ServerConfig:
    """Limits and identity of the OpenAI-compatible server.

    ``max_queue`` bounds the sequences waiting beyond the engine's running slots: a request
    is admitted (all of its ``n`` sequences at once) only while running + waiting + its own
    stay within ``max_num_seqs + max_queue``; otherwise it gets 429 with ``Retry-After``
    (400 if it could never fit). Open sessions count against the same capacity.

    ``api_keys``: every key that may use the server; each key owns the sessions and
    requests it makes. With none, every client is the same anonymous owner.

    Connections: ``header_timeout`` closes a connection whose request headers are not all
    in after that many seconds, ``keep_alive_timeout`` an idle keep-alive connection, and
    past ``max_connections`` open connections a new one is answered 503 and closed.

    Output parsing: ``tool_call_parser`` names the tool-call format (``parsers.tool_calls``;
    used when a request has ``tools``), ``reasoning_parser`` the reasoning format
    (``parsers.reasoning``; None: off, the output is all content). ``tool_prompt``: a model
    whose template has no tool support gets the tool prompt (``server.chat_tools``); off,
    such a request is a 400. ``metrics_require_key``: ``/metrics`` needs an API key like the
    other routes (by default it is open, as vLLM serves it). ``return_tokens_as_token_ids``:
logprobs name tokens ``token_id:N`` unless a request says otherwise (vLLM's flag).
    ``responses_store_size``: Responses API responses kept for ``GET /v1/responses/{id}``,
    ``previous_response_id`` and ``background`` (least recently used forgotten first); 0:
    none are kept and those are 400s. ``responses_store_bytes``: their budget in bytes of
    JSON (``responses_store``: least recently used forgotten first; one over it on its own
    is not kept). ``sessions``: the streaming-input sessions' limits (``SessionLimits``).
    """

    host: str = "127.0.0.1"
    port: int = 8000
    api_keys: tuple[str, ...] = ()
    allowed_origins: tuple[str, ...] = ()
    served_model_name: str = "thinkstream"
    max_queue: int = 256
    max_n: int = 16
    max_logprobs: int = 20
    max_stop: int = 16
    max_stop_len: int = 256
    max_body_bytes: int = 4 * 1024 * 1024
    max_request_id_len: int = 128
    shutdown_timeout: float = 30.0
    retry_after_s: int = 1
    header_timeout: float = 10.0
    keep_alive_timeout: float = 5.0
    max_connections: int = 1024
    tool_call_parser: str = "hermes"
    reasoning_parser: str | None = None
    tool_prompt: bool = True
    metrics_require_key: bool = False
    return_tokens_as_token_ids: bool = False
    responses_store_size: int = 1024
    responses_store_bytes: int = 256 * 1024 * 1024
    sessions: SessionLimits = field(default_factory=SessionLimits)

    def __post_init__(self) -> None:
        from thinkstream.parsers.reasoning import reasoning_stream_factory
        from thinkstream.parsers.tool_calls import tool_stream_factory

        tool_stream_factory(self.tool_call_parser)  # ValueError naming the choices
        if self.reasoning_parser is not None:
            reasoning_stream_factory(self.reasoning_parser)
        object.__setattr__(self, "allowed_origins", tuple(self.allowed_origins))
        object.__setattr__(self, "api_keys", tuple(self.api_keys))
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be in [0, 65535], got {self.port}")
        for key in self.api_keys:
            if not isinstance(key, str) or not key.strip() or key != key.strip():
                raise ValueError("api_keys: a key must be a non-empty string without "
                                 "surrounding whitespace")
        if not self.served_model_name:
            raise ValueError("served_model_name must not be empty")
        for name in ("max_queue", "shutdown_timeout", "responses_store_size"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
        for name in ("header_timeout", "keep_alive_timeout"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0")
        for name in ("max_n", "max_stop", "max_stop_len", "max_body_bytes", "max_request_id_len",
                     "retry_after_s", "max_connections", "responses_store_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.max_logprobs < 0:
            raise ValueError("max_logprobs must be >= 0")
