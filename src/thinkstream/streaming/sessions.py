"""``SessionManager``: streaming-input sessions on an ``LLMEngine``.

A session is an engine request opened with its input not closed. Each update (append,
replace) is planned on the session's ``SessionInput`` (re-tokenizing a tail window), checked
against the limits, then applied to the engine as one edit: roll the input back to the
tokens that did not change (``truncate_input`` keeps their KV) and extend it with the new
ones (``extend_input``). The scheduler prefills them in the same steps as everyone else's
work, holding back the last token while the input is open. ``close`` reconciles the ids with
the reference tokenization of the final input, closes the input and the request answers like
any other; its outputs come from ``engine.step`` as usual. (Without thinking, the reference
tokenization runs beside the answer's first step: ``streaming.close_check``.)

Life of a session::

    open --append/replace--> open --close--> answering --(engine finishes)--> finished
      \\__________________________ abort / idle timeout ________________________> aborted

The manager is not thread-safe: call it from the thread that steps the engine (``AsyncLLM``
runs it on its engine thread).
"""

from __future__ import annotations

import time
import uuid
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

from thinkstream.engine.llm_engine import LLMEngine, RequestError
from thinkstream.engine.output import RequestState
from thinkstream.engine.request import RequestOutput
from thinkstream.sampling_params import SamplingParams
from thinkstream.streaming.close_check import CloseCheck
from thinkstream.streaming.errors import (
    SessionClosedError,
    SessionLimitError,
    SessionNotFoundError,
    SessionTooLongError,
)
from thinkstream.streaming.state import Data, Plan, SessionInput
from thinkstream.thinking.config import ThinkConfig
from thinkstream.thinking.controller import ThinkController


@dataclass(frozen=True)
class SessionInfo:
    session_id: str
    state: str  # "open" | "answering" | "finished" | "aborted"
    reason: str | None  # finish reason once finished, abort reason once aborted
    mode: str  # "text" | "chat" | "tokens"
    next_seq: int
    tokens_received: int  # input tokens the session holds now
    tokens_computed: int  # of which the KV is in the cache
    num_preemptions: int
    created: float
    last_activity: float


@dataclass(frozen=True)
class UpdateResult:
    session_id: str
    seq: int  # the number this update had (or repeated)
    duplicate: bool  # a repeated number: acknowledged, nothing changed
    next_seq: int
    tokens_received: int
    tokens_kept: int  # tokens (and KV) the update left untouched
    tokens_added: int


@dataclass
class _Session:
    sid: str
    input: SessionInput
    state: RequestState
    created: float
    last_activity: float
    aborted: str | None = None
    think: ThinkController | None = None  # think while reading (None: off)


class SessionManager:
    def __init__(self, engine: LLMEngine, window: int = 32, max_input_tokens: int | None = None,
                 remember: int = 4096) -> None:
        self.engine = engine
        self.window = window
        self.close_check = CloseCheck(engine)  # exact ids at close, beside the first step
        engine.add_hook(self.close_check)
        self.max_input_tokens = min(max_input_tokens or engine.max_model_len, engine.max_model_len - 1)
        self._open: dict[str, _Session] = {}
        self._ended: OrderedDict[str, _Session] = OrderedDict()  # closed or aborted, newest last
        self.remember = remember
        self._token_chars: int | None = None  # the longest vocabulary entry (_check_chars)

    # ----------------------------------------------------------------- queries
    def _get(self, sid: str) -> _Session:
        s = self._open.get(sid) or self._ended.get(sid)
        if s is None:
            raise SessionNotFoundError(f"session {sid!r} not found", "session_id")
        return s

    def _get_open(self, sid: str) -> _Session:
        s = self._get(sid)
        if s.aborted is not None or s.input.closed:
            why = s.aborted or "input closed"
            raise SessionClosedError(f"session {sid!r} is closed ({why}); expected seq was "
                                     f"{s.input.next_seq}", s.input.next_seq)
        return s

    def info(self, sid: str) -> SessionInfo:
        s = self._get(sid)
        seq = s.state.seqs[0]
        if s.aborted is not None:
            state, reason = "aborted", s.aborted
        elif not s.input.closed:
            state, reason = "open", None
        elif s.state.finished:
            state, reason = "finished", seq.status.finish_reason
        else:
            state, reason = "answering", None
        return SessionInfo(sid, state, reason, s.input.mode, s.input.next_seq,
                           seq.num_prompt_tokens, min(seq.num_computed_tokens, seq.num_prompt_tokens),
                           seq.num_preemptions, s.created, s.last_activity)

    def idle(self, timeout_s: float, now: float | None = None) -> list[str]:
        """Open sessions without activity for ``timeout_s`` seconds."""
        now = time.monotonic() if now is None else now
        return [sid for sid, s in self._open.items() if now - s.last_activity >= timeout_s]

    # ----------------------------------------------------------------- updates
    def open(self, session_id: str | None = None, prompt: str | Sequence[int] | None = None,
             messages: Sequence[dict] | None = None, params: SamplingParams | None = None,
             salt: object = None, thinking: ThinkConfig | None = None) -> SessionInfo:
        """``thinking``: reason about each input unit while the input streams (see
        ``thinking.controller``); the reasoning is reported as ``reasoning_content``."""
        sid = session_id or self._new_id()
        if self._taken(sid):
            raise RequestError("session_id", f"session_id: {sid!r} is already in use")
        inp = SessionInput.open(self.engine.tokenizer, prompt, messages, self.window,
                                self.engine.config.allow_special_tokens_in_content)
        self._check_size(inp.close_size(), (params or SamplingParams()).max_tokens, "open")
        if thinking is not None:  # input positions depend on the layout (and on the notes)
            lay = thinking.layout
            u = thinking.units
            salt = ("think", sid) if lay.kind == "interleaved" else (
                "think", lay.kind, lay.gap, u.kind, u.delimiter, u.num_tokens, u.min_tokens, salt)
        state = self.engine.make_request(sid, inp.ids, params, input_closed=False, salt=salt)
        state.prompt = inp.content if inp.mode != "tokens" else None
        self.engine.add(state)
        now = time.monotonic()
        s = self._open[sid] = _Session(sid, inp, state, now, now)
        if thinking is not None:
            start = 0 if inp.mode == "tokens" else len(inp.lead) + len(inp.prefix_ids())
            try:
                s.think = ThinkController(self.engine, sid, thinking, min(start, len(inp.ids)))
            except ValueError as exc:  # a config this tokenizer cannot serve: undo the open
                self.engine.abort(sid)
                del self._open[sid]
                raise RequestError("thinking", f"thinking: {exc}") from None
            s.think.on_input()
        return self.info(sid)

    def _taken(self, sid: str) -> bool:
        return sid in self._open or sid in self._ended or sid in self.engine.requests

    def _new_id(self) -> str:
        """A random id no session or request holds: callers may choose ids too (a request's
        ``request_id``), so an automatic id is never one a client could take in advance."""
        while True:
            sid = f"sess-{uuid.uuid4().hex}"
            if not self._taken(sid):
                return sid

    def snapshot(self, sid: str) -> RequestOutput:
        """The session's output now (reasoning so far; ``finished`` once it is over), for a
        listener that joins late. Reports nothing: the next output's deltas are unchanged."""
        return self._get(sid).state.make_output(consume=False)

    def thinker(self, sid: str) -> ThinkController | None:
        return self._get(sid).think

    def append(self, sid: str, data: Data, seq: int | None = None) -> UpdateResult:
        s = self._get_open(sid)
        if s.input.mode != "tokens":
            self._check_chars(len(s.input.content) + len(data))
        return self._apply(s, s.input.plan_append(data, seq), seq)

    def replace(self, sid: str, data: str | Sequence[int], seq: int | None = None) -> UpdateResult:
        """Update mode: ``data`` becomes the whole input (the content, for a chat session)."""
        s = self._get_open(sid)
        if isinstance(data, str):
            self._check_chars(len(data))
        return self._apply(s, s.input.plan_replace(data, seq), seq)

    def _check_chars(self, num_chars: int) -> None:
        """Refuse, before tokenizing it, a text that holds more tokens than a session may:
        a token stands for at most as many characters as the vocabulary's longest entry
        (twice that for a normalizer that folds characters). Tokenizing a few megabytes
        on the engine thread held every request for seconds; a text this long never fits."""
        if num_chars <= self.max_input_tokens:
            return
        if self._token_chars is None:  # once, and only for a long text (~0.7 s for 262k)
            vocab = self.engine.tokenizer.backend.get_vocab(with_added_tokens=True)
            self._token_chars = max(map(len, vocab), default=1)
        if num_chars > 2 * self._token_chars * self.max_input_tokens:
            raise SessionLimitError(
                f"input: {num_chars} characters hold more tokens than the session limit of "
                f"{self.max_input_tokens}", "input", "session_tokens_exceeded", 413)

    def close(self, sid: str, seq: int | None = None, data: Data | None = None) -> SessionInfo:
        """End the input; the request starts answering (outputs come from ``engine.step``).
        ``seq``, if given, must be the next expected number: a close never overtakes a chunk.
        ``data``: a last chunk (numbered ``seq``; the close takes the next number), appended
        in the same engine command, so it is computed in the answer's first step rather
        than in a step of its own."""
        if data is not None:
            s = self._get_open(sid)
            ahead = s.input.plan_append(data, seq)  # changes nothing; raises on a bad chunk
            if not ahead.duplicate:  # a close refused after its chunk went in would not be
                self._check_close(s, s.input.after(ahead).plan_close(exact=False))  # clean
            self.append(sid, data, seq)
            seq = None if seq is None else seq + 1
        s = self._get_open(sid)
        if seq is not None and seq != s.input.next_seq:
            s.input.check_seq(seq)  # raises on a gap
            raise SessionClosedError(f"close numbered {seq} but the session expects seq "
                                     f"{s.input.next_seq}", s.input.next_seq)
        # thinking needs the final ids now (notes and passes are placed by them); otherwise
        # the engine confirms the tail tokenizer's ids while the answer's first step runs
        plan = s.input.plan_close(exact=s.think is not None)
        self._check_close(s, plan)
        self._edit(s, plan, closing=True)
        if plan.text is not None:
            s.state.prompt = plan.text
        if s.think is not None:  # notes on the last unit and the passes first, then answer
            suffix = self.engine.tokenizer.encode(s.input.suffix, add_special_tokens=False)
            n = len(plan.ids)
            content = n - len(suffix) if suffix and plan.ids[n - len(suffix):] == suffix else n
            s.think.close(content)
        else:
            self.engine.close_input(sid)
            if s.input.mode != "tokens":  # token sessions' ids are exact already
                self.close_check.submit(sid, s.input.reference())
        s.input.commit(plan, close=True)
        s.last_activity = time.monotonic()
        self._end(s)
        return self.info(sid)

    def abort(self, sid: str, reason: str = "abort") -> bool:
        """Abort an open or answering session and free its blocks; False if already over."""
        s = self._open.get(sid) or self._ended.get(sid)
        if s is None or s.aborted is not None or s.state.finished:
            return False
        self.engine.abort(sid)
        s.aborted = reason
        self._end(s)
        return True

    # ---------------------------------------------------------------- internals
    def _apply(self, s: _Session, plan: Plan, seq: int | None) -> UpdateResult:
        number = s.input.next_seq if seq is None else seq
        if not plan.duplicate:
            vocab = self.engine.model_config.vocab_size
            if any(not 0 <= t < vocab for t in plan.edit.add):
                raise RequestError("input", f"input: token id outside the vocabulary (0..{vocab - 1})")
            # refused now if even a close right after it could never be answered
            self._check_size(s.input.after(plan).close_size(), s.state.seqs[0].params.max_tokens,
                             "update")
            self._edit(s, plan)
            s.input.commit(plan)
            s.state.prompt = s.input.content if s.input.mode != "tokens" else None
            s.last_activity = time.monotonic()
        return UpdateResult(s.sid, number, plan.duplicate, s.input.next_seq, plan.num_tokens,
                            plan.edit.keep, len(plan.edit.add))

    def _edit(self, s: _Session, plan: Plan, closing: bool = False) -> None:
        have = s.state.seqs[0].num_tokens
        if plan.edit.keep < have:
            if s.think is not None:
                s.think.before_truncate(plan.edit.keep, len(plan.edit.add))
            self.engine.truncate_input(s.sid, plan.edit.keep)
        if plan.edit.add:
            self.engine.extend_input(s.sid, plan.edit.add)
        if s.think is not None and not closing:
            s.think.on_input()

    def _check_close(self, s: _Session, plan: Plan) -> None:
        if not plan.ids:
            raise SessionLimitError("input: empty at close", "input", "empty_input")
        self._check_size(plan.num_tokens, s.state.seqs[0].params.max_tokens, "close")

    def _check_size(self, num_tokens: int, max_tokens: int | None, when: str) -> None:
        """Refuse (``SessionTooLongError``, 413) an input of ``num_tokens`` at close (the
        chat template's end included) that the session may not hold, or that with
        ``max_tokens`` needs more KV blocks than the pool has (the rule of a request's
        ``LLMEngine.check_length``: the answer is capped at the context, never refused for
        it). ``when``: "open" / "update" (a close right after it would be refused, so the
        update is refused and changes nothing) or "close"."""
        at = "at close" if when == "close" else "when closed"
        if num_tokens > self.max_input_tokens:
            raise SessionTooLongError(f"input: {num_tokens} tokens {at} exceed the session "
                                      f"limit of {self.max_input_tokens}")
        blocks = self.engine.blocks_needed(num_tokens, max_tokens)
        if blocks > self.engine.num_kv_blocks:
            raise SessionTooLongError(
                f"input: {num_tokens} tokens {at} + max_tokens {max_tokens} need {blocks} KV "
                f"blocks but the cache has {self.engine.num_kv_blocks}")

    def _end(self, s: _Session) -> None:
        self._open.pop(s.sid, None)
        self._ended[s.sid] = s
        self._ended.move_to_end(s.sid)
        while len(self._ended) > self.remember:
            self._ended.popitem(last=False)


__all__ = ["SessionInfo", "SessionManager", "UpdateResult"]
