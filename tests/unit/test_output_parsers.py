"""Tool-call and reasoning parsers without a model: exact content, calls and reasoning for
fixed texts, and the streamed events of any split of a text fold to the whole-text parse."""

from __future__ import annotations

import random

import pytest

from thinkstream.parsers.calls import CallScanner
from thinkstream.parsers.output import ParserSpec, parse_output
from thinkstream.parsers.reasoning import ThinkStream
from thinkstream.parsers.tool_calls import (
    CallArgs,
    CallStart,
    HermesToolStream,
    Text,
    ToolChoiceStream,
    fold,
    parse,
    tool_stream_factory,
)

CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'


def pieces(text: str, rng: random.Random) -> list[str]:
    cuts = sorted(rng.sample(range(1, len(text)), rng.randint(0, len(text) - 1))) if len(text) > 1 else []
    return [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]


def calls_of(parsed) -> list[tuple[str, str]]:
    return [(c.name, c.arguments) for c in parsed]


HERMES = [
    (CALL, "", [("get_weather", '{"city": "Paris"}')]),
    ("Let me check.\n" + CALL + "\n" + CALL.replace("Paris", "Rome") + "\n",
     "Let me check.", [("get_weather", '{"city": "Paris"}'), ("get_weather", '{"city": "Rome"}')]),
    ("no tools here\n", "no tools here\n", []),
    ('<tool_call>{"name": "f", "arguments": {"s": "a</tool_call>b", "n": [1, {"x": null}]}}'
     "</tool_call>", "", [("f", '{"s": "a</tool_call>b", "n": [1, {"x": null}]}')]),
    ('<tool_call>{"arguments": "{\\"q\\": 1}", "name": "g"}</tool_call>', "", [("g", '{"q": 1}')]),
    ('<tool_call>{"name": "h"}</tool_call>', "", [("h", "{}")]),
    ('<tool_call>{"name": "h", "parameters": {"a": 1}}</tool_call>', "", [("h", '{"a": 1}')]),
    ("<tool_call>not json</tool_call> tail", "<tool_call>not json</tool_call> tail", []),
    ("a <tool_ca", "a <tool_ca", []),
    ('<tool_call>{"name": "cut", "arguments": {"x": [1,', "", [("cut", '{"x": [1,')]),
    ('<tool_call>{"name": "a"}<tool_call>{"name": "b", "arguments": {}}</tool_call>', "",
     [("a", "{}"), ("b", "{}")]),
]


@pytest.mark.parametrize(("text", "content", "calls"), HERMES)
def test_hermes_parse(text, content, calls) -> None:
    got_content, got_calls = parse(HermesToolStream(), text)
    assert got_content == content
    assert calls_of(got_calls) == calls
    assert all(c.id.startswith("call_") and len(c.id) == 29 for c in got_calls)


@pytest.mark.parametrize(("text", "content", "calls"), HERMES)
def test_hermes_stream_of_any_split_folds_to_the_whole(text, content, calls) -> None:
    rng = random.Random(0)
    for _ in range(40):
        stream, events = HermesToolStream(), []
        for piece in pieces(text, rng):
            events += stream.feed(piece)
        events += stream.finish()
        got_content, got_calls = fold(events)
        assert (got_content, calls_of(got_calls)) == (content, calls)


def test_stream_events_are_header_then_fragments() -> None:
    stream = HermesToolStream()
    events = []
    for ch in CALL:
        events += stream.feed(ch)
    events += stream.finish()
    assert isinstance(events[0], CallStart) and events[0].name == "get_weather"
    frags = [e.text for e in events[1:]]
    assert all(isinstance(e, CallArgs) and e.index == 0 for e in events[1:])
    assert "".join(frags) == '{"city": "Paris"}' and len(frags) > 5  # streamed, not at the end


def test_plain_text_streams_with_only_trailing_whitespace_held() -> None:
    stream = HermesToolStream()
    assert stream.feed("Hello ") == [Text("Hello")]
    assert stream.feed("world\n") == [Text(" world")]
    assert stream.finish() == [Text("\n")]


CHOICE = [  # (function or None for required, text, content, calls)
    (None, '[{"name": "a", "arguments": {"q": 1}}, {"name": "b", "arguments": {}}]', "",
     [("a", '{"q": 1}'), ("b", "{}")]),
    (None, ' {"name": "a", "arguments": {"q": 1}} trailing', "", [("a", '{"q": 1}')]),
    (None, CALL, "", [("get_weather", '{"city": "Paris"}')]),
    (None, "I cannot.", "I cannot.", []),
    ("get_weather", '{"city": "Paris"}\n', "", [("get_weather", '{"city": "Paris"}')]),
    ("get_weather", CALL, "", [("get_weather", '{"city": "Paris"}')]),
]


@pytest.mark.parametrize(("function", "text", "content", "calls"), CHOICE)
def test_required_and_named_choices(function, text, content, calls) -> None:
    whole = parse(ToolChoiceStream(HermesToolStream(), function), text)
    assert (whole[0], calls_of(whole[1])) == (content, calls)
    rng = random.Random(1)
    for _ in range(30):
        stream, events = ToolChoiceStream(HermesToolStream(), function), []
        for piece in pieces(text, rng):
            events += stream.feed(piece)
        got = fold(events + stream.finish())
        assert (got[0], calls_of(got[1])) == (content, calls)


def test_registry_names_its_choices() -> None:
    assert tool_stream_factory("hermes") is HermesToolStream
    with pytest.raises(ValueError, match="unknown tool-call parser 'nope'; choose from \\['hermes'\\]"):
        tool_stream_factory("nope")


def test_call_scanner_reports_stable_prefixes() -> None:
    text = '{"name": "f", "arguments": {"a": "x}y", "b": [1, 2]}}'
    scanner, seen = CallScanner(), []
    for ch in text:
        scanner.feed(ch)
        seen.append(scanner.args_text)
    assert all(b.startswith(a) for a, b in zip(seen, seen[1:], strict=False))
    assert scanner.done and scanner.name == "f" and scanner.finish() == '{"a": "x}y", "b": [1, 2]}'


REASONING = [  # (text, prompt opened the block, reasoning, content)
    ("<think>\nStep one.\n\nStep two.\n</think>\n\nParis.", False, "Step one.\n\nStep two.", "Paris."),
    ("Paris.", False, "", "Paris."),
    ("  Paris.", False, "", "  Paris."),
    ("<think>cut off", False, "cut off", ""),
    ("reasoning</think>\nanswer", True, "reasoning", "answer"),
    ("<thi", False, "", "<thi"),
]


@pytest.mark.parametrize(("text", "opened", "reasoning", "content"), REASONING)
def test_think_split(text, opened, reasoning, content) -> None:
    rng = random.Random(2)
    for k in range(30):
        stream, got = ThinkStream(opened), []
        for piece in ([text] if k == 0 else pieces(text, rng)):
            got += stream.feed(piece)
        got += stream.finish()
        assert "".join(t for kind, t in got if kind == "reasoning") == reasoning
        assert "".join(t for kind, t in got if kind == "content") == content


def test_reasoning_then_tool_call() -> None:
    spec = ParserSpec(reasoning_parser="qwen3", tool_parser="hermes")
    out = parse_output(spec.make(), "<think>Need the weather.</think>\n\n" + CALL)
    assert (out.reasoning, out.content) == ("Need the weather.", "")
    assert calls_of(out.calls) == [("get_weather", '{"city": "Paris"}')]
    streamed = spec.make()
    deltas = [streamed.feed(ch) for ch in "<think>Need the weather.</think>\n\n" + CALL]
    deltas.append(streamed.finish())
    assert "".join(d.reasoning for d in deltas) == "Need the weather."
    assert streamed.num_calls == 1


def test_inactive_spec_passes_text_through() -> None:
    spec = ParserSpec()
    assert not spec.active
    out = parse_output(spec.make(), "<think>x</think> " + CALL)
    assert out.content == "<think>x</think> " + CALL and out.calls == []


@pytest.mark.parametrize(("text", "content", "calls"), [
    ("[", "", [("get_weather", "")]),  # one name starts with "get_w": it is that call
    ('[{"name": "get_w', "", [("get_weather", "")]),
    ('[{"name": "get_', '{"name": "get_', []),  # two do: the text stays, as content
    ('[{"name": "get_time", "arguments": {"tz": "U', "", [("get_time", '{"tz": "U')]),
    ('[{"name": "get_time", "arguments": {}}, {"na', "", [("get_time", "{}")]),
])
def test_a_required_call_cut_short_keeps_what_was_written(text, content, calls) -> None:
    """The output ends inside the call (``max_tokens``): the call as far as it goes."""
    def stream() -> ToolChoiceStream:
        return ToolChoiceStream(HermesToolStream(), None, ("get_weather", "get_time")
                                if text != "[" else ("get_weather",))
    whole = parse(stream(), text)
    assert (whole[0], calls_of(whole[1])) == (content, calls)
    s, events = stream(), []
    for ch in text:
        events += s.feed(ch)
    got = fold(events + s.finish())
    assert (got[0], calls_of(got[1])) == (content, calls)
