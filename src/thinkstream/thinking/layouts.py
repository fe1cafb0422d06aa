"""Position layouts for think-while-reading: where input and reasoning tokens sit on the
RoPE axis. Pure functions; keys are cached at these positions and never recomputed.

A session's input (sequence S) is split into units ending at ``ends[0] < ends[1] < ...``
(token indices, exclusive). After unit k comes its reasoning segment (head, note, tail:
``seg_lens[k]`` tokens of the reasoning sequence R). With ``u(i)`` the number of unit ends
``<= i`` (units completed before input token i)::

    interleaved:  pos_S(i) = i + sum(seg_lens[k] for k < u(i))    arrival order: reading
                  | unit 0 | note 0 | unit 1 | note 1 | ...         waits for each note
    gap:          pos_S(i) = i + gap * u(i)                        a fixed reserved gap:
                  | unit 0 | note 0 ... (gap) | unit 1 | ...        unit k+1 is placed
                                                                    before note k ends
    grouped:      pos_S(i) = i;  pos_R(j) = j                      each group from its own
                  input:     | unit 0 | unit 1 | ...               origin (StreamingThinker
                  reasoning: | note 0 | note 1 | ...               group positions)

In interleaved and gap the reasoning segment of unit k starts right after the unit:
``pos_R = pos_S(ends[k] - 1) + 1`` onwards (contiguous); a gap segment must fit in ``gap``.
After the input closes, everything (final note, integration passes, the answer) follows
contiguously after the highest position used so far.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass

LAYOUTS = ("interleaved", "gap", "grouped")


@dataclass(frozen=True)
class Layout:
    kind: str = "gap"
    gap: int = 48  # positions reserved after each unit (gap layout)

    def __post_init__(self) -> None:
        if self.kind not in LAYOUTS:
            raise ValueError(f"layout: {self.kind!r} is not one of {', '.join(LAYOUTS)}")
        if self.gap < 1:
            raise ValueError("layout gap must be >= 1")


def input_positions(layout: Layout, num_tokens: int, ends: Sequence[int],
                    seg_lens: Sequence[int]) -> list[int]:
    """Position of every input token. ``seg_lens`` may be shorter than ``ends`` (notes not
    finished): in interleaved, tokens after such a unit get provisional positions and must
    not be computed yet (see ``known_until``)."""
    if layout.kind == "grouped":
        return list(range(num_tokens))
    out = []
    for i in range(num_tokens):
        u = bisect_right(ends, i)
        if layout.kind == "gap":
            out.append(i + layout.gap * u)
        else:
            out.append(i + sum(seg_lens[:u]))
    return out


def known_until(layout: Layout, ends: Sequence[int], seg_lens: Sequence[int]) -> int | None:
    """Input tokens before this index have final positions (None: all do). Only interleaved
    waits: tokens after unit k are placed once note k's length is known."""
    if layout.kind != "interleaved" or len(seg_lens) >= len(ends):
        return None
    return ends[len(seg_lens)]


def segment_start(layout: Layout, unit_end: int, input_pos: Sequence[int],
                  reasoning_pos: Sequence[int]) -> int:
    """First position of the reasoning segment written after the unit ending at ``unit_end``."""
    if layout.kind == "grouped":
        return reasoning_pos[-1] + 1 if reasoning_pos else 0
    return input_pos[unit_end - 1] + 1


def after_all(input_pos: Sequence[int], reasoning_pos: Sequence[int]) -> int:
    """The first position after everything placed so far (after close: passes, answer)."""
    return max([-1, *input_pos[-1:], *reasoning_pos[-1:]]) + 1
