"""API-key check as a pure ASGI middleware, in front of routing.

Every HTTP request but ``GET /health`` (exact path) needs ``Authorization: Bearer <key>``
(or ``X-API-Key: <key>``). The check runs before routing, so neither a trailing slash, a
redirect nor an ``OPTIONS`` request gets past it. Keys are compared as SHA-256 digests
with ``hmac.compare_digest``: constant time, and independent of the key's length. The key
is never logged. (CORS sits outside this middleware, so a browser's pre-flight from an
allowed origin is answered by CORS alone; it carries no data.)
"""

from __future__ import annotations

import hashlib
import hmac

from starlette.types import ASGIApp, Receive, Scope, Send

from thinkstream.server.errors import error_response

OPEN_PATHS = frozenset({"/health"})


def _digest(value: bytes) -> bytes:
    return hashlib.sha256(value).digest()


def presented_key(headers: list[tuple[bytes, bytes]]) -> bytes | None:
    for name, value in headers:
        if name == b"authorization" and value[:7].lower() == b"bearer ":
            return value[7:].strip()
        if name == b"x-api-key":
            return value.strip()
    return None


class ApiKeyMiddleware:
    def __init__(self, app: ASGIApp, api_key: str) -> None:
        self.app = app
        self._digest = _digest(api_key.encode("utf-8"))

    def authorized(self, scope: Scope) -> bool:
        key = presented_key(scope.get("headers", []))
        return key is not None and hmac.compare_digest(_digest(key), self._digest)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or (scope["path"] in OPEN_PATHS and scope["method"] == "GET"):
            await self.app(scope, receive, send)
            return
        if not self.authorized(scope):
            response = error_response(401, "missing or invalid API key", None, "invalid_api_key",
                                      headers={"WWW-Authenticate": "Bearer"})
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)
