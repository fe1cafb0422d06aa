"""``CallScanner``: one tool-call object ``{"name": ..., "arguments": ...}`` read a character
at a time, as a model writes it.

The scanner is resumable (feed any split of the text) and reports, at every point, the
call's ``name`` once its string is complete and ``args_text``: the part of the final
arguments string that can no longer change. For an object or array value that is the raw
text written so far (the final arguments are the value's text exactly as the model wrote
it), so a stream of ``args_text`` growth concatenates to the final arguments. A value given
as a JSON string (arguments encoded twice) is decoded once complete; a scalar is taken as
written (``null`` as ``{}``). ``"parameters"`` is read as ``"arguments"``.

    {  "name" : "get_weather" , "arguments" : {"city": "Paris"}  }
    ^ depth 1  key   value           key          value (depth 2..) ^ done

Text that is not JSON sets ``error``; what was read stays (a caller may keep a call whose
name it has).
"""

from __future__ import annotations

import json

ARGUMENT_KEYS = ("arguments", "parameters")
_WS = " \t\r\n"
_EXPECT_OBJECT, _EXPECT_KEY, _KEY, _COLON, _EXPECT_VALUE, _VALUE, _AFTER = range(7)


class CallScanner:
    def __init__(self) -> None:
        self.state = _EXPECT_OBJECT
        self.name: str | None = None
        self.done = False  # the object's closing brace was read
        self.error = False
        self._key: list[str] = []
        self._current_key: str | None = None
        self._value: list[str] = []
        self._kind = ""  # of the value being read: "container", "string" or "scalar"
        self._depth = 0  # brackets open inside a container value
        self._in_string = False
        self._escape = False
        self._args_final: str | None = None
        self._args_live: list[str] | None = None  # raw text of a container arguments value

    @property
    def in_string(self) -> bool:
        """Inside a JSON string (a ``<`` here is text, not the start of a tag)."""
        return self._in_string

    @property
    def name_prefix(self) -> str:
        """The name as far as it was written: all of it once known, the start of its string
        while it is being read, else "" (an output cut inside a call keeps what it has)."""
        if self.name is not None:
            return self.name
        if self.state == _VALUE and self._current_key == "name" and self._kind == "string":
            return "".join(self._value[1:])
        return ""

    @property
    def closed(self) -> bool:
        return self.done or self.error

    @property
    def args_text(self) -> str:
        """The arguments as far as they are final (see the module doc)."""
        if self._args_final is not None:
            return self._args_final
        return "".join(self._args_live) if self._args_live is not None else ""

    def finish(self) -> str:
        """No more text: the final arguments (``{}`` when none were written)."""
        if self._args_final is None:
            self._args_final = self.args_text or "{}"
        return self._args_final

    def feed(self, text: str) -> int:
        """Read ``text``; returns how many characters were taken (the rest follows the
        object, or comes after an error)."""
        for i, ch in enumerate(text):
            if self.closed:
                return i
            self._step(ch)
        return len(text)

    # ------------------------------------------------------------- the state machine
    def _step(self, ch: str) -> None:
        state = self.state
        if state == _VALUE:
            self._value_char(ch)
        elif state == _KEY:
            if self._string_char(ch):
                self._current_key = _decode(self._key, str)
                self.state = _COLON
        elif ch in _WS:
            return
        elif state == _EXPECT_OBJECT:
            self._expect(ch == "{", _EXPECT_KEY)
        elif state == _EXPECT_KEY:
            if ch == "}":
                self.done = True
            elif self._expect(ch == '"', _KEY):
                self._key, self._in_string = ['"'], True
        elif state == _COLON:
            self._expect(ch == ":", _EXPECT_VALUE)
        elif state == _EXPECT_VALUE:
            self._start_value(ch)
        elif state == _AFTER:
            if ch == "}":
                self.done = True
            else:
                self._expect(ch == ",", _EXPECT_KEY)

    def _expect(self, ok: bool, next_state: int) -> bool:
        if ok:
            self.state = next_state
        else:
            self.error = True
        return ok

    def _string_char(self, ch: str) -> bool:
        """Append ``ch`` to the key or string value; True when it closed the string."""
        target = self._key if self.state == _KEY else self._value
        target.append(ch)
        if self._escape:
            self._escape = False
        elif ch == "\\":
            self._escape = True
        elif ch == '"':
            self._in_string = False
            return True
        return False

    def _start_value(self, ch: str) -> None:
        self.state, self._value = _VALUE, [ch]
        if ch in "{[":
            self._kind, self._depth = "container", 1
            if self._current_key in ARGUMENT_KEYS:
                self._args_live = [ch]
        elif ch == '"':
            self._kind, self._in_string = "string", True
        else:
            self._kind = "scalar"

    def _value_char(self, ch: str) -> None:
        if self._kind == "scalar":
            if ch in _WS or ch in ",}":
                self._end_value()
                self._step(ch)  # the delimiter belongs to the object
            else:
                self._value.append(ch)
            return
        if self._kind == "string":
            if self._string_char(ch):
                self._end_value()
            return
        if self._in_string:  # a string inside the container
            self._string_char(ch)
        else:
            self._value.append(ch)
            if ch == '"':
                self._in_string = True
            elif ch in "{[":
                self._depth += 1
            elif ch in "}]":
                self._depth -= 1
        if self._args_live is not None:
            self._args_live.append(ch)
        if self._depth == 0:
            self._end_value()

    def _end_value(self) -> None:
        raw = "".join(self._value)
        if self._current_key == "name":
            self.name = _decode(self._value, str) if self._kind == "string" else raw
        elif self._current_key in ARGUMENT_KEYS:
            if self._kind == "container":
                self._args_final = "".join(self._args_live or [])
            elif self._kind == "string":
                self._args_final = _decode(self._value, str)
            else:
                self._args_final = "{}" if raw == "null" else raw
            self._args_live = None
        self.state, self._value, self._kind = _AFTER, [], ""


def _decode(chars: list[str], kind: type) -> str:
    """A JSON string's value (its raw text if it is malformed)."""
    raw = "".join(chars)
    try:
        value = json.loads(raw)
    except ValueError:
        return raw.strip('"')
    return value if isinstance(value, kind) else raw
