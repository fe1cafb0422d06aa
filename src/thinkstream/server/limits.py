"""What keeps the server standing: body-size limit, bounded admission, rate buckets,
request-id hygiene.

``BodyLimitMiddleware`` reads a request body up to ``max_body_bytes`` before the app sees it
(413 past it, whether announced by ``Content-Length`` or streamed in chunks), then replays
it. ``Admission`` counts the sequences the server has handed to the engine and refuses a
request whose ``n`` sequences would not all fit, so a request is admitted whole or not at
all; refusal is immediate. ``RateBucket`` meters a client's updates (a session's chunks).
``clean_request_id`` makes a client-chosen id short and log-safe.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from thinkstream.server.errors import error_response

_UNSAFE = re.compile(r"[^A-Za-z0-9._:\-]")


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        self.max = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        too_big = error_response(413, f"request body exceeds {self.max} bytes", None,
                                 "body_too_large")
        for name, value in scope.get("headers", []):
            if name == b"content-length" and value.isdigit() and int(value) > self.max:
                await too_big(scope, receive, send)
                return
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max:
                await too_big(scope, receive, send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body, replayed = b"".join(chunks), False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


class Admission:
    """Sequences in flight, bounded by ``capacity`` (engine slots + waiting queue)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.in_flight = 0
        self.requests = 0

    def try_admit(self, num_seqs: int) -> bool:
        if self.in_flight + num_seqs > self.capacity:
            return False
        self.in_flight += num_seqs
        self.requests += 1
        return True

    def release(self, num_seqs: int) -> None:
        self.in_flight -= num_seqs
        self.requests -= 1


class RateBucket:
    """A token bucket (the classic traffic-shaping meter): it holds up to ``burst`` units,
    refilled at ``rate`` units per second; ``take(cost)`` spends ``cost`` units if it holds
    them. Starts full. ``clock``: seconds, monotonic (a test passes its own)."""

    def __init__(self, rate: float, burst: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.rate, self.burst, self.clock = rate, burst, clock
        self.level = float(burst)
        self._stamp = clock()

    def take(self, cost: float = 1.0) -> bool:
        now = self.clock()
        self.level = min(self.burst, self.level + (now - self._stamp) * self.rate)
        self._stamp = now
        if self.level < cost:
            return False
        self.level -= cost
        return True


def clean_request_id(raw: str | None, max_len: int) -> str:
    """A client id with anything but ``[A-Za-z0-9._:-]`` replaced by ``_``, cut to
    ``max_len``; a fresh random id when none (or nothing usable) is given."""
    if raw:
        cleaned = _UNSAFE.sub("_", raw[:max_len])
        if cleaned.strip("_"):
            return cleaned
    return uuid.uuid4().hex
