"""Keep the token ids of a growing (or edited) text equal to the tokenization of the whole
text, re-encoding only a tail window.

A change at character ``p`` can alter tokens a little before ``p`` (a BPE merge across the
cut, a special token whose text was split between chunks), never far before it. So the ids
are kept up to an *anchor*: the last clean token boundary at least ``window`` characters
before ``p``. Only the text after it is encoded again::

    text:  | ........ kept tokens ........ |<- window ->| p (first changed char) ...... |
    ids:   | ids[:k], unchanged            | re-encoded: encode(text[anchor:])          |
                                           ^ anchor = end of token k-1, a clean boundary

A boundary is clean when token k-1 ends where token k starts (byte-level BPE may split one
character over several tokens; those share the character's offsets and are never cut
apart). The window covers the longest special-token text plus a margin, so a special token
split across chunks is re-read whole. Tokenizations whose influence reaches further back (a
pathological pre-tokenizer, a normalizer that rewrites across the cut) are caught by the
caller, which compares with a full tokenization once, when the input closes.
"""

from __future__ import annotations

import copy
from bisect import bisect_right
from collections.abc import Callable, Sequence
from dataclasses import dataclass

Offsets = list[tuple[int, int]]
# encode(text, start): ids and offsets of ``text``, which begins at character ``start`` of
# the whole text (an encoder that treats regions of the whole text differently needs it)
EncodeFn = Callable[[str, int], tuple[list[int], Offsets | None]]


def common_prefix_len(a: Sequence, b: Sequence) -> int:
    """Length of the longest common prefix of two strings or lists (slice compares run in C)."""
    n = min(len(a), len(b))
    if a[:n] == b[:n]:
        return n
    lo, hi = 0, n  # invariant: a[:lo] == b[:lo] and a[:hi] != b[:hi]
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid
    return lo


def offsets_encoder(tokenizer) -> tuple[EncodeFn, int]:
    """An ``encode(text) -> (ids, char offsets)`` without special tokens added, and the length
    of the longest added-token text (the window must cover it). Tokenizers without offsets
    give ``None`` offsets, which makes every update re-encode the whole text."""
    backend = getattr(tokenizer, "backend", None)
    if backend is None or not hasattr(backend, "encode"):
        return (lambda text, start=0: (tokenizer.encode(text, add_special_tokens=False), None)), 0
    longest = max((len(t.content) for t in backend.get_added_tokens_decoder().values()), default=0)

    def encode(text: str, start: int = 0) -> tuple[list[int], Offsets | None]:
        enc = backend.encode(text, add_special_tokens=False)
        return list(enc.ids), list(enc.offsets)

    return encode, longest


@dataclass(frozen=True)
class Retokenized:
    """A planned update: the new text and ids; ``keep`` ids of the old list are unchanged."""

    text: str
    ids: list[int]
    starts: list[int]
    ends: list[int]
    keep: int


class TailTokenizer:
    """``ids == encode(text)`` (no special tokens added) under appends and replacements."""

    def __init__(self, encode: EncodeFn, window: int = 32, text: str = "") -> None:
        if window < 1:
            raise ValueError("window must be >= 1")
        self._encode = encode
        self.window = window
        self.text = ""
        self.ids: list[int] = []
        self._starts: list[int] = []
        self._ends: list[int] = []
        self._exact = True  # offsets available
        if text:
            self.apply(self.plan(text))

    def plan(self, new_text: str) -> Retokenized:
        """Tokenize ``new_text`` reusing the ids of the unchanged head; changes nothing."""
        first_change = common_prefix_len(self.text, new_text)
        k, anchor = self._anchor(first_change - self.window)
        ids, offsets = self._encode(new_text[anchor:], anchor)
        if offsets is None:  # no offsets: whole text, no anchors
            ids, offsets = self._encode(new_text, 0) if anchor else (ids, None)
            k, anchor = 0, 0
            starts = ends = [0] * len(ids)
        else:
            starts = [s + anchor for s, _ in offsets]
            ends = [e + anchor for _, e in offsets]
        keep = k + common_prefix_len(self.ids[k:], ids)
        return Retokenized(new_text, self.ids[:k] + ids, self._starts[:k] + starts,
                           self._ends[:k] + ends, keep)

    def copy(self, encode: EncodeFn | None = None) -> TailTokenizer:
        """An independent copy (``apply`` rebinds fields, never mutates them), encoding with
        ``encode`` if given: an encoder bound to its owner must follow the owner's copy."""
        twin = copy.copy(self)
        if encode is not None:
            twin._encode = encode
        return twin

    def apply(self, plan: Retokenized) -> None:
        self.text, self.ids = plan.text, plan.ids
        self._starts, self._ends = plan.starts, plan.ends

    def _anchor(self, limit: int) -> tuple[int, int]:
        """(k, char offset): keep ids[:k], re-encode from the end of token k-1 (<= limit)."""
        if limit <= 0 or not self.ids:
            return 0, 0
        k = bisect_right(self._ends, limit)
        while k > 0 and k < len(self.ids) and self._ends[k - 1] > self._starts[k]:
            k -= 1  # tokens k-1 and k share a character: not a boundary
        while k > 0 and self._ends[k - 1] <= 0:
            k -= 1  # zero-width tokens at the very start: nothing to anchor on
        return (k, self._ends[k - 1]) if k else (0, 0)
