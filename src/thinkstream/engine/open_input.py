"""The streaming-input surface of ``LLMEngine``: a request whose input is still open.

A session's input grows (``extend_input``), is rolled back to a prefix whose KV is kept
(``truncate_input``), ends (``close_input``: the held-back last token is computed and the
answer starts), and before its answer starts may have its ids replaced by exact ones
(``replace_input``, used by ``streaming.close_check``). The owner of a view keeps its
sources from being truncated below it (``viewers_of``).
"""

from __future__ import annotations

import time
from collections.abc import Sequence as Seq
from typing import TYPE_CHECKING

from thinkstream.engine.errors import RequestError
from thinkstream.engine.request import Sequence

if TYPE_CHECKING:
    from thinkstream.config import ModelConfig
    from thinkstream.engine.output import RequestState
    from thinkstream.engine.scheduler import Scheduler
    from thinkstream.sampling_params import SamplingParams


class OpenInputs:
    """Mixed into ``LLMEngine``, whose state it uses."""

    requests: dict[str, RequestState]
    scheduler: Scheduler
    model_config: ModelConfig
    max_model_len: int

    if TYPE_CHECKING:  # defined by LLMEngine
        def resolve_max_tokens(self, params: SamplingParams, num_prompt_tokens: int) -> int: ...

        def truncate_kv(self, seq: Sequence, num_tokens: int) -> None: ...

    def viewers_of(self, seq_id: str) -> list[tuple[Sequence, int]]:
        """Live sequences viewing ``seq_id``'s cache, with how many of its tokens each sees."""
        return [(s, k) for s in self.scheduler.sequences() for sid, k, *_ in s.kv_prefix if sid == seq_id]

    # ------------------------------------------------------- streaming input hooks
    def _open_seq(self, request_id: str) -> Sequence:
        state = self.requests.get(request_id)
        if state is None:
            raise RequestError("request_id", f"request_id: unknown or finished request {request_id!r}")
        seq = state.seqs[0]
        if seq.input_closed:
            raise RequestError("request_id", f"request_id: the input of {request_id!r} is closed")
        seq.last_input_time = time.monotonic()
        self.scheduler.wake(seq)  # preempted while idle: recompute now that input changes
        return seq

    def extend_input(self, request_id: str, token_ids: Seq[int]) -> None:
        """Append tokens to an open request's input (they are prefilled as they come)."""
        seq = self._open_seq(request_id)
        ids = [int(t) for t in token_ids]
        if any(not 0 <= t < self.model_config.vocab_size for t in ids):
            raise RequestError("input", "input: token id outside the vocabulary")
        if seq.num_tokens + len(ids) >= self.max_model_len:
            raise RequestError("input", f"input: {seq.num_tokens + len(ids)} tokens leave no room to "
                               f"generate within the context of {self.max_model_len} tokens")
        seq.token_ids.extend(ids)
        seq.num_prompt_tokens = seq.num_tokens
        state = self.requests[request_id]
        state.prompt_token_ids = list(seq.token_ids)

    def truncate_input(self, request_id: str, num_tokens: int) -> None:
        """Roll an open request's input back to its first ``num_tokens`` tokens; the KV of
        that prefix is kept, anything computed past it is dropped."""
        seq = self._open_seq(request_id)
        if not 0 <= num_tokens <= seq.num_tokens:
            raise RequestError("input", f"input: cannot truncate {seq.num_tokens} tokens to {num_tokens}")
        for viewer, k in self.viewers_of(seq.seq_id):  # the owner rolls views back first
            if k > num_tokens:
                raise RuntimeError(f"truncating {seq.seq_id} to {num_tokens} tokens would break "
                                   f"the view of {viewer.seq_id} ({k} tokens)")
        del seq.token_ids[num_tokens:]
        seq.num_prompt_tokens = num_tokens
        if seq.num_computed_tokens > num_tokens:
            self.scheduler.truncate(seq, num_tokens)
        self.requests[request_id].prompt_token_ids = list(seq.token_ids)

    def close_input(self, request_id: str) -> None:
        """The input is complete: compute its last token and start answering (an exactness
        check of the ids may follow: ``streaming.close_check``)."""
        seq = self._open_seq(request_id)
        if seq.num_tokens == 0:
            raise RequestError("input", "input: empty at close")
        state = self.requests[request_id]
        seq.max_tokens = self.resolve_max_tokens(seq.params, seq.num_tokens)
        for s in state.seqs:
            s.input_closed = True
            if s is not seq:
                s.token_ids = list(seq.token_ids)
                s.num_prompt_tokens = seq.num_prompt_tokens
                s.max_tokens = seq.max_tokens
        state.reset_prompt(seq.token_ids)
        if seq.num_computed_tokens >= seq.num_tokens:
            # rolled back onto a computed token (an update to a token prefix of the input):
            # its logits are gone, and the first answer token is sampled from them
            self.scheduler.truncate(seq, seq.num_tokens - 1)

    def replace_input(self, request_id: str, ids: list[int], keep: int) -> bool:
        """Make a closed input's ids ``ids`` before its answer starts, keeping the KV of its
        first ``keep`` tokens (the caller's common prefix of old and new ids); False
        (nothing changed) if they are the same, empty or too long. The last token is
        always recomputed: its logits give the answer's first token (``ids`` may be a
        strict prefix of the ids held)."""
        state = self.requests.get(request_id)
        if state is None:
            return False
        first = state.seqs[0]
        have = first.token_ids[: first.num_prompt_tokens]
        if ids == have or not ids or len(ids) >= self.max_model_len:
            return False
        keep = min(keep, len(ids) - 1)
        for q in state.seqs:
            del q.token_ids[keep:]
            q.token_ids.extend(ids[keep:])
            q.num_prompt_tokens = len(ids)
            q.max_tokens = self.resolve_max_tokens(q.params, len(ids))
            self.truncate_kv(q, keep)
            if q.prompt_logprobs:
                del q.prompt_logprobs[keep:]
        state.reset_prompt(ids)
        return True
