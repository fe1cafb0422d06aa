"""The threads API: fork and join one request's threads from Python, sync and async alike.

    t = Threads.open(llm, prompt, SamplingParams(max_tokens=64))    # or llm.threads(...)
    kids = t.fork(t.root, ["Path A:", "Path B:"], max_tokens=128)  # decode concurrently
    t.wait(kids)                                                   # until both end
    t.join(t.root, kids, suffix="Summary:")                        # no prefill of the kids
    out = t.result()                                               # the root's output

or ``s = t.join(t.root, kids, "Summary:", into="new")``: a new summary thread (the root
stays paused for another join); ``t.wait([s])``, ``t.text(s)``; ``t.abort()`` ends the
request when no join continues the root, as leaving ``with llm.threads(...) as t:`` does
(``async with`` for ``AsyncThreads``); an exception inside ``wait`` / ``result`` (Ctrl-C)
aborts it too.

``AsyncThreads`` has the same methods as coroutines (over an ``AsyncLLM``; fork and join
run on the engine thread between steps). The root is the request's sequence, opened with
its input held (prefilled but for its last token) until a join continues it, so a thread
tree starts at the prompt; ``fork`` also pauses a thread that is generating (the root after
a join, a child) and continues it in its children. Each child's text is ``text(child)``.
The sync handle steps the engine itself: outputs of other requests those steps produce are
not kept (as with ``Session``), so don't interleave it with a live ``LLM.stream``.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING

from thinkstream.engine.request import RequestOutput
from thinkstream.parallel.config import ThreadLimits
from thinkstream.parallel.threads import Thread, ThreadTree
from thinkstream.sampling_params import ParamError, SamplingParams

if TYPE_CHECKING:
    from thinkstream.async_llm import AsyncLLM
    from thinkstream.engine.llm_engine import LLMEngine
    from thinkstream.engine.output import RequestState
    from thinkstream.llm import LLM

Suffixes = Sequence[str | Sequence[int]]


class _Common:
    tree: ThreadTree
    engine: LLMEngine

    @property
    def root(self) -> Thread:
        return self.tree.root

    @property
    def request_id(self) -> str:
        return self.tree.rid

    def text(self, thread: Thread) -> str:
        """A thread's sampled text so far (the root's: its output after the prompt; one
        that a stop string ended: cut there, as a request's text is). ``ParamError`` for
        anything but a ``Thread``."""
        _check_threads([thread])
        if thread.stop_str is not None:
            return thread.text
        ids = thread.token_ids if thread is not self.root else thread.seq.output_token_ids
        return self.engine.tokenizer.decode(ids)

    def _fork_args(self, suffixes: Suffixes, params: SamplingParams | Sequence[SamplingParams] | None,
                   ) -> tuple[list[list[int]], list[SamplingParams]]:
        tok = self.engine.tokenizer
        ids = [list(tok.encode(s, add_special_tokens=False)) if isinstance(s, str) else list(s)
               for s in suffixes]
        if params is None or isinstance(params, SamplingParams):
            base = params or self.root.seq.params
            seed = base.seed if base.seed is not None else None
            params = [base if seed is None else _with_seed(base, seed + i)
                      for i in range(len(ids))]
        if len(params) != len(ids):
            raise ParamError("params", "one SamplingParams per child (or one for all)")
        return ids, list(params)

    def _start(self, engine: LLMEngine, state: RequestState, limits: ThreadLimits | None) -> None:
        self.engine = engine
        self.tree = ThreadTree(engine, state.request_id, limits)


def _check_threads(threads: Sequence[object]) -> None:
    """``ParamError`` (param ``thread``) unless every item is a ``Thread`` (a fork's or join's
    result, or ``.root``): a thread id string was an AttributeError deep inside."""
    bad = next((t for t in threads if not isinstance(t, Thread)), None)
    if bad is not None:
        raise ParamError("thread", f"expected a Thread (from fork, join or .root), got "
                         f"{type(bad).__name__} {bad!r:.40}")


def _with_seed(p: SamplingParams, seed: int) -> SamplingParams:
    return dataclasses.replace(p, seed=seed)


class Threads(_Common):
    """One request's thread tree over an ``LLM`` (module docstring)."""

    def __init__(self, llm: LLM, prompt: str | Sequence[int], params: SamplingParams | None = None,
                 limits: ThreadLimits | None = None) -> None:
        engine = llm.engine
        state = engine.make_request(None, prompt, params or SamplingParams(), input_closed=False)
        if not state.prompt_token_ids:
            raise ParamError("prompt", "prompt: must not be empty")
        engine.add(state)
        self._start(engine, state, limits)
        self.last: RequestOutput | None = None

    @classmethod
    def open(cls, llm: LLM, prompt: str | Sequence[int], params: SamplingParams | None = None,
             limits: ThreadLimits | None = None) -> Threads:
        return cls(llm, prompt, params, limits)

    def fork(self, thread: Thread, suffixes: Suffixes,
             params: SamplingParams | Sequence[SamplingParams] | None = None,
             max_tokens: int = 64) -> list[Thread]:
        """Children of ``thread``, one per suffix (text or ids); ``params`` one for all (child
        i seeded ``seed + i``) or one each; default the request's."""
        _check_threads([thread])
        ids, ps = self._fork_args(suffixes, params)
        return self.tree.fork(thread, ids, ps, max_tokens)

    def join(self, thread: Thread, children: Sequence[Thread], suffix: str | Sequence[int] = "",
             layout: str = "parallel", max_tokens: int | None = None, into: str = "parent",
             params: SamplingParams | None = None) -> Thread | None:
        """Continue ``thread`` (``into="parent"``) or a new summary thread, returned
        (``into="new"``), after ``children`` and ``suffix`` (``ThreadTree.join``)."""
        _check_threads([thread, *children])
        ids = self._fork_args([suffix], None)[0][0]
        return self.tree.join(thread, children, ids, layout, max_tokens, into, params)

    def __enter__(self) -> Threads:
        return self

    def __exit__(self, *exc: object) -> None:
        """Leaving a ``with`` block ends the request if it still runs (its blocks freed)."""
        self.abort()

    def wait(self, threads: Sequence[Thread]) -> None:
        """Step the engine until every thread in ``threads`` has ended (or the request)."""
        _check_threads(threads)
        self._until(lambda: all(t.done for t in threads))

    def result(self) -> RequestOutput:
        """Step until the request finishes; its final output (the root's text)."""
        self._until(lambda: False)
        assert self.last is not None
        return self.last

    def abort(self) -> bool:
        return self.engine.abort(self.request_id)

    def _until(self, done) -> None:
        """Step until ``done()``, the request ends or cannot progress (RuntimeError). Any
        exception on the way (Ctrl-C in a step) aborts the request before it propagates:
        its sequences and blocks are not left behind in the engine."""
        try:
            while not done() and (self.last is None or not self.last.finished):
                if self.request_id not in self.engine.requests:
                    return
                for out in self.engine.step():
                    if out.request_id == self.request_id:
                        self.last = out
                if not self.engine.last_step_progress and not done():
                    raise RuntimeError(f"threads of {self.request_id!r} cannot progress")
        except BaseException:
            self.abort()
            raise


class AsyncThreads(_Common):
    """``Threads`` over an ``AsyncLLM``: every method a coroutine."""

    def __init__(self, llm: AsyncLLM) -> None:
        self.llm = llm
        self.last: RequestOutput | None = None
        self._changed = asyncio.Event()
        self._task: asyncio.Task | None = None

    @classmethod
    async def open(cls, llm: AsyncLLM, prompt: str | Sequence[int],
                   params: SamplingParams | None = None,
                   limits: ThreadLimits | None = None) -> AsyncThreads:
        self = cls(llm)
        stream = llm.generate(prompt, params or SamplingParams(),
                              start=lambda engine, state: self._start(engine, state, limits))
        self._task = asyncio.ensure_future(self._pump(stream))
        await asyncio.sleep(0)  # the add is queued ...
        await llm.call(lambda _: None)  # ... and has run: commands run in order
        if self._task.done() and self._task.exception() is not None:
            raise self._task.exception()  # type: ignore[misc]
        return self

    async def _pump(self, stream) -> None:
        try:
            async for out in stream:
                self.last = out
                self._changed.set()
        finally:
            self._changed.set()

    async def fork(self, thread: Thread, suffixes: Suffixes,
                   params: SamplingParams | Sequence[SamplingParams] | None = None,
                   max_tokens: int = 64) -> list[Thread]:
        _check_threads([thread])
        ids, ps = self._fork_args(suffixes, params)
        return await self.llm.call(lambda _: self.tree.fork(thread, ids, ps, max_tokens))

    async def join(self, thread: Thread, children: Sequence[Thread],
                   suffix: str | Sequence[int] = "", layout: str = "parallel",
                   max_tokens: int | None = None, into: str = "parent",
                   params: SamplingParams | None = None) -> Thread | None:
        _check_threads([thread, *children])
        ids = self._fork_args([suffix], None)[0][0]
        return await self.llm.call(lambda _: self.tree.join(thread, children, ids, layout,
                                                            max_tokens, into, params))

    async def __aenter__(self) -> AsyncThreads:
        return self

    async def __aexit__(self, *exc: object) -> None:
        """Leaving an ``async with`` block ends the request if it still runs."""
        if self._task is not None and not self._task.done():
            await self.abort()

    async def wait(self, threads: Sequence[Thread]) -> None:
        _check_threads(threads)
        while True:
            self._changed.clear()
            if all(t.done for t in threads) or self._task is None or self._task.done():
                return
            await self._changed.wait()

    async def result(self) -> RequestOutput:
        assert self._task is not None
        await self._task
        assert self.last is not None
        return self.last

    async def abort(self) -> bool:
        return await self.llm.cancel(self.request_id)
