"""Reasoning apart from the answer: ``<think>...</think>`` output split into
``reasoning_content`` and ``content``, streamed or whole through one code path.

``ThinkStream`` (registered as ``qwen3``, ``--reasoning-parser``) reads an output that may
begin with ``<think>`` (leading whitespace allowed). Everything up to ``</think>`` is
reasoning, the rest is content; an output without ``<think>`` is all content, and one cut
off before ``</think>`` all reasoning. A prompt that already ends inside the block (a
template that opens ``<think>`` itself) starts the stream in reasoning
(``in_reasoning=True``). Reasoning is stripped of surrounding whitespace and the answer of
the whitespace after ``</think>``: whitespace is held back until text follows it, so the
streamed pieces concatenate to the whole-output result whatever the split.
"""

from __future__ import annotations

from thinkstream.parsers.tool_calls import partial_suffix

REASONING, CONTENT = "reasoning", "content"


class _Trim:
    """Text with leading whitespace dropped (if ``lstrip``) and trailing whitespace held."""

    def __init__(self, lstrip: bool) -> None:
        self.lstrip, self.pending = lstrip, ""

    def push(self, text: str) -> str:
        if self.lstrip:
            text = text.lstrip()
            if not text:
                return ""
            self.lstrip = False
        text = self.pending + text
        head = text.rstrip()
        self.pending = text[len(head):]
        return head


class ThinkStream:
    START, END = "<think>", "</think>"

    def __init__(self, in_reasoning: bool = False) -> None:
        self.state = REASONING if in_reasoning else ""
        self.buf = ""
        self.reasoning = _Trim(lstrip=True)
        self.skip_ws = False  # right after </think>: the answer's leading whitespace goes

    def feed(self, text: str) -> list[tuple[str, str]]:
        """``(kind, text)`` pieces, kind ``"reasoning"`` or ``"content"``."""
        self.buf += text
        out: list[tuple[str, str]] = []
        if not self.state:
            head = self.buf.lstrip()
            if head.startswith(self.START):
                self.state, self.buf = REASONING, head[len(self.START):]
            elif self.START.startswith(head):
                return out  # nothing yet, or "<thi": wait
            else:
                self.state = CONTENT
        if self.state == REASONING:
            at = self.buf.find(self.END)
            if at < 0:
                keep = partial_suffix(self.buf, (self.END,))
                self._piece(out, REASONING, self.reasoning.push(self.buf[: len(self.buf) - keep]))
                self.buf = self.buf[len(self.buf) - keep:]
                return out
            self._piece(out, REASONING, self.reasoning.push(self.buf[:at]))
            self.state, self.buf = CONTENT, self.buf[at + len(self.END):]
            self.skip_ws = True
        if self.state == CONTENT:
            text, self.buf = self.buf, ""
            if self.skip_ws:
                text = text.lstrip()
                self.skip_ws = not text
            self._piece(out, CONTENT, text)
        return out

    def finish(self) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        if not self.state:
            self._piece(out, CONTENT, self.buf)  # "", or a lone "<thi"
        elif self.state == REASONING:
            self._piece(out, REASONING, self.reasoning.push(self.buf))
        self.buf = ""
        return out

    @staticmethod
    def _piece(out: list[tuple[str, str]], kind: str, text: str) -> None:
        if text:
            out.append((kind, text))


REASONING_PARSERS: dict[str, type[ThinkStream]] = {"qwen3": ThinkStream}


def reasoning_stream_factory(name: str) -> type[ThinkStream]:
    try:
        return REASONING_PARSERS[name]
    except KeyError:
        raise ValueError(f"unknown reasoning parser {name!r}; choose from "
                         f"{sorted(REASONING_PARSERS)}") from None
