"""The waiting queue: admission order at O(log n) a sequence; a step reads what it admits or
passes over, never the whole queue for its own sake.

The scheduler's rule is that of a deque stable-sorted by the priority key at the start of
every step (smaller first; no key: arrival order): sequences appended go to the back,
preempted and passed-over ones to the front, and among equal keys the order they stood in
is kept. Sorting n sequences each step made ``LLM.generate`` of n prompts quadratic. Here
the same order is a heap of ``(key, label)``:

    front (staged) | heap, by (key, label) ..................... | back (staged)
    labels -1, -2 ..                                               labels n, n+1 ..

A label records where a sequence stood: ``appendleft`` takes a label below every other,
``append`` one above, and ``sort`` (the step's start) moves the staged ends into the heap
under their keys then. Among equal keys, label order is the order they stood in, so a
pop of the heap is the stable sort's head. Keys are read once, when a sequence enters the
heap: a key that changes must be told (``touch``; a *volatile* sequence, an open input or
a feature's, is re-keyed every step). A changed key that no other waiting sequence shares
moves alone; one that ties with another falls back to the full stable sort (rare: the
policies' keys end with the arrival time). Removal is lazy (a dead entry is skipped and
the heap compacted when half dead), so aborting a waiting request is O(1). Admission reads
the queue in order without taking anything out (``scan``): what it passes over keeps its
place.

This module imports no torch.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

from thinkstream.engine.request import Sequence

_FRONT, _HEAP, _BACK = 0, 1, 2


KEY, LABEL, UID, SEQ, BAND, VOL = range(6)


class _Entry(list):
    """``[key, label, uid, seq, band, volatile]``, compared by key, label, then a unique id
    (so never by the sequence). ``seq`` is None once removed; ``band``: front, heap, back."""

    __slots__ = ()


class WaitQueue:
    """Waiting sequences in admission order (see the module docstring)."""

    def __init__(self, priority: Callable[[Sequence], Any] | None = None) -> None:
        self.priority = priority
        self._heap: list[_Entry] = []
        self._front: deque[_Entry] = deque()
        self._back: deque[_Entry] = deque()
        self._where: dict[Sequence, _Entry] = {}
        self._groups: dict[str, dict[Sequence, None]] = {}
        self._volatile: dict[Sequence, None] = {}
        self._touched: dict[Sequence, None] = {}
        self._key_count: dict[Any, int] | None = {}  # None: keys unhashable
        self._next_front, self._next_back = -1, 0
        self._dead = 0  # dead entries in the heap
        self._uid = 0
        self.num_key_calls = 0  # priority keys read (tests count them)

    # ------------------------------------------------------------ container
    def __len__(self) -> int:
        return len(self._where)

    def __bool__(self) -> bool:
        return bool(self._where)

    def __contains__(self, seq: object) -> bool:
        return seq in self._where

    def __iter__(self) -> Iterator[Sequence]:
        """Every waiting sequence in the order it stands now (O(n log n): for checks)."""
        yield from (e[SEQ] for e in self._front if e[SEQ] is not None)
        yield from (e[SEQ] for e in sorted(e for e in self._heap if e[SEQ] is not None))
        yield from (e[SEQ] for e in self._back if e[SEQ] is not None)

    @property
    def num_volatile(self) -> int:
        return len(self._volatile)

    # ------------------------------------------------------------ insertion, removal
    def append(self, seq: Sequence, volatile: bool = False) -> None:
        self._back.append(self._register(seq, self._next_back, _BACK, volatile))
        self._next_back += 1

    def appendleft(self, seq: Sequence, volatile: bool = False) -> None:
        self._front.appendleft(self._register(seq, self._next_front, _FRONT, volatile))
        self._next_front -= 1

    def _register(self, seq: Sequence, label: int, band: int, volatile: bool) -> _Entry:
        if seq in self._where:
            raise ValueError(f"{seq.seq_id} is already waiting")
        entry = self._where[seq] = self._entry(None, label, seq, band, volatile)
        if seq.admit_group is not None:
            self._groups.setdefault(seq.admit_group, {})[seq] = None
        if volatile:
            self._volatile[seq] = None
        return entry

    def _entry(self, key: Any, label: int, seq: Sequence, band: int, volatile: bool) -> _Entry:
        self._uid += 1
        return _Entry([key, label, self._uid, seq, band, volatile])

    def remove(self, seq: Sequence) -> None:
        entry = self._where.pop(seq)
        entry[SEQ] = None
        if seq.admit_group is not None:
            members = self._groups[seq.admit_group]
            del members[seq]
            if not members:
                del self._groups[seq.admit_group]
        self._volatile.pop(seq, None)
        self._touched.pop(seq, None)
        if entry[BAND] == _HEAP:
            self._count(entry[KEY], -1)
            self._dead += 1  # dropped at the next ``sort`` (a ``scan`` may be open)

    def mark_volatile(self, seq: Sequence) -> None:
        """Re-key ``seq`` at every step from now on (its key may change at any time)."""
        self._where[seq][VOL] = True
        self._volatile[seq] = None

    def touch(self, seq: Sequence) -> None:
        """``seq``'s key may have changed: read it again at the next ``sort``."""
        if seq in self._where:
            self._touched[seq] = None

    # ------------------------------------------------------------ the front
    def _head(self) -> _Entry | None:
        while self._front and self._front[0][SEQ] is None:
            self._front.popleft()
        if self._front:
            return self._front[0]
        while self._heap and self._heap[0][SEQ] is None:
            heapq.heappop(self._heap)
            self._dead -= 1
        if self._heap:
            return self._heap[0]
        while self._back and self._back[0][SEQ] is None:
            self._back.popleft()
        return self._back[0] if self._back else None

    def peek(self) -> Sequence:
        head = self._head()
        if head is None:
            raise IndexError("peek at an empty queue")
        return head[SEQ]

    def popleft(self) -> Sequence:
        seq = self.peek()
        self.remove(seq)
        return seq

    # ------------------------------------------------------------ groups, views
    def group(self, name: str) -> list[Sequence]:
        """The waiting members of admission group ``name``, in the order they stand."""
        return sorted(self._groups.get(name, ()), key=self._position)

    def has_group(self, name: str) -> bool:
        return name in self._groups

    def is_volatile(self, seq: Sequence) -> bool:
        return seq in self._volatile

    def scan(self) -> Iterator[Sequence]:
        """The waiting sequences in order, lazily: the first k cost O(k log k), whatever
        waits behind them (past 64, the heap is sorted in place: a pass over all of it is
        about O(n)). Sequences may be removed while a scan is open, not added."""
        yield from (e[SEQ] for e in list(self._front) if e[SEQ] is not None)
        heap = self._heap
        frontier = [(heap[0], 0)] if heap else []
        walked = 0
        while frontier and walked < 64:  # the heap's first entries in order, from its root
            e, i = heapq.heappop(frontier)
            walked += 1
            if e[SEQ] is not None:
                yield e[SEQ]
            for c in (2 * i + 1, 2 * i + 2):
                if c < len(heap):
                    heapq.heappush(frontier, (heap[c], c))
        if frontier:  # a long scan: sort the heap in place (a sorted list is a heap; nearly
            heap.sort()  # sorted since the last long scan, so about O(n)), then read on
            yield from (e[SEQ] for e in heap[walked:] if e[SEQ] is not None)
        yield from (e[SEQ] for e in list(self._back) if e[SEQ] is not None)

    def volatile(self) -> list[Sequence]:
        """The volatile waiting sequences in the order they stand (the only ones that may
        view another sequence: ``engine.views``)."""
        return sorted(self._volatile, key=self._position)

    def _position(self, seq: Sequence) -> tuple:
        e = self._where[seq]
        return (e[BAND], e[KEY], e[LABEL]) if e[BAND] == _HEAP else (e[BAND], 0, e[LABEL])

    # ------------------------------------------------------------ the step's sort
    def sort(self) -> None:
        """The step starts: the staged ends enter the heap under their keys and changed
        keys are re-read, as a stable sort of the whole queue would order them."""
        changed: list[tuple[_Entry, Any]] = []
        if self.priority is not None:
            for seq in [*self._volatile, *self._touched]:
                e = self._where.get(seq)
                if e is not None and e[BAND] == _HEAP and (k := self._key(seq)) != e[KEY]:
                    changed.append((e, k))
        self._touched.clear()
        if self._dead > 64 and 2 * self._dead > len(self._heap):
            self._heap = [e for e in self._heap if e[SEQ] is not None]
            heapq.heapify(self._heap)
            self._dead = 0
        while self._heap and self._heap[0][SEQ] is None:
            heapq.heappop(self._heap)
            self._dead -= 1
        front = [e for e in self._front if e[SEQ] is not None]
        back = [e for e in self._back if e[SEQ] is not None]
        self._front.clear()
        self._back.clear()
        for e in (*front, *back):
            e[KEY], e[BAND] = self._key(e[SEQ]), _HEAP
            self._count(e[KEY], 1)
        for e, k in changed:
            self._count(e[KEY], -1)
            self._count(k, 1)
        if changed and (self._key_count is None or any(self._key_count[k] > 1 for _, k in changed)):
            self._resort(front, back, changed)
            return
        for e in (*front, *back):
            heapq.heappush(self._heap, e)
        for e, k in changed:  # a key no other shares: its place is the key's alone
            seq = e[SEQ]
            e[SEQ] = None
            self._dead += 1
            self._where[seq] = new = self._entry(k, e[LABEL], seq, _HEAP, e[VOL])
            heapq.heappush(self._heap, new)

    def _resort(self, front: list[_Entry], back: list[_Entry],
                changed: list[tuple[_Entry, Any]]) -> None:
        """A changed key ties another's: the stable sort of the whole queue as it stands,
        then fresh labels (O(n log n), as every step cost before)."""
        new_key = {id(e): k for e, k in changed}
        entries = [*front, *sorted(e for e in self._heap if e[SEQ] is not None), *back]
        keys = [new_key.get(id(e), e[KEY]) for e in entries]
        order = sorted(range(len(entries)), key=keys.__getitem__)
        self._heap = []
        for label, i in enumerate(order):  # sorted: already a heap
            e = entries[i]
            e[KEY], e[LABEL] = keys[i], label
            self._heap.append(e)
        self._dead, self._next_front, self._next_back = 0, -1, len(order)
        self._key_count = {}
        for e in self._heap:
            self._count(e[KEY], 1)

    def _key(self, seq: Sequence) -> Any:
        if self.priority is None:
            return 0
        self.num_key_calls += 1
        return self.priority(seq)

    def _count(self, key: Any, d: int) -> None:
        if self._key_count is None or self.priority is None:
            return
        try:
            n = self._key_count.get(key, 0) + d
        except TypeError:  # an unhashable key: every change re-sorts
            self._key_count = None
            return
        if n:
            self._key_count[key] = n
        else:
            del self._key_count[key]
