"""AsyncLLM: the engine driven by a background thread, for asyncio callers (the server).

The engine thread owns the ``LLMEngine``: it drains a command queue (add, abort, arbitrary
calls), runs one step, and hands each request's outputs to that request's asyncio queue
with ``loop.call_soon_threadsafe``. The event loop never waits on a forward pass; one step
serves every request in flight. Validation and tokenization happen in the caller, so a bad
request is refused before it reaches the engine thread.

If a step raises, every request in flight receives the error, ``dead`` turns True and the
thread stops: callers never hang.
"""

from __future__ import annotations

import asyncio
import functools
import queue
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from thinkstream.engine.llm_engine import LLMEngine, RequestError
from thinkstream.engine.output import RequestState
from thinkstream.engine.request import RequestOutput
from thinkstream.parallel.config import ParallelConfig
from thinkstream.parallel.paths import start_paths
from thinkstream.sampling_params import SamplingParams
from thinkstream.streaming.sessions import SessionInfo, SessionManager, UpdateResult


class EngineDeadError(RuntimeError):
    """The engine loop stopped after an error; no request can be served."""


@dataclass
class EngineStats:
    """Counters the metrics endpoint reads (updated by the engine thread only; what the
    engine holds now is ``LLMEngine.usage()``)."""

    steps: int = 0
    prompt_tokens: int = 0
    generation_tokens: int = 0
    finished: dict[str, int] = field(default_factory=dict)


class AsyncLLM:
    def __init__(self, engine: LLMEngine, idle_wait_s: float = 0.05) -> None:
        self.engine = engine
        self.sessions = SessionManager(engine)  # touched on the engine thread only
        self.stats = EngineStats()
        self.dead: BaseException | None = None
        self._commands: queue.Queue[Callable[[], None]] = queue.Queue()
        self._streams: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Queue]] = {}
        self._listeners: dict[str, list[tuple[asyncio.AbstractEventLoop, asyncio.Queue]]] = {}
        self._stop = threading.Event()
        self._idle_wait_s = idle_wait_s
        self._thread = threading.Thread(target=self._run, name="thinkstream-engine", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------ caller side
    @property
    def tokenizer(self):
        return self.engine.tokenizer

    async def generate(
        self, prompt: str | Sequence[int], params: SamplingParams, request_id: str | None = None,
        salt: object = None, parallel: ParallelConfig | None = None,
        start: Callable[[LLMEngine, RequestState], Any] | None = None,
    ) -> AsyncIterator[RequestOutput]:
        """Stream a request's outputs; aborts the request if the consumer stops early.
        ``salt``: prefix-cache namespace (requests share cached blocks only with the same salt).
        ``parallel``: reasoning paths, then a summary / vote (``parallel.paths``). ``start``:
        run on the engine thread right after the add, the request's input left open for it
        (the fork / join threads of ``parallel.api.AsyncThreads``)."""
        self._check_alive()
        if parallel is not None:
            start = functools.partial(start_paths, cfg=parallel)
        state = self.engine.make_request(request_id, prompt, params, salt=salt,
                                         input_closed=start is None)  # raises on bad input
        if start is not None and not state.prompt_token_ids:
            raise RequestError("prompt", "prompt: must not be empty")
        loop = asyncio.get_running_loop()
        q: asyncio.Queue = asyncio.Queue()
        try:  # a refusal (a duplicate id, say) raises here and has touched nothing
            await self.call(lambda _: self._add_now(state, (loop, q), start))
        except asyncio.CancelledError:  # the add may still run: undo it, if it was ours
            self._commands.put(lambda: self._abort_own(state))
            raise
        async for item in self._follow(state.request_id, q,
                                       lambda: self._commands.put(lambda: self._abort_own(state))):
            yield item

    async def _follow(
        self, key: str, q: asyncio.Queue, on_abandon: Callable[[], None]
    ) -> AsyncIterator[RequestOutput]:
        """Yield a stream's outputs until one is finished (errors are raised); if the
        consumer stops first, ``on_abandon`` runs (the request is aborted)."""
        finished = False
        try:
            async for item in _until_finished(q):
                yield item
            finished = True
        finally:
            if not finished:
                on_abandon()
            self._commands.put(lambda: self._drop_stream(key, q))

    def in_use(self, request_id: str) -> bool:
        """Whether a request or session holds ``request_id`` now (a read from any thread: a
        check before admission; the engine thread's add stays the authority)."""
        return request_id in self.engine.requests or request_id in self._streams

    def abort(self, request_id: str) -> None:
        """Abort a request (applied before the next step). A consumer still reading its
        stream receives a last output with ``finish_reason="abort"``."""
        self._commands.put(lambda: self._abort_now(request_id))

    async def cancel(self, request_id: str) -> bool:
        """Abort a request; False if it is unknown or already finished."""
        return await self.call(lambda _: self._abort_now(request_id))

    async def call(self, fn: Callable[[LLMEngine], Any]) -> Any:
        """Run ``fn(engine)`` on the engine thread between steps and return its result."""
        self._check_alive()
        loop = asyncio.get_running_loop()
        fut: asyncio.Future = loop.create_future()

        def run() -> None:
            try:
                result = fn(self.engine)
            except Exception as exc:
                _post(loop, _set_exception, fut, exc)
            else:
                _post(loop, _set_result, fut, result)

        self._commands.put(run)
        while True:  # the loop may die with ``run`` still queued: never wait forever
            try:
                return await asyncio.wait_for(asyncio.shield(fut), 0.5)
            except TimeoutError:
                self._check_alive()

    # ---------------------------------------------------------- streaming input
    # Sessions (``streaming.sessions``) live on the engine thread; every operation is one
    # command, so chunks are applied between steps in the order they were sent.
    async def open_session(self, prompt: str | Sequence[int] | None = None,
                           messages: Sequence[dict] | None = None,
                           params: SamplingParams | None = None,
                           session_id: str | None = None, thinking=None,
                           salt: object = None) -> SessionInfo:
        return await self.call(lambda _: self.sessions.open(session_id, prompt, messages, params,
                                                            salt=salt, thinking=thinking))

    async def session_events(self, session_id: str) -> AsyncIterator[RequestOutput]:
        """A session's outputs while its input is open too (think while reading: notes as
        they are written), starting with a snapshot of it now; ends when it finishes (a
        session already over yields the snapshot alone). Other consumers share the ``new_*``
        deltas, so a listener reads the cumulative fields (``reasoning_content``)."""
        loop = asyncio.get_running_loop()
        q: asyncio.Queue = asyncio.Queue()
        self._listeners.setdefault(session_id, []).append((loop, q))
        try:  # subscribed first: whatever happens after the snapshot is seen on ``q``
            now = await self.call(lambda _: self.sessions.snapshot(session_id))
            yield now
            if now.finished:
                return
            async for item in _until_finished(q):
                yield item
        finally:
            subs = self._listeners.get(session_id, [])
            if (loop, q) in subs:
                subs.remove((loop, q))
            if not subs:
                self._listeners.pop(session_id, None)

    async def append_session(self, session_id: str, data: str | bytes | Sequence[int],
                             seq: int | None = None) -> UpdateResult:
        return await self.call(lambda _: self.sessions.append(session_id, data, seq))

    async def replace_session(self, session_id: str, data: str | Sequence[int],
                              seq: int | None = None) -> UpdateResult:
        return await self.call(lambda _: self.sessions.replace(session_id, data, seq))

    async def close_session(self, session_id: str, seq: int | None = None,
                            data: str | bytes | Sequence[int] | None = None,
                            ) -> AsyncIterator[RequestOutput]:
        """End a session's input (after ``data``, a last chunk, if given); returns the
        answer's stream (raises before streaming if the close is refused). Leaving the
        stream early aborts the session."""
        loop = asyncio.get_running_loop()
        q: asyncio.Queue = asyncio.Queue()

        def close() -> None:  # the stream is registered once the close is accepted
            self.sessions.close(session_id, seq, data)
            self._streams[session_id] = (loop, q)
            self.stats.prompt_tokens += len(self.engine.input_ids(session_id))  # the answer's

        await self.call(lambda _: close())
        return self._session_stream(session_id, q)

    def _session_stream(self, session_id: str, q: asyncio.Queue) -> AsyncIterator[RequestOutput]:
        return self._follow(session_id, q, lambda: self._commands.put(
            lambda: self._abort_session_now(session_id, "abort")))

    async def abort_session(self, session_id: str, reason: str = "abort") -> bool:
        """Abort an open or answering session, freeing its blocks; False if already over."""
        return await self.call(lambda _: self._abort_session_now(session_id, reason))

    async def session_info(self, session_id: str) -> SessionInfo:
        return await self.call(lambda _: self.sessions.info(session_id))

    async def idle_sessions(self, timeout_s: float) -> list[str]:
        return await self.call(lambda _: self.sessions.idle(timeout_s))

    def _abort_session_now(self, session_id: str, reason: str) -> bool:
        state = self.engine.requests.get(session_id)
        if not self.sessions.abort(session_id, reason):
            return False
        if state is not None:
            self._deliver(session_id, self._count_finished(state.make_output()))
        return True

    def shutdown(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._commands.put(lambda: None)
        self._thread.join(timeout)

    def _check_alive(self) -> None:
        if self.dead is not None:
            raise EngineDeadError(f"engine loop stopped: {self.dead!r}")

    # ------------------------------------------------------------ engine thread
    def _deliver(self, request_id: str, item: RequestOutput | BaseException) -> None:
        """Hand ``item`` to the request's stream and listeners. A consumer whose event loop
        is closed is gone (its stream was never read to the end): it is dropped, and a
        request nobody reads any more is aborted; the engine thread never fails for it."""
        last = isinstance(item, BaseException) or item.finished
        target = self._streams.pop(request_id, None) if last else self._streams.get(request_id)
        if target is not None and not _post(target[0], target[1].put_nowait, item):
            self._streams.pop(request_id, None)
            if not last:
                self._commands.put(lambda: self._abandon(request_id))
        subs = self._listeners.get(request_id)
        if subs:
            subs[:] = [(loop, q) for loop, q in subs if _post(loop, q.put_nowait, item)]

    def _add_now(self, state: RequestState,
                 target: tuple[asyncio.AbstractEventLoop, asyncio.Queue],
                 start: Callable[[LLMEngine, RequestState], Any] | None = None) -> None:
        """Queue a request (then ``start`` it: fork its paths, say) and register its
        stream, or raise having touched neither."""
        rid = state.request_id
        if rid in self._streams:  # a closing session's answer, say: the engine may not know
            raise RequestError("request_id", f"request_id: {rid!r} is already in use")
        self.engine.add(state)
        if start is not None:
            try:
                start(self.engine, state)
            except BaseException:
                self.engine.abort(rid)
                raise
        self._streams[rid] = target
        self.stats.prompt_tokens += len(state.prompt_token_ids)

    def _abort_own(self, state: RequestState) -> None:
        """Abort the request ``state`` if it is still the one running under its id (never
        another request that took the id since, or held it when ``state`` was refused)."""
        if self.engine.requests.get(state.request_id) is state:
            self._abort_now(state.request_id)

    def _drop_stream(self, key: str, q: asyncio.Queue) -> None:
        entry = self._streams.get(key)
        if entry is not None and entry[1] is q:
            del self._streams[key]

    def _abandon(self, request_id: str) -> None:
        if request_id not in self._streams and not self._abort_session_now(request_id, "client_gone"):
            self._abort_now(request_id)

    def _abort_now(self, request_id: str) -> bool:
        state = self.engine.requests.get(request_id)
        if not self.engine.abort(request_id):
            return False
        if state is not None:
            self._deliver(request_id, self._count_finished(state.make_output()))
        return True

    def _count_finished(self, out: RequestOutput) -> RequestOutput:
        """Count a finished request's sequences by finish reason (aborts included), and the
        tokens its parallel paths or its reasoning sampled (generated, as usage counts them)."""
        if out.finished:
            self.stats.generation_tokens += sum(o.num_path_tokens + o.num_reasoning_tokens
                                                for o in out.outputs)
            for o in out.outputs:
                reason = o.finish_reason or "unknown"
                self.stats.finished[reason] = self.stats.finished.get(reason, 0) + 1
        return out

    def _drain_commands(self, block: bool) -> None:
        try:
            cmd = self._commands.get(timeout=self._idle_wait_s) if block else self._commands.get_nowait()
        except queue.Empty:
            return
        cmd()
        while True:
            try:
                self._commands.get_nowait()()
            except queue.Empty:
                return

    def _run(self) -> None:
        engine = self.engine
        try:
            while not self._stop.is_set():
                # nothing to compute, or the last step could not progress (waiting for
                # input or commands): wait for a command instead of spinning
                self._drain_commands(block=not engine.has_work()
                                     or not engine.last_step_progress)
                engine.check_health()  # a part that died while idle (a tensor-parallel rank)
                if not engine.has_unfinished_requests():
                    continue
                outputs = engine.step()
                self.stats.steps += 1
                for out in outputs:
                    self.stats.generation_tokens += sum(len(o.new_token_ids) for o in out.outputs)
                    self._count_finished(out)
                    self._deliver(out.request_id, out)
        except BaseException as exc:  # noqa: BLE001 - any failure must reach every caller
            self.dead = exc
            error = EngineDeadError(f"engine step failed: {exc!r}")
            error.__cause__ = exc  # the server shows a cause marked ``public_reason``
            for rid in list(engine.requests):
                engine.abort(rid)  # bookkeeping only: gives every block back
            for rid in list(self._streams):
                self._deliver(rid, error)


def _post(loop: asyncio.AbstractEventLoop, fn: Callable[..., Any], *args: Any) -> bool:
    """Schedule ``fn(*args)`` on ``loop`` from the engine thread; False if the loop is closed
    (its caller is gone), so a vanished consumer can never stop the engine."""
    try:
        loop.call_soon_threadsafe(fn, *args)
    except RuntimeError:  # "Event loop is closed"
        return False
    return True


def _set_result(fut: asyncio.Future, value: Any) -> None:
    if not fut.done():
        fut.set_result(value)


def _set_exception(fut: asyncio.Future, exc: BaseException) -> None:
    if not fut.done():
        fut.set_exception(exc)


async def _until_finished(q: asyncio.Queue) -> AsyncIterator[RequestOutput]:
    """Outputs from a queue up to and including the finished one; an exception is raised."""
    while True:
        item = await q.get()
        if isinstance(item, BaseException):
            raise item
        yield item
        if item.finished:
            return
