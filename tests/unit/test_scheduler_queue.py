"""The waiting queue (engine/waiting.py) and what a step costs with a long one.

The queue must order exactly as the deque it replaced, stable-sorted by the priority key at
the start of every step: checked against that model under random operations (ties, keys
that change, unhashable keys). Then the scheduler with thousands waiting: a step reads keys
and looks up prefixes for what it schedules, not for every waiting sequence.
"""

from __future__ import annotations

import random
from collections import deque

import pytest
from test_scheduler import scheduler, seq, step

from thinkstream.engine.request import SeqStatus
from thinkstream.engine.waiting import WaitQueue


class Model:
    """The old waiting queue: a deque, stable-sorted by the key at each step's start."""

    def __init__(self, key) -> None:
        self.key, self.d = key, deque()

    def sort(self) -> None:
        if self.key is not None:
            self.d = deque(sorted(self.d, key=self.key))


def fuzz(rng: random.Random, keys: dict, key, steps: int, wrap=lambda k: k, size: int = 40) -> None:
    q, m = WaitQueue(key), Model(key)
    pool = [seq(f"S{i}", 1, admit_group=rng.choice([None, "g", "h"])) for i in range(size)]
    for _ in range(steps):
        op = rng.random()
        out = [s for s in pool if s not in q]
        if op < 0.3 and out:
            s = rng.choice(out)
            keys[s] = wrap(rng.randrange(4))  # few distinct keys: many ties
            if rng.random() < 0.3:
                q.appendleft(s)
                m.d.appendleft(s)
            else:
                vol = rng.random() < 0.3
                q.append(s, vol)
                m.d.append(s)
        elif op < 0.45 and m.d:
            s = rng.choice(list(m.d))
            q.remove(s)
            m.d.remove(s)
        elif op < 0.6 and m.d:
            assert q.popleft() is m.d.popleft()
        elif op < 0.75 and m.d:  # a key changes; the queue is told
            s = rng.choice(list(m.d))
            keys[s] = wrap(rng.randrange(4))
            q.touch(s)
        else:
            q.sort()
            m.sort()
        assert list(q) == list(m.d) == list(q.scan())
        for g in ("g", "h"):
            assert q.group(g) == [s for s in m.d if s.admit_group == g]
            assert q.has_group(g) == any(s.admit_group == g for s in m.d)


@pytest.mark.parametrize("seed", range(4))
def test_queue_orders_as_a_deque_stable_sorted_each_step(seed: int) -> None:
    rng = random.Random(seed)
    keys: dict = {}
    fuzz(rng, keys, lambda s: keys[s], 600)


def test_a_long_scan_sorts_the_heap_in_place_and_reads_on() -> None:
    """Past its first 64 entries a scan sorts the heap (still a heap) and reads it in order."""
    rng = random.Random(3)
    keys: dict = {}
    q, m = WaitQueue(lambda s: keys[s]), Model(lambda s: keys[s])
    seqs = [seq(f"S{i}", 1) for i in range(300)]
    for rnd in range(3):
        for s in seqs[100 * rnd: 100 * rnd + 100]:
            keys[s] = rng.randrange(5)
            q.append(s)
            m.d.append(s)
        q.sort()
        m.sort()
        for s in rng.sample(list(m.d), 20):
            q.remove(s)
            m.d.remove(s)
        assert len(q._heap) >= 100 and list(q.scan()) == list(m.d) == list(q)
        assert q.popleft() is m.d.popleft()


def test_queue_without_a_priority_keeps_arrival_order() -> None:
    fuzz(random.Random(7), {}, None, 600)


def test_queue_with_unhashable_keys_falls_back_to_the_full_sort() -> None:
    keys: dict = {}
    fuzz(random.Random(9), keys, lambda s: keys[s], 400, wrap=lambda k: [k])


def test_a_changed_key_that_ties_another_keeps_the_stable_sort_order() -> None:
    """B (key 3) stands before A (key 5); B's key becomes 5: a stable sort keeps B first,
    where (key, arrival) would put A first."""
    keys: dict = {}
    q = WaitQueue(lambda s: keys[s])
    a, b, c = seq("A", 1), seq("B", 1), seq("C", 1)
    keys.update({a: 5, b: 3, c: 9})
    for s in (a, b, c):
        q.append(s)
    q.sort()
    assert list(q) == [b, a, c]
    keys[b] = 5
    q.touch(b)
    q.sort()
    assert list(q) == [b, a, c]
    keys[c] = 1  # no tie: moves alone
    q.touch(c)
    q.sort()
    assert list(q) == [c, b, a]


def test_exact_admission_order_with_a_priority_and_ties() -> None:
    """Priority by the first letter (ties within a letter: arrival order); a late arrival
    goes ahead of the lower classes already waiting."""
    rank = {"X": 0, "Y": 1, "Z": 2}
    sched = scheduler(num_blocks=64, max_num_seqs=2, priority=lambda q: rank[q.seq_id[0]])
    for sid in ("Z1", "Y1", "X1", "Z2", "Y2"):
        sched.add(seq(sid, 3, max_tokens=1))
    assert [s.seq_id for s in sched.waiting] == ["Z1", "Y1", "X1", "Z2", "Y2"]  # not sorted yet
    order = []
    for i in range(6):
        if i == 1:
            sched.add(seq("X2", 3, max_tokens=1))
        order += [sid for sid, n in step(sched) if n == 3]
    assert order == ["X1", "Y1", "X2", "Y2", "Z1", "Z2"]
    assert sched.waiting.num_key_calls == 6  # each key read once: when it entered the heap


def test_a_step_reads_keys_only_of_what_entered_the_queue() -> None:
    """5,000 waiting, every slot running: a step reads no waiting sequence's key."""
    calls = []
    sched = scheduler(num_blocks=64, max_num_seqs=4, budget=64,
                      priority=lambda q: calls.append(q) or q.arrival_time)
    for i in range(5_000):
        sched.add(seq(f"W{i}", [i % 50 + 1, 7, 8], max_tokens=20))
    step(sched)
    assert len(sched.running) == 4
    calls.clear()
    assert [sid for sid, _ in step(sched)] == ["W0", "W1", "W2", "W3"]
    assert len(calls) == 4  # the running ones' sort, none of the waiting


def test_a_full_pool_stops_admission_after_one_miss(monkeypatch) -> None:
    """Pool full, slots free, 3,000 waiting: the first that does not fit ends admission (every
    block in use: the others cannot fit either), so one prefix lookup, not 3,000."""
    sched = scheduler(num_blocks=8, max_num_seqs=16, budget=64)
    for i in range(3_000):
        sched.add(seq(f"W{i}", list(range(10 * i, 10 * i + 6)), max_tokens=2))  # 2 blocks each
    assert [sid for sid, _ in step(sched)] == ["W0", "W1", "W2", "W3"]
    assert sched.kv.num_free_blocks == 0
    lookups = []
    real = sched.kv.lookup_prefix
    monkeypatch.setattr(sched.kv, "lookup_prefix", lambda *a, **k: lookups.append(a[0]) or real(*a, **k))
    assert [sid for sid, _ in step(sched)] == ["W0", "W1", "W2", "W3"]
    assert lookups == ["W4"]
    assert [s.seq_id for s in sched.waiting][:3] == ["W4", "W5", "W6"]


def test_requests_passed_over_keep_their_places(monkeypatch) -> None:
    """A block free but each waiting request needs two: every one is tried (its lookup
    may move cached blocks), none is taken out of the queue and put back."""
    sched = scheduler(num_blocks=7, max_num_seqs=16, budget=64)
    for i in range(500):
        sched.add(seq(f"W{i}", list(range(10 * i, 10 * i + 6)), max_tokens=2))
    assert len(step(sched)) == 3 and sched.kv.num_free_blocks == 1
    enqueued = []
    real = sched._enqueue
    monkeypatch.setattr(sched, "_enqueue", lambda s, front=False: enqueued.append(s) or real(s, front))
    assert [sid for sid, _ in step(sched)] == ["W0", "W1", "W2"]
    assert enqueued == [] and [s.seq_id for s in sched.waiting][:2] == ["W3", "W4"]


def test_aborting_in_the_middle_of_a_long_queue() -> None:
    sched = scheduler(num_blocks=16, max_num_seqs=4, priority=lambda q: q.arrival_time)
    seqs = [seq(f"W{i}", [i + 1, 2, 3], max_tokens=1, arrival_time=float(i)) for i in range(3_000)]
    for s in seqs:
        sched.add(s)
    step(sched)
    gone = [seqs[1500], seqs[4], seqs[2999]]
    for s in gone:
        sched.finish(s, SeqStatus.FINISHED_ABORTED)
    assert len(sched.waiting) == 3_000 - 4 - 3 and all(s not in sched.waiting for s in gone)
    assert [sid for sid, n in step(sched) if n == 3] == ["W5", "W6", "W7", "W8"]


def test_a_huge_queue_in_a_tiny_pool_finishes_every_request() -> None:
    """300 requests of two blocks each through a four-block pool, with preemptions (they
    grow into a third block): each finishes with its tokens, the pool is whole after."""
    sched = scheduler(num_blocks=4, max_num_seqs=3, budget=16, priority=lambda q: q.arrival_time)
    seqs = [seq(f"W{i}", [i + 1, *range(1000, 1006)], max_tokens=3, arrival_time=float(i))
            for i in range(300)]
    for s in seqs:
        sched.add(s)
    admitted, steps = [], 0
    while sched.waiting or sched.running:
        admitted += [sid for sid, n in step(sched) if n == 7]  # a whole prompt computed
        steps += 1
        assert steps < 10_000
    assert all(s.status == SeqStatus.FINISHED_LENGTH and s.num_output_tokens == 3 for s in seqs)
    assert admitted == [s.seq_id for s in seqs]  # first admissions in arrival order
    assert sched.kv.num_free_blocks == 4 and not sched.sequences()
    sched.kv.check_integrity()
