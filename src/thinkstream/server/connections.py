"""Connection guards uvicorn lacks: a deadline for request headers and a connection cap.

uvicorn closes idle keep-alive connections (``timeout_keep_alive``) but waits forever for a
request whose headers never finish, so a client could hold sockets open by sending half a
request. ``guarded_protocol`` builds uvicorn's HTTP protocol class with two additions:

- a connection whose request headers are not all in ``header_timeout`` seconds after its
  first byte (or after it connects) is closed; the timer stops once the headers are in,
  and once the connection is upgraded to a WebSocket;
- past ``max_connections`` open connections (HTTP and WebSocket), a new one is answered 503
  with an OpenAI error body and closed (its request is read and dropped meanwhile).
"""

from __future__ import annotations

import asyncio
import json

from uvicorn.protocols.http.auto import AutoHTTPProtocol

from thinkstream.server.errors import error_body

REFUSED_LINGER_S = 1.0


def _refusal() -> bytes:
    body = json.dumps(error_body(503, "too many open connections; retry later", None,
                                 "too_many_connections")).encode()
    head = ("HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\nretry-after: 1\r\nconnection: close\r\n\r\n")
    return head.encode("latin-1") + body


class _Guard:
    """Mixed in before uvicorn's protocol (which supplies ``cycle``, ``transport``, ``loop``
    and ``connections``)."""

    header_timeout: float = 10.0
    max_connections: int = 1024
    _timer: asyncio.TimerHandle | None = None
    _refused: bool = False

    def connection_made(self, transport) -> None:
        if len(self.connections) >= self.max_connections:
            # Answer, end our side, and drop what the client sends for a moment before
            # closing: closing with its request unread would reset the connection and
            # could destroy the answer before the client reads it.
            self._refused = True
            transport.write(_refusal())
            if transport.can_write_eof():
                transport.write_eof()
            asyncio.get_running_loop().call_later(REFUSED_LINGER_S, transport.close)
            return
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        super().data_received(data)
        if self.transport.get_protocol() is not self:  # upgraded: the WebSocket's own now
            self._disarm()
        elif self._awaiting_headers():
            if self._timer is None:
                self._arm()
        else:
            self._disarm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        if not self._refused:
            super().connection_lost(exc)

    def _awaiting_headers(self) -> bool:
        return self.cycle is None or self.cycle.response_complete

    def _arm(self) -> None:
        self._disarm()
        self._timer = self.loop.call_later(self.header_timeout, self._expired)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expired(self) -> None:
        self._timer = None
        if (self._awaiting_headers() and self.transport.get_protocol() is self
                and not self.transport.is_closing()):
            self.transport.close()


def guarded_protocol(header_timeout: float, max_connections: int) -> type[asyncio.Protocol]:
    """uvicorn's HTTP protocol (h11 or httptools, as uvicorn picks) with the guards."""
    return type("GuardedHTTPProtocol", (_Guard, AutoHTTPProtocol),
                {"header_timeout": header_timeout, "max_connections": max_connections})
