"""Prompt lookup (n-gram) drafting: the tokens that followed the latest earlier occurrence
of the sequence's last n tokens (the first one when the latest leaves too few tokens after
it, as in a repeating run), n from ``ngram_max`` down to ``ngram_min`` (Saxena 2023,
"prompt lookup decoding"; vLLM's and llama.cpp's n-gram drafters). No model runs, so it
is free; it pays when the answer quotes or edits its input.

Each sequence keeps an index from every n-gram of its tokens to the latest position where
it ended, extended incrementally as tokens arrive (O(1) per token and n), rebuilt if the
tokens shrink. ``continuing`` tells the adaptive length whether this step's draft continues
the copy the last verification accepted (``continuity.py``). This module imports no torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from thinkstream.speculative.proposer import NO_DRAFT, Draft, Proposer

if TYPE_CHECKING:
    from thinkstream.engine.request import Sequence


@dataclass
class _Index:
    """n-gram -> end positions of its first and latest occurrences (ends < ``upto``)."""

    ends: dict[tuple[int, ...], tuple[int, int]] = field(default_factory=dict)
    upto: int = 0  # n-grams ending before this position are indexed
    head: tuple[int, ...] = ()  # the first tokens when indexed (a changed prompt rebuilds)


class NgramProposer(Proposer):
    """Draft by prompt lookup. Confidence: ``base + step * (n - 1)`` for a match of n
    tokens (longer matches are surer), capped at 0.9."""

    name = "ngram"
    cost_per_token = 0.0

    def __init__(self, ngram_min: int = 2, ngram_max: int = 4) -> None:
        if not 1 <= ngram_min <= ngram_max:
            raise ValueError("need 1 <= ngram_min <= ngram_max")
        self.ngram_min, self.ngram_max = ngram_min, ngram_max
        self._index: dict[str, _Index] = {}
        self._step: dict[str, tuple[int, int, int]] = {}  # seq -> (tokens, end, n) this step
        # seq -> (the source position the target's next token should copy, the token
        # count then) after the last step's accepted run
        self._next: dict[str, tuple[int, int]] = {}

    def continuing(self, seq_id: str, tokens: list[int], k: int) -> bool | None:
        """Whether the draft of ``seq_id`` this step (at most ``k`` tokens after
        ``tokens``) continues the copy the last verification accepted: the last step's
        accepted run and the target's own token (``tokens[-1]``) all followed that step's
        source, and the new draft is what that source goes on with (from there, or from
        another occurrence of the same tokens: a repeating run matches its first one).
        False without a match. Call once a step, before ``propose``: the match found here
        is the one drafted from, and until ``observe`` reports drafts accepted none are
        taken to have been."""
        last = len(tokens)
        found = self.match(seq_id, tokens, k)
        src, expected = self._next.pop(seq_id, (-1, -1))
        if found is None:
            self._step.pop(seq_id, None)
            return False
        end, n = found
        self._step[seq_id] = (last, end, n)
        self._next[seq_id] = (end + 1, last + 1)
        if expected != last or not 0 <= src < last - 1 or tokens[src] != tokens[-1]:
            return False
        draft, before = tokens[end + 1 : end + 1 + k], tokens[src + 1 : src + 1 + k]
        m = min(len(draft), len(before))
        return end == src or draft[:m] == before[:m]

    def propose(self, seqs: list[Sequence], lengths: list[int]) -> list[Draft]:
        return [self.lookup(s.seq_id, s.token_ids, k) if k > 0 else NO_DRAFT
                for s, k in zip(seqs, lengths, strict=True)]

    def lookup(self, key: str, tokens: list[int], k: int) -> Draft:
        """At most ``k`` tokens after the latest earlier match of ``tokens``' suffix."""
        step = self._step.get(key)
        found = step[1:] if step and step[0] == len(tokens) else self.match(key, tokens, k)
        if found is None:
            return NO_DRAFT
        end, n = found
        draft = tokens[end + 1 : end + 1 + k]
        conf = min(0.9, 0.5 + 0.15 * (n - 1))
        return Draft(draft, [conf] * len(draft))

    def match(self, key: str, tokens: list[int], k: int) -> tuple[int, int] | None:
        """(end, n): the position where the matched earlier occurrence of ``tokens``' last
        n tokens ends (the draft is the tokens after it), n the longest n-gram length with
        a match; None without a match."""
        idx = self._update(key, tokens)
        last = len(tokens)
        for n in range(min(self.ngram_max, last - 1), self.ngram_min - 1, -1):
            ends = idx.ends.get(tuple(tokens[last - n :]))
            if ends is None:
                continue
            first, latest = ends  # the latest match, unless it leaves fewer than k tokens
            return (latest if latest + k < last else first), n
        return None

    def _update(self, key: str, tokens: list[int]) -> _Index:
        """Index every n-gram ending at positions < len(tokens) - 1 (the suffix itself,
        ending at the last token, must not match itself)."""
        idx = self._index.get(key)
        head = tuple(tokens[:8])
        if idx is None or idx.upto > len(tokens) - 1 or idx.head != head:
            idx = self._index[key] = _Index(head=head)
        stop = len(tokens) - 1
        for end in range(idx.upto, stop):
            for n in range(self.ngram_min, min(self.ngram_max, end + 1) + 1):
                gram = tuple(tokens[end - n + 1 : end + 1])
                idx.ends[gram] = (idx.ends.get(gram, (end, end))[0], end)
        idx.upto = max(idx.upto, stop)
        return idx

    def observe(self, seq_id: str, tokens: list[int], accepted: int) -> None:
        step = self._step.get(seq_id)
        if step is not None:
            self._next[seq_id] = (step[1] + accepted + 1, step[0] + accepted + 1)

    def forget(self, seq_id: str) -> None:
        for table in (self._index, self._step, self._next):
            table.pop(seq_id, None)

    def tracked(self) -> set[str]:
        return set(self._index) | set(self._step) | set(self._next)
