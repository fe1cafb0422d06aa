"""Tool calls out of a model's text, streamed or whole, through one code path.

A ``ToolStream`` takes the output text in pieces (``feed``) and returns events: ``Text``
(content), ``CallStart`` (a call's index, id and name) and ``CallArgs`` (a fragment of its
arguments). ``parse`` folds the events of a whole text, so a non-streamed response is the
concatenation of the streamed one by construction, whatever the split.

Content keeps a run of whitespace back until text follows it; when the output holds calls,
whitespace at the end is dropped (the newlines around ``<tool_call>`` blocks are not
content). A tag's first characters are held until the tag is complete or ruled out.

Formats are parsers in ``TOOL_PARSERS`` (``--tool-call-parser``):

- ``hermes``: ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` blocks, the
  format of Qwen2.5 / Qwen3 templates and of the tool prompt given to templates without
  tools (``server.chat_tools``). A block whose name never appears is kept as text.

``ToolChoiceStream`` wraps a format for ``tool_choice`` ``required`` / a named function.
When the sampler constrains the output to the call's JSON schema
(``SamplingParams.structured_outputs``, see ``server.chat_tools.call_constraint``) the
text is a JSON array of ``{"name", "arguments"}`` (required) or the arguments object itself
(named); unconstrained models write their own format, which goes to the format parser.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from thinkstream.parsers.calls import CallScanner


@dataclass(frozen=True)
class Text:
    text: str


@dataclass(frozen=True)
class CallStart:
    index: int
    id: str
    name: str


@dataclass(frozen=True)
class CallArgs:
    index: int
    text: str


Event = Text | CallStart | CallArgs


@dataclass
class ToolCall:
    id: str
    name: str
    arguments: str


def new_call_id() -> str:
    return "call_" + uuid.uuid4().hex[:24]


class Emitter:
    """Collects the events of one output: whitespace hold-back, call numbering."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.num_calls = 0
        self._pending_ws = ""

    def text(self, text: str) -> None:
        text = self._pending_ws + text
        head = text.rstrip()
        self._pending_ws = text[len(head):]
        if head:
            self.events.append(Text(head))

    def start_call(self, name: str) -> int:
        index, self.num_calls = self.num_calls, self.num_calls + 1
        self.events.append(CallStart(index, new_call_id(), name))
        return index

    def args(self, index: int, text: str) -> None:
        if text:
            self.events.append(CallArgs(index, text))

    def finish(self) -> None:
        if not self.num_calls and self._pending_ws:
            self.events.append(Text(self._pending_ws))
        self._pending_ws = ""

    def take(self) -> list[Event]:
        out, self.events = self.events, []
        return out


class CallTracker:
    """One call being read by a ``CallScanner``: its header goes out once the name is
    known, then each growth of its arguments."""

    def __init__(self, out: Emitter) -> None:
        self.out, self.scanner = out, CallScanner()
        self.index: int | None = None
        self.sent = 0

    def feed(self, text: str) -> int:
        taken = self.scanner.feed(text)
        self.sync()
        return taken

    def sync(self) -> None:
        if self.index is None and self.scanner.name is not None:
            self.index = self.out.start_call(self.scanner.name)
        if self.index is not None:
            args = self.scanner.args_text
            self.out.args(self.index, args[self.sent:])
            self.sent = len(args)

    def end(self, cut: bool = False) -> bool:
        """The call is over; False if it never had a name (the caller keeps its text).
        ``cut``: the output ended inside it, its arguments are the text written (maybe "",
        not the ``{}`` of a call written without arguments)."""
        if self.index is None and self.scanner.name is not None:
            self.sync()
        if self.index is None:
            return False
        args = self.scanner.args_text if cut else self.scanner.finish()
        self.out.args(self.index, args[self.sent:])
        self.sent = len(args)
        return True


class ToolStream:
    """Incremental parser of one output's text (one per choice)."""

    def __init__(self) -> None:
        self.out = Emitter()

    def feed(self, text: str) -> list[Event]:
        self._feed(text)
        return self.out.take()

    def finish(self) -> list[Event]:
        self._finish()
        self.out.finish()
        return self.out.take()

    def _feed(self, text: str) -> None:
        self.out.text(text)

    def _finish(self) -> None:
        pass


def partial_suffix(text: str, tags: tuple[str, ...]) -> int:
    """Length of the longest end of ``text`` that begins one of ``tags`` (held back)."""
    best = 0
    for tag in tags:
        for n in range(min(len(tag) - 1, len(text)), best, -1):
            if text.endswith(tag[:n]):
                best = n
                break
    return best


class HermesToolStream(ToolStream):
    START, END = "<tool_call>", "</tool_call>"

    def __init__(self) -> None:
        super().__init__()
        self.buf = ""
        self.call: CallTracker | None = None
        self.raw = ""  # the current block's text, kept in case it is not a call

    def _feed(self, text: str) -> None:
        self.buf += text
        while self.buf:
            if self.call is None:
                if not self._scan_text():
                    return
            elif not self._scan_call():
                return

    def _scan_text(self) -> bool:
        """Content up to the next block; False when more text is needed."""
        at = self.buf.find(self.START)
        if at < 0:
            keep = partial_suffix(self.buf, (self.START,))
            self.out.text(self.buf[: len(self.buf) - keep])
            self.buf = self.buf[len(self.buf) - keep:]
            return False
        self.out.text(self.buf[:at])
        self.buf, self.raw = self.buf[at + len(self.START):], self.START
        self.call = CallTracker(self.out)
        return True

    def _scan_call(self) -> bool:
        """Feed the block's JSON until a tag ends it; False when more text is needed. A
        ``<`` outside a JSON string may begin ``</tool_call>`` (or a new block)."""
        call, i, ended = self.call, 0, False
        assert call is not None
        while i < len(self.buf):
            ch = self.buf[i]
            if ch == "<" and (call.scanner.closed or not call.scanner.in_string):
                rest = self.buf[i:]
                if rest.startswith(self.END) or rest.startswith(self.START):
                    ended = True
                    break
                if self.END.startswith(rest) or self.START.startswith(rest):
                    break  # a tag may be forming: wait for more
            call.scanner.feed(ch)
            i += 1
        call.sync()
        self.raw += self.buf[:i]
        self.buf = self.buf[i:]
        if not ended:
            return False
        closing = self.buf.startswith(self.END)
        if closing:
            self.raw += self.END
            self.buf = self.buf[len(self.END):]
        self._end_call(self.raw)
        return True

    def _end_call(self, raw: str) -> None:
        assert self.call is not None
        if not self.call.end():
            self.out.text(raw)
        self.call, self.raw = None, ""

    def _finish(self) -> None:
        if self.call is not None:
            self.call.feed(self.buf)
            self._end_call(self.raw + self.buf)
        else:
            self.out.text(self.buf)
        self.buf = ""


TOOL_PARSERS: dict[str, type[ToolStream]] = {"hermes": HermesToolStream}


def tool_stream_factory(name: str) -> type[ToolStream]:
    """The parser registered as ``name`` (``ValueError`` naming the choices otherwise)."""
    try:
        return TOOL_PARSERS[name]
    except KeyError:
        raise ValueError(f"unknown tool-call parser {name!r}; choose from "
                         f"{sorted(TOOL_PARSERS)}") from None


class ToolChoiceStream(ToolStream):
    """``tool_choice`` required (``function=None``) or named: the first character of the
    output picks the reading. Named: ``{`` starts the arguments object of ``function``.
    Required: ``[`` a JSON array of call objects, ``{`` one call object. Anything else is
    the model's own format (``fallback``).

    An output cut inside a call (``max_tokens``) returns the call as far as it was written,
    as OpenAI returns a cut forced call (with ``finish_reason: length``): its name and its
    arguments' text so far. A name cut short is completed when exactly one of ``names`` (the
    request's tools, the only names the constraint allows) starts with it; otherwise the
    call's text is kept as content, or dropped after calls that were complete."""

    def __init__(self, fallback: ToolStream, function: str | None,
                 names: tuple[str, ...] = ()) -> None:
        super().__init__()
        self.fallback, self.function, self.names = fallback, function, names
        self.out = fallback.out  # one numbering and one hold-back for both readings
        self.mode = ""  # "", "args", "array", "object" or "fallback"
        self.call: CallTracker | None = None
        self.args_index: int | None = None
        self.args = _ArgsText()
        self.array_done = False
        self.raw = ""  # the text of the call being read (array / object modes)

    def _feed(self, text: str) -> None:
        if not self.mode:
            stripped = text.lstrip()
            if not stripped:
                return
            first = stripped[0]
            text = stripped
            if self.function is not None and first == "{":
                self.mode = "args"
                self.args_index = self.out.start_call(self.function)
            elif self.function is None and first in "[{":
                self.mode = "array" if first == "[" else "object"
                text = text[1:] if first == "[" else text
            else:
                self.mode = "fallback"
        if self.mode == "fallback":
            self.fallback._feed(text)
        elif self.mode == "args":
            assert self.args_index is not None
            self.out.args(self.args_index, self.args.push(text))
        else:
            self._feed_calls(text)

    def _feed_calls(self, text: str) -> None:
        """Call objects, one after another (separated by commas inside an array)."""
        i = 0
        while i < len(text) and not self.array_done:
            if self.call is None:
                if text[i] == "{":
                    self.call, self.raw = CallTracker(self.out), ""
                else:  # separators; "]" (or junk after a lone object) ends the calls
                    self.array_done = text[i] == "]" or (
                        self.mode == "object" and text[i] not in " \t\r\n,")
                    i += 1
                continue
            taken = self.call.feed(text[i:])
            self.raw += text[i:i + taken]
            i += taken
            if not self.call.scanner.closed:
                return
            self.call.end()
            self.call = None
            self.array_done = self.mode == "object"

    def _finish(self) -> None:
        if self.mode == "fallback":
            self.fallback._finish()
        elif self.mode == "args":
            assert self.args_index is not None
            self.out.args(self.args_index, self.args.rest())
        elif self.mode in ("array", "object") and not self.array_done:
            self._end_cut_call()

    def _end_cut_call(self) -> None:
        """The output ended inside a call, or before any (``[`` alone): see the class doc."""
        call = self.call
        if call is not None and call.end(cut=True):
            return
        if call is None and self.out.num_calls:
            return  # between calls: nothing of another one was written
        prefix = call.scanner.name_prefix if call is not None else ""
        names = [n for n in self.names if n.startswith(prefix)]
        if len(names) == 1:
            self.out.start_call(names[0])
        elif call is not None and not self.out.num_calls:
            self.out.text(self.raw)


class _ArgsText:
    """Arguments written directly (a named call under a constraint): trailing whitespace
    is held back and dropped at the end."""

    def __init__(self) -> None:
        self.pending = ""

    def push(self, text: str) -> str:
        text = self.pending + text
        head = text.rstrip()
        self.pending = text[len(head):]
        return head

    def rest(self) -> str:
        return ""


def fold(events: list[Event]) -> tuple[str, list[ToolCall]]:
    """Content and calls of a whole output's events."""
    content, calls = [], []
    for ev in events:
        if isinstance(ev, Text):
            content.append(ev.text)
        elif isinstance(ev, CallStart):
            calls.append(ToolCall(ev.id, ev.name, ""))
        else:
            calls[ev.index].arguments += ev.text
    return "".join(content), calls


def parse(stream: ToolStream, text: str) -> tuple[str, list[ToolCall]]:
    """Content and calls of a whole output (the same events a stream would give)."""
    return fold(stream.feed(text) + stream.finish())
