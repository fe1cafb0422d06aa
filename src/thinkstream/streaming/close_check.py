"""The exactness check of a streamed input at close, off the critical path (a ``StepHook``).

A session's ids are built by the tail tokenizer (``streaming.retokenize``: O(window) per
update). At close they must equal the tokenizer over the whole final text, O(input). That
reference runs on a worker thread while the next forward computes the input's last tokens;
after the forward and before anything is sampled (``after_forward``) the ids are compared,
and a difference replaces them (``LLMEngine.replace_input``: the KV of the common prefix
stays, the rest recomputes) and voids the step's sample. The answer is exact, and its
latency does not pay for the check.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING

from thinkstream.engine.hooks import StepHook
from thinkstream.streaming.retokenize import common_prefix_len

if TYPE_CHECKING:
    from thinkstream.engine.llm_engine import LLMEngine
    from thinkstream.engine.scheduler import ScheduledSeq


class CloseCheck(StepHook):
    def __init__(self, engine: LLMEngine) -> None:
        self.engine = engine
        self._pending: dict[str, Future] = {}
        self._thread: ThreadPoolExecutor | None = None

    def submit(self, request_id: str, reference: Callable[[], Sequence[int]]) -> None:
        """Compute ``reference()`` (the exact ids of the closed input) beside the next step."""
        if self._thread is None:
            self._thread = ThreadPoolExecutor(1, "thinkstream-tokenize")
        # the ids as Python ints on that thread too (~0.2 ms for 4,096 tokens, which the
        # engine thread would otherwise pay between the forward and the sample)
        self._pending[request_id] = self._thread.submit(lambda: [int(t) for t in reference()])

    def after_forward(self, scheduled: list[ScheduledSeq]) -> set[str]:
        void: set[str] = set()
        for s in scheduled:
            rid = s.seq.request_id
            check = self._pending.pop(rid, None)
            if check is None:
                continue
            try:
                ref = check.result()
            except Exception:  # noqa: BLE001 - no reference to compare with: the ids stand
                continue
            held = self.engine.input_ids(rid)
            if self.engine.replace_input(rid, ref, common_prefix_len(held, ref)):
                void.update(self.engine.sequence_ids(rid))
        return void

    def on_finish(self, request_id: str) -> None:
        check = self._pending.pop(request_id, None)
        if check is not None:
            check.cancel()

    def check(self, live_requests: Collection[str]) -> None:
        assert self._pending.keys() <= set(live_requests), "input checks outlive their requests"

    def shutdown(self) -> None:
        if self._thread is not None:
            self._thread.shutdown(wait=False, cancel_futures=True)
            self._thread = None
