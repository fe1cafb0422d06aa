"""Running one HTTP request on the engine: admission, fan-out over prompts, disconnects.

A ``Job`` holds the engine requests made for one HTTP request (one per prompt; each has
the request's ``n`` sequences). It is admitted whole or refused (429 while the server is
full, 400 if it could never fit), registered under its owner and public id (for
``/v1/requests/{id}/cancel``), and merges the prompts' output streams. Whatever ends it
(completion, a client disconnect, a cancel, an engine failure), leaving ``outputs()``
aborts every engine request still running and releases its admission.

Ids are per owner (``auth``): the engine id of a request made with an API key is
``<owner>/<public id>``, so two keys may use the same id and neither reaches the other's
request; the client only ever sees its public id.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVar

from starlette.requests import Request

from thinkstream.async_llm import AsyncLLM, EngineDeadError
from thinkstream.engine.request import RequestOutput
from thinkstream.parallel.config import ParallelConfig
from thinkstream.sampling_params import SamplingParams
from thinkstream.server.auth import ANONYMOUS, KeyRing
from thinkstream.server.config import ServerConfig
from thinkstream.server.errors import APIError
from thinkstream.server.limits import Admission
from thinkstream.server.metrics import RequestTimer, ServerMetrics
from thinkstream.server.responses_ledger import ResponsesLedger
from thinkstream.server.responses_store import ResponseStore

if TYPE_CHECKING:
    from thinkstream.server.session_hub import SessionHub

T = TypeVar("T")


@dataclass
class ServerState:
    """Everything the routes share; one per app (``app.state.server``)."""

    llm: AsyncLLM
    config: ServerConfig
    metrics: ServerMetrics
    admission: Admission
    keys: KeyRing = field(default_factory=KeyRing)
    live: dict[tuple[str, str], Job] = field(default_factory=dict)  # (owner, public id)
    hub: SessionHub | None = None  # the streaming-input sessions
    responses: ResponsesLedger = field(default_factory=ResponsesLedger)  # for their cancel
    store: ResponseStore = field(default_factory=lambda: ResponseStore(0))  # stored responses
    background: dict[tuple[str, str], asyncio.Task] = field(default_factory=dict)  # running
    draining: bool = False
    started: float = field(default_factory=time.time)

    def check_open(self) -> None:
        """503 when the engine has stopped or the server is shutting down."""
        if self.llm.dead is not None:
            raise APIError(503, "the engine has stopped", None, "engine_unavailable")
        if self.draining:
            raise APIError(503, "the server is shutting down", None, "shutting_down",
                           {"Retry-After": str(self.config.retry_after_s)})

    def admit(self, num_seqs: int, param: str | None = "n") -> None:
        """Take ``num_seqs`` sequences of the admission capacity, or raise: 400 if they
        could never fit, 429 (with ``Retry-After``) while the server is full."""
        capacity = self.admission.capacity
        if num_seqs > capacity:
            raise APIError(400, f"{param or 'request'}: {num_seqs} sequences can never be "
                           f"admitted; the server holds at most {capacity} (max_num_seqs + "
                           "max_queue)", param, "exceeds_capacity")
        if not self.admission.try_admit(num_seqs):
            raise APIError(429, "the server is at capacity; retry later", None,
                           "queue_full", {"Retry-After": str(self.config.retry_after_s)})

    def queued_seqs(self) -> int:
        """Sequences of admitted requests the engine has not taken in yet (a metrics gauge;
        read from the event loop while the engine thread steps: membership tests only)."""
        engine = self.llm.engine
        return sum(job.params.n for job in list(self.live.values())
                   for i in range(len(job.prompts))
                   if i not in job.answered and job.engine_id(i) not in engine.requests)

    def in_flight(self) -> int:
        """Requests, background responses and sessions (open or answering) still running:
        what a drain waits for."""
        return len(self.live.keys() | self.background.keys()) + (
            self.hub.num_live() if self.hub is not None else 0)

    async def abort_all(self) -> None:
        """Abort every request and session in flight (streams end with ``abort``)."""
        for job in list(self.live.values()):
            await job.cancel()
        if self.hub is not None:
            await self.hub.abort_all()


class ClientGone(Exception):
    """The client disconnected before the response was ready."""


@dataclass
class Job:
    state: ServerState
    public_id: str
    prompts: list[list[int]]
    params: SamplingParams
    owner: str = ANONYMOUS
    timer: RequestTimer | None = None
    admitted: bool = False
    answered: set[int] = field(default_factory=set)  # prompts with an output so far
    salt: object = None  # prefix-cache namespace (``cache_salt``)
    parallel: ParallelConfig | None = None  # reasoning paths (``parallel.paths``)

    @property
    def num_seqs(self) -> int:
        per_prompt = self.params.n if self.parallel is None else self.parallel.paths + 1
        return len(self.prompts) * per_prompt

    def engine_id(self, i: int) -> str:
        base = self.public_id if self.owner == ANONYMOUS else f"{self.owner}/{self.public_id}"
        return base if len(self.prompts) == 1 else f"{base}#p{i}"

    def admit(self) -> None:
        """Admit all sequences or raise 503 / 400 / 429; registers the job for cancels."""
        st = self.state
        st.check_open()
        if (self.owner, self.public_id) in st.live or any(
                st.llm.in_use(self.engine_id(i)) for i in range(len(self.prompts))):
            raise APIError(400, "request_id is already in use by a running request or an open "
                           "session", "request_id", "duplicate_request_id")
        st.admit(self.num_seqs, "n" if len(self.prompts) == 1 else "prompt")
        self.admitted = True
        st.live[(self.owner, self.public_id)] = self
        self.timer = RequestTimer(st.metrics)

    def release(self) -> None:
        if self.admitted:
            self.admitted = False
            self.state.admission.release(self.num_seqs)
            self.state.live.pop((self.owner, self.public_id), None)

    async def cancel(self) -> bool:
        hits = [await self.state.llm.cancel(self.engine_id(i)) for i in range(len(self.prompts))]
        return any(hits)

    async def outputs(self) -> AsyncIterator[tuple[int, RequestOutput]]:
        """(prompt index, output) as the engine produces them, until all prompts finish."""
        queue: asyncio.Queue = asyncio.Queue()
        llm = self.state.llm

        async def pump(i: int) -> None:
            try:
                async for out in llm.generate(self.prompts[i], self.params, self.engine_id(i),
                                             salt=self.salt, parallel=self.parallel):
                    queue.put_nowait((i, out))
                queue.put_nowait((i, None))
            except BaseException as exc:  # noqa: BLE001 - handed to the consumer
                queue.put_nowait((i, exc))
                if isinstance(exc, asyncio.CancelledError):
                    raise

        tasks = [asyncio.ensure_future(pump(i)) for i in range(len(self.prompts))]
        remaining = len(tasks)
        try:
            while remaining:
                i, item = await queue.get()
                if item is None:
                    remaining -= 1
                    continue
                if isinstance(item, asyncio.CancelledError):
                    raise EngineDeadError("request cancelled inside the engine wrapper")
                if isinstance(item, BaseException):
                    raise item
                self.answered.add(i)
                if self.timer is not None:
                    self.timer.tokens(sum(len(o.new_token_ids) for o in item.outputs))
                yield i, item
            if self.timer is not None:
                self.timer.done()
        finally:
            # Nothing here may await before the cleanup is done: under a cancelled anyio
            # scope (a streaming response whose client left) every await raises again.
            self.release()
            for t in tasks:
                t.cancel()  # each pump's generator aborts its engine request


async def until_disconnect(request: Request, work: Awaitable[T]) -> T:
    """Await ``work`` unless the client disconnects first (then cancel it: ClientGone)."""
    task = asyncio.ensure_future(work)

    async def disconnected() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    watcher = asyncio.ensure_future(disconnected())
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        task.cancel()
        watcher.cancel()
        await asyncio.gather(task, watcher, return_exceptions=True)
        raise
    watcher.cancel()
    if not task.done():
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        raise ClientGone
    return task.result()
