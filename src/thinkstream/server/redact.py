"""Secrets never reach a log line: a ``logging.Filter`` that masks them in every record.

It masks the values of secret-looking query parameters (``api_key=...``, ``key``, ``token``,
``access_token``, ``password``...) and of ``Authorization`` / ``X-API-Key`` headers or
``Bearer`` tokens, in the message and in each of its arguments (uvicorn's access log
formats its arguments itself, so they are rewritten in place and keep their types).
``install_redaction`` puts the filter on uvicorn's loggers, the ``websockets`` library's,
ours, and every handler the root logger has, so records that propagate are covered too.
"""

from __future__ import annotations

import logging
import re

MASK = "[REDACTED]"
_QUERY = re.compile(
    r"(?i)([?&;](?:api[_-]?key|key|token|access[_-]?token|auth|password|secret)=)[^&;#\s\"']*")
_BEARER = re.compile(r"(?i)\b(bearer\s+)[^\s,;\"']+")
_HEADER = re.compile(r"(?i)\b((?:authorization|x-api-key)\s*[:=]\s*)(?!bearer\s)[^\s,;\"']+")
LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access", "uvicorn.asgi", "websockets",
           "websockets.server", "websockets.protocol", "thinkstream", "thinkstream.server",
           "fastapi")


def redact(text: str) -> str:
    """``text`` with every secret value replaced by ``[REDACTED]``."""
    text = _QUERY.sub(r"\1" + MASK, text)
    text = _BEARER.sub(r"\1" + MASK, text)
    return _HEADER.sub(r"\1" + MASK, text)


def _clean(value):
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, bytes):
        return redact(value.decode("latin-1")).encode("latin-1")
    return value


class RedactFilter(logging.Filter):
    """Masks secrets in a record's message and arguments; never drops a record."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = redact(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(_clean(a) for a in record.args)
        elif isinstance(record.args, dict):
            record.args = {k: _clean(v) for k, v in record.args.items()}
        return True


def _add(target: logging.Logger | logging.Handler) -> None:
    if not any(isinstance(f, RedactFilter) for f in target.filters):
        target.addFilter(RedactFilter())


def install_redaction() -> None:
    """Put a ``RedactFilter`` on the server's loggers and the root logger's handlers
    (idempotent; call again after logging is reconfigured to cover new handlers)."""
    for name in LOGGERS:
        logger = logging.getLogger(name)
        _add(logger)
        for handler in logger.handlers:
            _add(handler)
    for handler in logging.getLogger().handlers:
        _add(handler)
