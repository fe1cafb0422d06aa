"""``SessionHub``: streaming-input sessions for the server, with their limits.

Transport-independent (the HTTP routes and the WebSocket both use it): it checks who owns a
session (its owner, ``auth``; others get 404), how many open sessions an owner has, the size
and rate of chunks (a replace of N characters or ids costs what appending them would:
ceil(N / ``max_chunk_chars``) chunks, at least one), and closes sessions idle past
``idle_timeout_s`` (reason ``idle_timeout``, blocks freed). Every refusal is an ``APIError`` with a 4xx status; session
conflicts (a sequence gap, input after close) are 409 and carry the expected number in the
message and in the ``X-Expected-Seq`` header. Engine work goes through ``AsyncLLM``'s
session commands.

A session is *live* from its open until its answer has streamed (or it is aborted): it holds
its sequences of the server's admission capacity (``ServerState.admit``) all that time, and
a drain (``lifecycle``) waits for it. Opens are refused with 503 while the server drains.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from thinkstream.engine.llm_engine import RequestError
from thinkstream.engine.request import RequestOutput
from thinkstream.sampling_params import ParamError, SamplingParams
from thinkstream.server.config import SessionLimits
from thinkstream.server.errors import APIError
from thinkstream.server.limits import RateBucket
from thinkstream.server.metrics import RequestTimer
from thinkstream.streaming.errors import (
    SequenceGapError,
    SessionConflictError,
    SessionError,
    SessionLimitError,
    SessionNotFoundError,
)
from thinkstream.streaming.sessions import SessionInfo, UpdateResult

if TYPE_CHECKING:
    from thinkstream.server.serving import ServerState




def api_error(exc: BaseException) -> BaseException:
    """A session or engine error as the APIError the client is told (others unchanged)."""
    if isinstance(exc, SessionNotFoundError):
        return APIError(404, str(exc), "session_id", "session_not_found")
    if isinstance(exc, SessionConflictError):
        code = "sequence_gap" if isinstance(exc, SequenceGapError) else "session_closed"
        return APIError(409, str(exc), exc.param, code, {"X-Expected-Seq": str(exc.expected_seq)})
    if isinstance(exc, SessionLimitError):
        return APIError(exc.status, str(exc), exc.param, exc.code)
    if isinstance(exc, SessionError | RequestError | ParamError):
        return APIError(400, str(exc), exc.param, "invalid_value")
    return exc


@dataclass
class _Owned:
    key: str
    bucket: RateBucket  # chunks per second
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    open: bool = True  # input still open (counts against the owner's session limit)
    view: tuple[int | None, int, bool] = (None, 1, False)  # answer format: logprobs, n, thinking
    num_seqs: int = 1  # admission held while live
    live: bool = True  # open or answering: admission held, a drain waits for it
    streaming: bool = False  # the answer stream is being read


class SessionHub:
    def __init__(self, state: ServerState, limits: SessionLimits | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.state = state
        self.clock = clock  # seconds, monotonic: the chunk-rate buckets' clock
        self.llm = llm = state.llm
        self.limits = limits = limits or state.config.sessions
        context = llm.engine.max_model_len - 1  # the engine enforces this limit per update
        llm.sessions.max_input_tokens = min(limits.max_tokens_per_session or context, context)
        self._owned: dict[str, _Owned] = {}
        self._over: OrderedDict[str, None] = OrderedDict()  # ended sessions, oldest first
        self._reaper: asyncio.Task | None = None

    # ------------------------------------------------------------------ helpers
    def _session(self, key: str, sid: str) -> _Owned:
        owned = self._owned.get(sid)
        if owned is None or owned.key != key:  # another key's session does not exist for you
            raise APIError(404, f"session {sid!r} not found", "session_id", "session_not_found")
        return owned

    def open_count(self, key: str) -> int:
        return sum(o.open for o in self._owned.values() if o.key == key)

    def _take_chunk(self, owned: _Owned, size: int, whole: bool = False) -> None:
        """Charge an update of ``size`` characters (or ids, or bytes) to the session's rate:
        one chunk for an append (at most ``max_chunk_chars``), ceil(size / max_chunk_chars)
        for a ``whole`` input (a replace: what appending it would cost, at most the burst)."""
        lim = self.limits
        cost = max(1, -(-size // lim.max_chunk_chars))
        if cost > (lim.chunk_burst if whole else 1):
            most = lim.max_chunk_chars * (lim.chunk_burst if whole else 1)
            what = "an input (chunk size x chunk burst)" if whole else "a chunk"
            raise APIError(413, f"input: {what} may have at most {most} characters, got {size}",
                           "input", "chunk_too_large")
        if not owned.bucket.take(cost):
            as_chunks = f" (this one counts as {cost})" if cost > 1 else ""
            raise APIError(429, f"more than {lim.max_chunks_per_s:g} chunks per second on this "
                           f"session{as_chunks}; slow down", None, "chunk_rate_exceeded",
                           {"Retry-After": "1"})

    def is_live(self, sid: str) -> bool:
        """``sid`` is open or answering (not ended by an answer, an abort or the idle timeout)."""
        owned = self._owned.get(sid)
        return owned is not None and owned.live

    def num_live(self) -> int:
        return sum(o.live for o in self._owned.values())

    def _finish(self, sid: str) -> None:
        """The session is over for the server: its admission is released (once)."""
        owned = self._owned.get(sid)
        if owned is not None and owned.live:
            owned.live = False
            self.state.admission.release(owned.num_seqs)

    def _ended(self, sid: str) -> None:
        """The session is over: still answerable (GET) while the engine remembers it, then
        forgotten with it, oldest first, so the records stay bounded."""
        owned = self._owned.get(sid)
        if owned is None:
            return
        owned.open = False
        self._over[sid] = None
        while len(self._over) > self.llm.sessions.remember:
            self._drop(self._over.popitem(last=False)[0])

    def _drop(self, sid: str) -> None:
        self._finish(sid)
        self._owned.pop(sid, None)

    def view(self, key: str, sid: str) -> tuple[int | None, int, bool]:
        """How the session's answer is formatted (set at open)."""
        return self._session(key, sid).view

    async def _run(self, coro):
        try:
            return await coro
        except Exception as exc:  # noqa: BLE001 - mapped to a 4xx where it is the client's
            raise api_error(exc) from None

    # --------------------------------------------------------------- operations
    async def open(self, key: str, prompt: str | Sequence[int] | None,
                   messages: list[dict] | None, params: SamplingParams,
                   thinking=None, view: tuple[int | None, int, bool] = (None, 1, False),
                   salt: object = None) -> SessionInfo:
        self.state.check_open()
        self.start_reaper()
        if self.open_count(key) >= self.limits.max_sessions_per_key:
            raise APIError(429, f"at most {self.limits.max_sessions_per_key} open sessions per "
                           "API key", None, "too_many_sessions", {"Retry-After": "1"})
        if isinstance(prompt, str) and len(prompt) > self.limits.max_chunk_chars:
            raise APIError(413, f"prompt: at most {self.limits.max_chunk_chars} characters",
                           "prompt", "chunk_too_large")
        num_seqs = params.n + (thinking is not None)  # a thinking session's reasoning sequence
        self.state.admit(num_seqs)
        try:
            info = await self._run(self.llm.open_session(prompt, messages, params,
                                                         thinking=thinking, salt=salt))
        except BaseException:
            self.state.admission.release(num_seqs)
            raise
        bucket = RateBucket(self.limits.max_chunks_per_s, self.limits.chunk_burst, self.clock)
        self._owned[info.session_id] = _Owned(key, bucket, view=view, num_seqs=num_seqs)
        return info

    async def append(self, key: str, sid: str, data: str | bytes | Sequence[int],
                     seq: int | None) -> UpdateResult:
        owned = self._session(key, sid)
        async with owned.lock:  # one update at a time per session, in arrival order
            self._take_chunk(owned, len(data))
            return await self._run(self.llm.append_session(sid, data, seq))

    async def replace(self, key: str, sid: str, data: str | Sequence[int],
                      seq: int | None) -> UpdateResult:
        owned = self._session(key, sid)
        async with owned.lock:
            self._take_chunk(owned, len(data), whole=True)
            return await self._run(self.llm.replace_session(sid, data, seq))

    async def close(self, key: str, sid: str, seq: int | None,
                    data: str | Sequence[int] | None = None) -> AsyncIterator[RequestOutput]:
        owned = self._session(key, sid)
        async with owned.lock:
            if data is not None:
                self._take_chunk(owned, len(data))
            timer = RequestTimer(self.state.metrics)  # latency from the close, as a request's
            stream = await self._run(self.llm.close_session(sid, seq, data))
            self._ended(sid)
            return self._answer(sid, owned, stream, timer)

    async def _answer(self, sid: str, owned: _Owned, stream: AsyncIterator[RequestOutput],
                      timer: RequestTimer) -> AsyncIterator[RequestOutput]:
        """The answer stream, observed in the latency histograms (TTFT from the close);
        the session stops being live when it ends or is left."""
        owned.streaming = True
        try:
            async for out in stream:
                timer.tokens(sum(len(o.new_token_ids) for o in out.outputs))
                yield out
            timer.done()
        finally:
            self._finish(sid)
            await stream.aclose()  # aborts the session if left early (no await inside)

    async def info(self, key: str, sid: str) -> SessionInfo:
        self._session(key, sid)
        return await self._run(self.llm.session_info(sid))

    async def abort(self, key: str, sid: str, reason: str = "abort") -> bool:
        self._session(key, sid)
        self._ended(sid)
        self._finish(sid)
        return await self._run(self.llm.abort_session(sid, reason))

    async def abort_all(self, reason: str = "abort") -> None:
        """Abort every live session (shutdown). An answer being streamed ends with
        ``finish_reason="abort"`` and stays live until its stream has sent that."""
        for sid, owned in list(self._owned.items()):
            if not owned.live:
                continue
            if not owned.streaming:
                self._ended(sid)
                self._finish(sid)
            try:
                await self.llm.abort_session(sid, reason)
            except Exception:  # noqa: BLE001 - the engine died: nothing left to abort
                self._finish(sid)

    # --------------------------------------------------------------- idle reaper
    def start_reaper(self) -> None:
        if self._reaper is None or self._reaper.done():
            self._reaper = asyncio.ensure_future(self._reap_forever())

    async def reap(self) -> list[str]:
        """Close sessions idle past the timeout (reason ``idle_timeout``); returns their ids."""
        ids = await self.llm.idle_sessions(self.limits.idle_timeout_s)
        for sid in ids:
            await self.llm.abort_session(sid, "idle_timeout")
            self._ended(sid)
            self._finish(sid)
        await self._settle_unread()
        return ids

    async def _settle_unread(self) -> None:
        """A closed session whose answer stream was never read (its client left before the
        response started) is over once the engine says so: release it."""
        for sid, owned in list(self._owned.items()):
            if owned.live and not owned.open and not owned.streaming:
                try:
                    over = (await self.llm.session_info(sid)).state in ("finished", "aborted")
                except SessionNotFoundError:
                    over = True
                if over:
                    self._finish(sid)

    async def _reap_forever(self) -> None:
        period = min(1.0, self.limits.idle_timeout_s / 4)
        while self.llm.dead is None:
            await asyncio.sleep(period)
            try:
                await self.reap()
            except Exception:  # noqa: BLE001 - the engine died: nothing left to reap
                return
            self._forget()

    def _forget(self, keep: int = 4096) -> None:
        ended = [sid for sid, o in self._owned.items() if not o.open]
        for sid in ended[: max(0, len(ended) - keep)]:
            self._drop(sid)

    def shutdown(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
