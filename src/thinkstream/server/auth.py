"""API keys and who owns what: a ``KeyRing`` and the key check as a pure ASGI middleware.

Every HTTP request but ``GET /health`` (exact paths: the playground's files too,
``playground.PATHS``; ``GET /metrics`` unless the server requires a key for it,
``ServerConfig.metrics_require_key``) needs ``Authorization: Bearer <key>``
(or ``X-API-Key: <key>``) with one of the configured keys. The check runs before routing,
so neither a trailing slash, a redirect nor an ``OPTIONS`` request gets past it. Keys are
compared as SHA-256 digests with ``hmac.compare_digest``, against every key without an early
exit: constant time, independent of the key's length and of which key matched. Keys are
never logged. (CORS sits outside this middleware, so a browser's pre-flight from an allowed
origin is answered by CORS alone; it carries no data.)

The key a request presents is its *owner*: sessions, request ids and per-key limits belong
to it (``owner_name``: a short digest, never the key). With no key configured every client
is the one owner ``ANONYMOUS``: a made-up bearer token is not an identity.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable

from starlette.types import ASGIApp, Receive, Scope, Send

from thinkstream.server.errors import error_response

OPEN_PATHS = frozenset({"/health"})
ANONYMOUS = "anonymous"
OWNER_SCOPE_KEY = "thinkstream.owner"  # where the middleware leaves the owner in the scope


def _digest(value: bytes) -> bytes:
    return hashlib.sha256(value).digest()


def owner_name(key: str) -> str:
    """A stable, non-secret name for an API key."""
    return "key-" + hashlib.sha256(key.encode("utf-8")).hexdigest()[:16]


def presented_key(headers: list[tuple[bytes, bytes]]) -> bytes | None:
    for name, value in headers:
        if name == b"authorization" and value[:7].lower() == b"bearer ":
            return value[7:].strip()
        if name == b"x-api-key":
            return value.strip()
    return None


class KeyRing:
    """The accepted keys (as digests), each with its owner name."""

    def __init__(self, keys: Iterable[str] = ()) -> None:
        self._keys = [(_digest(k.encode("utf-8")), owner_name(k)) for k in dict.fromkeys(keys)]

    def __bool__(self) -> bool:
        return bool(self._keys)

    def owner(self, presented: bytes | None) -> str | None:
        """The owner of a presented key: its name, ``ANONYMOUS`` when no key is configured,
        None when the key is missing or wrong."""
        if not self._keys:
            return ANONYMOUS
        if presented is None:
            return None
        digest, found = _digest(presented), None
        for want, name in self._keys:
            if hmac.compare_digest(digest, want):
                found = name
        return found


def request_owner(scope: Scope) -> str:
    """The owner the middleware found for this request (``ANONYMOUS`` without keys)."""
    return scope.get(OWNER_SCOPE_KEY, ANONYMOUS)


def origin_allowed(headers: list[tuple[bytes, bytes]], allowed: Iterable[str]) -> bool:
    """A WebSocket's ``Origin`` check: no ``Origin`` (a non-browser client) passes; a
    browser's must be the server's own (the playground at ``/``: its host and port are the
    ``Host`` the browser connects to) or be listed (``*`` lists every origin)."""
    origin = next((v for n, v in headers if n == b"origin"), None)
    if origin is None:
        return True
    host = next((v for n, v in headers if n == b"host"), None)
    text = origin.decode("latin-1")
    if host is not None and text.partition("://")[2] == host.decode("latin-1"):
        return True  # same origin: a page this server served
    allowed = set(allowed)
    return "*" in allowed or text in allowed


class ApiKeyMiddleware:
    """``open_paths``: the exact paths a ``GET`` may read without a key (``/health``, and
    ``/metrics`` unless the operator requires a key for it)."""

    def __init__(self, app: ASGIApp, keys: KeyRing,
                 open_paths: frozenset[str] = OPEN_PATHS) -> None:
        self.app = app
        self.keys = keys
        self.open_paths = open_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or (scope["path"] in self.open_paths
                                       and scope["method"] == "GET"):
            await self.app(scope, receive, send)
            return
        owner = self.keys.owner(presented_key(scope.get("headers", [])))
        if owner is None:
            response = error_response(401, "missing or invalid API key", None, "invalid_api_key",
                                      headers={"WWW-Authenticate": "Bearer"})
            await response(scope, receive, send)
            return
        scope[OWNER_SCOPE_KEY] = owner
        await self.app(scope, receive, send)
