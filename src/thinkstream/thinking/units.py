"""Input units: where a session's input is cut into pieces that each get a note.

A unit ends after a token whose text ends a sentence (default), contains a delimiter, or
after a fixed number of tokens. A unit shorter than ``min_tokens`` merges into the next one
(nothing new worth a note). Pure Python.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

SENTENCE_END = (".", "!", "?", "\n")


@dataclass(frozen=True)
class UnitPolicy:
    kind: str = "sentence"  # "sentence" | "delimiter" | "tokens"
    delimiter: str = "\n"
    num_tokens: int = 32
    min_tokens: int = 4

    def __post_init__(self) -> None:
        if self.kind not in ("sentence", "delimiter", "tokens"):
            raise ValueError(f"unit: {self.kind!r} is not sentence, delimiter or tokens")
        if self.num_tokens < 1 or self.min_tokens < 1:
            raise ValueError("unit num_tokens and min_tokens must be >= 1")
        if self.kind == "delimiter" and not self.delimiter:
            raise ValueError("unit delimiter must not be empty")


def _ends_unit(policy: UnitPolicy, piece: str) -> bool:
    if policy.kind == "delimiter":
        return policy.delimiter in piece
    stripped = piece.rstrip(" ")
    return stripped.endswith(SENTENCE_END) or "\n" in piece


def find_unit_ends(policy: UnitPolicy, pieces: Sequence[str], start: int, stop: int) -> list[int]:
    """Unit ends (exclusive token indices) in ``(start, stop]``, scanning tokens
    ``start..stop-1`` whose texts are ``pieces[i]``; the previous unit ended at ``start``."""
    ends, last = [], start
    for i in range(start, stop):
        n = i + 1 - last
        cut = n >= policy.num_tokens if policy.kind == "tokens" else _ends_unit(policy, pieces[i])
        if cut and n >= min(policy.min_tokens, policy.num_tokens):
            ends.append(i + 1)
            last = i + 1
    return ends
