"""``ServerConfig``: the HTTP server's knobs, one frozen dataclass the CLI and tests build."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ServerConfig:
    """Limits and identity of the OpenAI-compatible server.

    ``max_queue`` bounds the sequences waiting beyond the engine's running slots: a request
    is admitted (all of its ``n`` sequences at once) only while running + waiting + its own
    stay within ``max_num_seqs + max_queue``; otherwise it gets 429 with ``Retry-After``.
    """

    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None
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

    def __post_init__(self) -> None:
        object.__setattr__(self, "allowed_origins", tuple(self.allowed_origins))
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be in [0, 65535], got {self.port}")
        if self.api_key is not None and not self.api_key:
            raise ValueError("api_key must not be empty")
        if not self.served_model_name:
            raise ValueError("served_model_name must not be empty")
        for name in ("max_queue", "shutdown_timeout"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
        for name in ("max_n", "max_stop", "max_stop_len", "max_body_bytes", "max_request_id_len",
                     "retry_after_s"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.max_logprobs < 0:
            raise ValueError("max_logprobs must be >= 0")
