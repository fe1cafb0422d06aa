"""What a session has received, and the token ids the engine must hold for it.

A session's input is text (or token ids) that grows by ``append`` or is swapped by
``replace``; each update carries a sequence number. The ids the engine computes are::

    plain text:  | lead (BOS, if the tokenizer adds one) | encode(text)                      |
    chat:        | encode(template prefix + content) ...                | suffix, at close |
    token ids:   | the ids as sent                                                          |

where the chat template is rendered once with a marker as the new user message's content:
the text before the marker is the prefix (system prompt, history, ``<|im_start|>user\\n``),
the text after it the suffix (``<|im_end|>\\n<|im_start|>assistant\\n``), which only exists
once the input is complete. Every update is planned first (nothing changes, so a limit can
refuse it), then committed; a plan carries the ``Edit`` the engine applies: keep the first
``keep`` ids (and their KV), then append ``add``. At close the ids are compared once with
the reference tokenization of the final input (``encode(text)``, or ``apply_chat_template``
for chat) and the edit reconciles any difference: the final ids are exact by construction.
The comparison may run beside the answer's first step (``plan_close(exact=False)`` and
``reference()``; the engine settles it before sampling).

In a chat session, special-token text inside the messages and inside the streamed content is
plain text, as in a chat completion (``loading.chat_encode``): the encoder guards the
content's span and the spans of such text in the history, so the template's markers are the
only control tokens, and the reference is ``encode_chat``. ``allow_special_tokens_in_content``
reads it as control tokens (``apply_chat_template``).

Bytes may be sent too (a WebSocket binary frame): an unfinished UTF-8 character is held
back until its remaining bytes arrive. Pure Python; no torch.
"""

from __future__ import annotations

import codecs
import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from thinkstream.loading.chat_encode import encode_guarded, overlaps, render_guarded
from thinkstream.streaming.errors import SequenceGapError, SessionClosedError, SessionError
from thinkstream.streaming.retokenize import (
    Retokenized,
    TailTokenizer,
    common_prefix_len,
    offsets_encoder,
)

_MARK = "\u2063thinkstream-content\u2063"  # invisible separator: survives templates untouched
Data = str | bytes | Sequence[int]


@dataclass(frozen=True)
class Edit:
    """Keep the first ``keep`` tokens of the input (their KV too), then append ``add``."""

    keep: int
    add: list[int]


@dataclass(frozen=True)
class Plan:
    """An update computed but not applied: the resulting ids and the edit that gets there."""

    ids: list[int]
    edit: Edit
    text: str | None = None
    pending: bytes = b""
    retok: Retokenized | None = None
    duplicate: bool = False

    @property
    def num_tokens(self) -> int:
        return len(self.ids)


def _as_text(data: Data, pending: bytes) -> tuple[str, bytes]:
    """Decode ``pending + data`` as far as whole UTF-8 characters go."""
    if isinstance(data, str):
        if pending:
            raise SessionError("input: text sent after bytes that end inside a UTF-8 character",
                               "input")
        return data, b""
    buf = pending + bytes(data)
    try:
        text, used = codecs.utf_8_decode(buf, "strict", False)
    except UnicodeDecodeError as err:
        raise SessionError(f"input: invalid UTF-8 ({err.reason})", "input") from None
    return text, buf[used:]


@dataclass
class SessionInput:
    """The input of one session (see the module docstring). ``next_seq`` numbers updates."""

    tokenizer: object
    mode: str  # "text" | "chat" | "tokens"
    messages: list[dict] | None = None
    window: int = 32
    next_seq: int = 0
    closed: bool = False
    lead: list[int] = field(default_factory=list)
    prefix: str = ""
    suffix: str = ""
    token_ids: list[int] = field(default_factory=list)  # tokens mode: the ids themselves
    pending: bytes = b""
    allow_special: bool = False  # chat: special-token text in messages is read as such
    _tail: TailTokenizer | None = None
    _history: list[tuple[int, int]] = field(default_factory=list)  # guarded spans in prefix
    _content_end: int | None = None  # where the streamed content ends (None: text's end)

    @classmethod
    def open(cls, tokenizer, prompt: str | Sequence[int] | None = None,
             messages: Sequence[dict] | None = None, window: int = 32,
             allow_special_tokens_in_content: bool = False) -> SessionInput:
        if messages is not None:
            if prompt is not None and not isinstance(prompt, str):
                raise SessionError("prompt: a chat session streams text", "prompt")
            s = cls(tokenizer, "chat", [dict(m) for m in messages], window,
                    allow_special=allow_special_tokens_in_content)
            s.prefix, s.suffix = s._split_template()
        elif prompt is None or isinstance(prompt, str):
            s = cls(tokenizer, "text", None, window)
            s.lead = list(tokenizer.encode("", add_special_tokens=True))
        else:
            s = cls(tokenizer, "tokens", None, window)
        encode, longest = offsets_encoder(tokenizer)
        if s._guarded:
            encode = s._encode_guarded
        s._tail = TailTokenizer(encode, max(window, longest + 8))
        if s.mode == "tokens":
            s.token_ids = [int(t) for t in prompt]  # type: ignore[union-attr]
        else:
            s._tail.apply(s._tail.plan(s.prefix + (prompt or "")))
        return s

    def _split_template(self) -> tuple[str, str]:
        chat = [*self.messages, {"role": "user", "content": _MARK}]
        try:
            if self.allow_special:
                text = self.tokenizer.apply_chat_template(chat, add_generation_prompt=True,
                                                          tokenize=False)
            else:
                text, self._history = render_guarded(self.tokenizer, chat, True)
        except Exception as exc:  # noqa: BLE001 - a template that rejects these messages
            raise SessionError(f"messages: the chat template rejected them ({type(exc).__name__})",
                               "messages") from None
        if text.count(_MARK) != 1:
            raise SessionError("messages: this chat template does not place the content "
                               "verbatim, so it cannot be streamed", "messages")
        prefix, suffix = text.split(_MARK)
        return prefix, suffix

    def _encode_guarded(self, text: str, start: int) -> tuple[list[int], list[tuple[int, int]]]:
        """Chat text from character ``start`` on; special tokens in the streamed content or
        from the history's messages are plain text."""
        content, end = len(self.prefix), self._content_end

        def guarded(s: int, e: int) -> bool:
            return (e > content and (end is None or s < end)) or overlaps(self._history, s, e)

        return encode_guarded(self.tokenizer, text, guarded, start)

    @property
    def _guarded(self) -> bool:
        return self.mode == "chat" and not self.allow_special and hasattr(self.tokenizer, "backend")

    def prefix_ids(self) -> list[int]:
        """The ids of the template text before the content (as the session holds them)."""
        if self._guarded:
            return self._encode_guarded(self.prefix, 0)[0]
        return list(self.tokenizer.encode(self.prefix, add_special_tokens=False))

    # ---------------------------------------------------------------- queries
    @property
    def content(self) -> str:
        """The streamed text so far (without the template around it)."""
        return "" if self._tail is None else self._tail.text[len(self.prefix):]

    @property
    def ids(self) -> list[int]:
        """The ids the engine holds while the input is open."""
        if self.mode == "tokens":
            return list(self.token_ids)
        return self.lead + self._tail.ids  # type: ignore[union-attr]

    # ---------------------------------------------------------------- updates
    def check_seq(self, seq: int | None) -> bool:
        """True to apply an update numbered ``seq`` (None: the next one); False for a repeat
        (acknowledged, not applied). Raises on a closed session or a gap."""
        if self.closed:
            raise SessionClosedError(f"the session's input is closed; expected seq was "
                                     f"{self.next_seq}", self.next_seq)
        if seq is None or seq == self.next_seq:
            return True
        if seq < 0:
            raise SessionError("seq: must be >= 0", "seq")
        if seq < self.next_seq:
            return False
        raise SequenceGapError(f"seq {seq} skips ahead: the session expects seq {self.next_seq}",
                               self.next_seq)

    def plan_append(self, data: Data, seq: int | None = None) -> Plan:
        if not self.check_seq(seq):
            return Plan(self.ids, Edit(len(self.ids), []), duplicate=True)
        if self.mode == "tokens":
            if isinstance(data, str | bytes):
                raise SessionError("input: this session was opened with token ids; send token ids",
                                   "input")
            add = [int(t) for t in data]
            return Plan(self.ids + add, Edit(len(self.ids), add))
        if not isinstance(data, str | bytes | bytearray):
            raise SessionError("input: this session streams text; send text", "input")
        text, pending = _as_text(data, self.pending)
        return self._plan_text(self._tail.text + text, pending)  # type: ignore[union-attr]

    def plan_replace(self, data: str | Sequence[int], seq: int | None = None) -> Plan:
        """Update mode: ``data`` is the whole new input (content, for chat)."""
        if not self.check_seq(seq):
            return Plan(self.ids, Edit(len(self.ids), []), duplicate=True)
        if self.mode == "tokens":
            if isinstance(data, str | bytes):
                raise SessionError("input: this session was opened with token ids; send token ids",
                                   "input")
            ids = [int(t) for t in data]
            keep = common_prefix_len(self.token_ids, ids)
            return Plan(ids, Edit(keep, ids[keep:]))
        if not isinstance(data, str):
            raise SessionError("input: this session streams text; send text", "input")
        return self._plan_text(self.prefix + data, b"")

    def _plan_text(self, full: str, pending: bytes) -> Plan:
        retok = self._tail.plan(full)  # type: ignore[union-attr]
        ids = self.lead + retok.ids
        keep = len(self.lead) + retok.keep
        return Plan(ids, Edit(keep, ids[keep:]), full[len(self.prefix):], pending, retok)

    def plan_close(self, exact: bool = True) -> Plan:
        """The final ids and the edit to them. ``exact``: the reference tokenization of the
        whole input (O(input)); otherwise the tail tokenizer's ids for it (O(window)), which
        ``reference()`` then confirms off the critical path (the engine settles any
        difference before the answer's first token: ``streaming.close_check``)."""
        if self.closed:
            raise SessionClosedError("the session's input is already closed", self.next_seq)
        if self.pending:
            raise SessionError("input: ends inside a UTF-8 character", "input")
        return self._close_plan(exact)

    def close_size(self) -> int:
        """Tokens the input would have if it closed now (the chat template's end added; an
        unfinished UTF-8 character left out): what the limits must hold at close. O(window)."""
        return self._close_plan(exact=False).num_tokens

    def _close_plan(self, exact: bool) -> Plan:
        old = self.ids
        if self.mode == "tokens":
            final = old
        elif exact:
            final = self.reference()()
        elif self.mode == "text":
            final = old
        else:
            self._content_end = len(self._tail.text)  # type: ignore[union-attr]
            try:  # the suffix is the template's: its markers are control tokens
                retok = self._tail.plan(self._tail.text + self.suffix)  # type: ignore[union-attr]
            finally:
                self._content_end = None
            final = self.lead + retok.ids
        keep = common_prefix_len(old, final)
        return Plan(final, Edit(keep, final[keep:]), self.content if self.mode != "tokens" else None)

    def reference(self) -> Callable[[], list[int]]:
        """The reference tokenization of the input as it is now, as a function safe to run
        on another thread (it reads only values captured here)."""
        tokenizer, content = self.tokenizer, self.content
        if self.mode == "tokens":
            ids = list(self.token_ids)
            return lambda: ids
        if self.mode == "text":
            return lambda: list(tokenizer.encode(content, add_special_tokens=True))
        messages = [*self.messages, {"role": "user", "content": content}]  # type: ignore[misc]
        allow = self.allow_special
        return lambda: list(tokenizer.encode_chat(
            messages, True, allow_special_tokens_in_content=allow))

    def after(self, plan: Plan) -> SessionInput:
        """A copy of this input with ``plan`` committed (this one is unchanged): what a close
        right after the update would see. Commits only rebind fields, so a shallow copy of
        the input and of its tail tokenizer is independent."""
        trial = copy.copy(self)
        # the guarded encoder reads its input's fields (where the content ends at close)
        trial._tail = self._tail.copy(trial._encode_guarded if self._guarded else None)  # type: ignore[union-attr]
        trial.commit(plan)
        return trial

    def commit(self, plan: Plan, *, close: bool = False) -> None:
        if plan.duplicate:
            return
        if close:
            self.closed = True
            return
        self.next_seq += 1
        if self.mode == "tokens":
            self.token_ids = list(plan.ids)
        else:
            self._tail.apply(plan.retok)  # type: ignore[union-attr, arg-type]
            self.pending = plan.pending
