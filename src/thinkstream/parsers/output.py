"""``OutputParser``: one choice's text -> reasoning, content and tool calls.

The reasoning parser runs first (``</think>`` ends the reasoning); its content goes to the
tool-call parser. ``feed`` takes each new piece of text and returns the ``Delta`` it
produced; ``finish`` flushes what was held back. ``parse_output`` runs the same code on a
whole text, so a non-streamed message equals its streamed deltas concatenated.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from thinkstream.parsers.reasoning import REASONING, ThinkStream, reasoning_stream_factory
from thinkstream.parsers.tool_calls import (
    CallArgs,
    CallStart,
    Event,
    Text,
    ToolCall,
    ToolChoiceStream,
    ToolStream,
    fold,
    tool_stream_factory,
)


@dataclass
class Delta:
    reasoning: str = ""
    content: str = ""
    calls: list[CallStart | CallArgs] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.reasoning or self.content or self.calls)


@dataclass(frozen=True)
class ParserSpec:
    """How a request's outputs are parsed. ``tool_parser`` None: no tool parsing (no tools,
    or ``tool_choice: "none"``); ``tool_choice`` ``"auto"``, ``"required"`` or a function's
    name; ``in_reasoning``: the prompt already opened the reasoning block; ``max_calls``:
    calls past it are dropped (1 for ``parallel_tool_calls: false``); ``tool_names``: the
    request's functions (a required call cut inside its name is completed from them)."""

    reasoning_parser: str | None = None
    tool_parser: str | None = None
    tool_choice: str = "auto"
    in_reasoning: bool = False
    max_calls: int | None = None
    tool_names: tuple[str, ...] = ()

    @property
    def active(self) -> bool:
        return self.reasoning_parser is not None or self.tool_parser is not None

    def make(self) -> OutputParser:
        reasoning = None
        if self.reasoning_parser is not None:
            reasoning = reasoning_stream_factory(self.reasoning_parser)(self.in_reasoning)
        tools: ToolStream | None = None
        if self.tool_parser is not None:
            tools = tool_stream_factory(self.tool_parser)()
            if self.tool_choice != "auto":
                function = None if self.tool_choice == "required" else self.tool_choice
                tools = ToolChoiceStream(tools, function, self.tool_names)
        return OutputParser(reasoning, tools, self.max_calls)


class OutputParser:
    def __init__(self, reasoning: ThinkStream | None, tools: ToolStream | None,
                 max_calls: int | None = None) -> None:
        self.reasoning, self.tools, self.max_calls = reasoning, tools, max_calls
        self.num_calls = 0

    def feed(self, text: str) -> Delta:
        pieces = self.reasoning.feed(text) if self.reasoning is not None else [("content", text)]
        return self._route(pieces, final=False)

    def finish(self) -> Delta:
        pieces = self.reasoning.finish() if self.reasoning is not None else []
        return self._route(pieces, final=True)

    def _route(self, pieces: list[tuple[str, str]], final: bool) -> Delta:
        delta = Delta()
        events: list[Event] = []
        for kind, text in pieces:
            if kind == REASONING:
                delta.reasoning += text
            elif self.tools is None:
                delta.content += text
            else:
                events += self.tools.feed(text)
        if final and self.tools is not None:
            events += self.tools.finish()
        for ev in events:
            if isinstance(ev, Text):
                delta.content += ev.text
            elif self.max_calls is not None and ev.index >= self.max_calls:
                continue
            else:
                delta.calls.append(ev)
                self.num_calls += isinstance(ev, CallStart)
        return delta


@dataclass
class ParsedOutput:
    reasoning: str
    content: str
    calls: list[ToolCall]


def parse_output(parser: OutputParser, text: str) -> ParsedOutput:
    a, b = parser.feed(text), parser.finish()
    content, calls = fold([Text(a.content + b.content), *a.calls, *b.calls])
    return ParsedOutput(a.reasoning + b.reasoning, content, calls)
