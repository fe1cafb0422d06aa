"""Incremental detokenization and stop strings: from token ids to text deltas, safely.

``IncrementalDetokenizer`` turns one token at a time into the new text it adds, using only
``tokenizer.decode`` so it works with any tokenizer. It decodes a small window of ids twice
and emits the difference::

    ids:  | ... emitted long ago ... | prefix .. read | read .. end |
                                     |<- context ->|<- pending ->|
    delta = decode(ids[prefix:]) minus decode(ids[prefix:read])

The context tokens make decoding of the pending ones behave as in the middle of a text
(SentencePiece strips the leading space of the *first* token only; byte-level BPE needs the
bytes of a split character together). While the decoded window ends in U+FFFD (an unfinished
UTF-8 character) nothing is emitted. Cost per token is O(window), not O(length).

``StopStringMatcher`` sits after it: it holds back any tail that could still become a stop
string, and cuts the text at the first stop string that completes. Text fed while it is not
*armed* (the first ``min_tokens`` tokens) can never end the text: a stop string counts only
if it ends in armed text, as in vLLM (one that starts earlier and ends there counts)::

    text: | fed unarmed (matches ending here are ignored) | armed: a match may end here |
                                                          ^ floor
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

REPLACEMENT_CHAR = "\ufffd"
# Prompt tokens kept as context for the first output tokens (as vLLM does).
_PROMPT_CONTEXT = 5
# A UTF-8 character has at most 4 bytes, so a window still ending in U+FFFD after this many
# pending tokens is genuinely invalid text: emit it rather than hold it forever.
_MAX_PENDING = 8


class Tokenizer(Protocol):
    def decode(self, ids: list[int], skip_special_tokens: bool = ...) -> str: ...


class IncrementalDetokenizer:
    """Token ids in, text deltas out; ``text`` is everything emitted so far."""

    def __init__(
        self,
        tokenizer: Tokenizer,
        prompt_token_ids: Sequence[int] = (),
        skip_special_tokens: bool = True,
    ) -> None:
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self.text = ""
        # Only the window is kept: ids[0] is the prefix offset.
        self._ids: list[int] = list(prompt_token_ids[-_PROMPT_CONTEXT:])
        self._read = len(self._ids)  # ids[:read] have been emitted (or are prompt)

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=self.skip_special_tokens)

    def _delta(self, final: bool) -> str:
        prefix_text = self._decode(self._ids[: self._read])
        full_text = self._decode(self._ids)
        pending = len(self._ids) - self._read
        unfinished = full_text.endswith(REPLACEMENT_CHAR) and pending < _MAX_PENDING
        if len(full_text) <= len(prefix_text) or (unfinished and not final):
            return ""
        delta = full_text[len(prefix_text) :]
        # Slide the window: what was pending becomes the context for the next tokens.
        del self._ids[: self._read]
        self._read = len(self._ids)
        self.text += delta
        return delta

    def push(self, token_id: int) -> str:
        """Add one token; return the text it completes ("" while a character is unfinished)."""
        self._ids.append(token_id)
        return self._delta(final=False)

    def flush(self) -> str:
        """At the end: whatever is still held back (may contain U+FFFD)."""
        return self._delta(final=True)


class StopStringMatcher:
    """Cuts streamed text at the first stop string, holding back possible partial matches.

    "First" is the stop string that completes earliest in the text (on a tie, the one that
    starts earliest), so the result does not depend on how the text was split into deltas.
    """

    def __init__(self, stop: Sequence[str], include_stop_str_in_output: bool = False) -> None:
        if any(s == "" for s in stop):
            raise ValueError("stop strings must not be empty")
        self.stop = tuple(stop)
        self.include_stop_str_in_output = include_stop_str_in_output
        self.stopped = False
        self.matched: str | None = None  # the stop string that ended the text
        self._held = ""
        self._floor = 0  # leading characters of ``_held`` fed unarmed: no match ends there

    def feed(self, delta: str, armed: bool = True) -> tuple[str, bool]:
        """Add a text delta; return (text safe to emit now, whether a stop string matched).
        ``armed=False``: the delta cannot end the text (it is before ``min_tokens``)."""
        if self.stopped:
            return "", True
        if not self.stop:
            return delta, False
        text = self._held + delta
        match = self._first_match(text, self._floor) if armed else None
        if match is not None:
            start, end = match
            self.stopped = True
            self.matched = text[start:end]
            self._held = ""
            return text[: end if self.include_stop_str_in_output else start], True
        hold = self._partial_tail(text)
        cut = len(text) - hold
        self._held = text[cut:]
        self._floor = max(0, self._floor - cut) if armed else hold
        return text[:cut], False

    def flush(self) -> str:
        """At the end, when no stop string matched: the held-back text."""
        held, self._held, self._floor = self._held, "", 0
        return held

    def _first_match(self, text: str, floor: int = 0) -> tuple[int, int] | None:
        """The stop string that completes first in ``text`` and ends after ``floor``."""
        best: tuple[int, int] | None = None
        for s in self.stop:
            start = text.find(s, max(0, floor - len(s) + 1))
            if start < 0:
                continue
            end = start + len(s)
            if best is None or (end, start) < (best[1], best[0]):
                best = (start, end)
        return best

    def _partial_tail(self, text: str) -> int:
        """Length of the longest suffix of ``text`` that is a proper prefix of a stop string."""
        longest = 0
        for s in self.stop:
            for n in range(min(len(s) - 1, len(text)), longest, -1):
                if text.endswith(s[:n]):
                    longest = n
                    break
        return longest
