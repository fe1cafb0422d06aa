"""The scheduler alone, with a real KV manager and no model: exact schedules step by step.

Each step here is what ``LLMEngine.step`` does around the forward: schedule, commit the
scheduled tokens, and append a token to every sequence whose last token was computed (and
whose input is closed). A schedule is written as ``[(seq_id, tokens computed), ...]``.
Block size 4 throughout. This module imports no torch (checked in a fresh interpreter).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from thinkstream.engine.request import SeqStatus, Sequence
from thinkstream.engine.scheduler import Scheduler, SchedulerConfig
from thinkstream.kv.manager import KVCacheManager
from thinkstream.sampling_params import SamplingParams

SAMPLED = 99  # the token every "sample" appends
BS = 4


def seq(sid: str, tokens: list[int] | int, max_tokens: int = 8, **fields) -> Sequence:
    """A sequence of ``tokens`` (a count: distinct ids from ``sid``, so no prefix is shared)."""
    if isinstance(tokens, int):
        base = 1000 * (ord(sid[0]) - ord("A") + 1)
        tokens = list(range(base, base + tokens))
    return Sequence(seq_id=sid, request_id=sid, index=0, token_ids=list(tokens),
                    num_prompt_tokens=len(tokens), params=SamplingParams(ignore_eos=True),
                    generator=None, max_tokens=max_tokens, **fields)


def scheduler(num_blocks: int = 64, budget: int = 64, max_num_seqs: int = 8,
              prefix_caching: bool = True, priority=None) -> Scheduler:
    kv = KVCacheManager(num_blocks, BS, enable_prefix_caching=prefix_caching)
    cfg = SchedulerConfig(max_num_seqs=max_num_seqs, max_num_batched_tokens=budget,
                          max_model_len=256, enable_prefix_caching=prefix_caching)
    return Scheduler(cfg, kv, priority)


def step(sched: Scheduler) -> list[tuple[str, int]]:
    """One engine step without the model; returns the schedule."""
    out = sched.schedule()
    sampled = [s.seq for s in out.scheduled if s.completes and s.seq.wants_sample]
    sched.commit(out)
    for s in sampled:
        sched.append_token(s, SAMPLED, frozenset())
    sched.kv.check_integrity()
    return [(s.seq.seq_id, s.num_new_tokens) for s in out.scheduled]


def run(sched: Scheduler, steps: int) -> list[list[tuple[str, int]]]:
    return [step(sched) for _ in range(steps)]


# ------------------------------------------------------------------------------ torch
def test_this_module_imports_no_torch() -> None:
    code = ("import importlib.util, sys\n"
            f"spec = importlib.util.spec_from_file_location('t', {str(Path(__file__))!r})\n"
            "spec.loader.exec_module(importlib.util.module_from_spec(spec))\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'torch'))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# -------------------------------------------------------------------- chunked prefill
def test_chunked_prefill_under_the_token_budget() -> None:
    """Running sequences go first (a decode is one token), then waiting ones are admitted
    in order with what the budget leaves; a prompt longer than that is split."""
    sched = scheduler(budget=8)
    a, b = seq("A", 10, max_tokens=2), seq("B", 6, max_tokens=2)
    sched.add(a)
    sched.add(b)
    assert run(sched, 4) == [
        [("A", 8)],             # B is not admitted: no budget left
        [("A", 2), ("B", 6)],   # A's last prompt chunk, then B's whole prompt; both sample
        [("A", 1), ("B", 1)],   # decodes; both reach max_tokens and finish
        [],
    ]
    assert (a.status, b.status) == (SeqStatus.FINISHED_LENGTH, SeqStatus.FINISHED_LENGTH)
    assert a.token_ids[10:] == b.token_ids[6:] == [SAMPLED, SAMPLED]
    assert sched.kv.num_free_blocks == 64 and not sched.sequences()


def test_a_long_prompt_shares_each_step_with_the_decodes_before_it() -> None:
    sched = scheduler(budget=8)
    a, b = seq("A", 3, max_tokens=4), seq("B", 20, max_tokens=1)
    sched.add(a)
    sched.add(b)
    assert run(sched, 5) == [
        [("A", 3), ("B", 5)],
        [("A", 1), ("B", 7)],
        [("A", 1), ("B", 7)],
        [("A", 1), ("B", 1)],  # B's last prompt token; it samples and finishes
        [],                    # A finished with its fourth token in step 4
    ]
    assert b.num_computed_tokens == 20 and b.token_ids[20:] == [SAMPLED]


def test_admission_waits_for_a_sequence_slot() -> None:
    sched = scheduler(max_num_seqs=2)
    a, b, c = seq("A", 4, max_tokens=1), seq("B", 4, max_tokens=3), seq("C", 4, max_tokens=1)
    for s in (a, b, c):
        sched.add(s)
    assert run(sched, 3) == [
        [("A", 4), ("B", 4)],  # A finishes at once (max_tokens=1)
        [("B", 1), ("C", 4)],  # its slot goes to C
        [("B", 1)],
    ]


# -------------------------------------------------------------------- prefix caching
def test_prefix_hit_starts_after_the_cached_full_blocks() -> None:
    sched = scheduler(num_blocks=8)
    a = seq("A", list(range(1, 11)), max_tokens=1)  # 10 tokens: blocks 0, 1 full; 2 partial
    sched.add(a)
    assert run(sched, 1) == [[("A", 10)]]
    assert a.status.finished and sched.kv.num_free_blocks == 8
    # A's blocks went back last first: 2 (no hash) to the head of the free queue, the
    # hashed blocks 1 and 0 to the tail, findable by their hashes
    b = seq("B", [*range(1, 9), 50, 51, 52])  # A's first two blocks, then its own
    sched.add(b)
    assert run(sched, 1) == [[("B", 3)]]
    assert sched.kv.block_table("B") == [0, 1, 2]
    assert b.num_computed_tokens == 11 and sched.kv.prefix_hits == 8


def test_a_fully_cached_prompt_still_computes_its_last_block() -> None:
    """At least one token is computed (its logits are sampled from): a prompt of exactly
    two cached blocks reuses only the first."""
    sched = scheduler(num_blocks=8)
    sched.add(seq("A", list(range(1, 9)), max_tokens=1))
    run(sched, 1)
    c = seq("C", list(range(1, 9)))
    sched.add(c)
    out = sched.schedule()
    assert [(s.seq.seq_id, s.num_new_tokens) for s in out.scheduled] == [("C", 4)]
    assert sched.kv.block_table("C") == [0, 2] and c.num_computed_tokens == 4  # 1 is cached


def test_a_prefix_computed_in_this_step_is_a_hit_in_the_next() -> None:
    """Two prompts with the same first block arriving together: the second waits one
    step rather than computing the shared blocks twice."""
    sched = scheduler()
    shared = list(range(1, 9))
    a, b = seq("A", [*shared, 60, 61], max_tokens=3), seq("B", [*shared, 70])
    sched.add(a)
    sched.add(b)
    assert run(sched, 2) == [[("A", 10)], [("A", 1), ("B", 1)]]
    assert sched.kv.block_table("B")[:2] == sched.kv.block_table("A")[:2]


def test_a_waiting_prompt_is_hashed_once_not_every_step(monkeypatch) -> None:
    """B cannot get blocks while A runs: looked up each step, its one full block is
    hashed once (its HashCache), and it takes A's cached blocks when admitted."""
    import thinkstream.kv.prefix as prefix

    hashed: list[tuple[int, ...]] = []
    real = prefix.hash_block
    monkeypatch.setattr(prefix, "hash_block", lambda p, t, s=None: hashed.append(tuple(t)) or real(p, t, s))
    sched = scheduler(num_blocks=4)
    a, b = seq("A", list(range(1, 12)), max_tokens=6), seq("B", [*range(1, 5), 50, 51, 52, 53, 54])
    sched.add(a)
    sched.add(b)
    assert run(sched, 4) == [[("A", 11)], [("A", 1)], [("A", 1)], [("A", 1)]]
    # block 0 hashed by A's lookup, A's commit and B's first lookup; B's block 1 once
    assert b.status == SeqStatus.WAITING and hashed.count((1, 2, 3, 4)) == 3
    assert hashed.count((50, 51, 52, 53)) == 1
    run(sched, 3)
    assert b.status == SeqStatus.RUNNING and b.prefix_hashes is None
    assert sched.kv.block_table("B")[0] == 0 and b.num_cached_tokens == 4
    assert hashed.count((1, 2, 3, 4)) == 3 and hashed.count((50, 51, 52, 53)) == 2  # + its commit


def test_salted_prefixes_never_share() -> None:
    sched = scheduler()
    sched.add(seq("A", list(range(1, 10)), max_tokens=1))
    run(sched, 1)
    b = seq("B", list(range(1, 10)), salt="layout-2")
    sched.add(b)
    assert run(sched, 1) == [[("B", 9)]] and sched.kv.prefix_hits == 0


# ------------------------------------------------------------------------- preemption
def test_preemption_takes_the_most_recently_admitted_and_requeues_it_first() -> None:
    """Six blocks, three prompts of two blocks each: when each decode needs a third block,
    the last admitted (C) is preempted for A, goes back to the front of the waiting queue
    (ahead of D), and later recomputes its prompt and its sampled token."""
    sched = scheduler(num_blocks=6, prefix_caching=False)
    a, b, c = seq("A", 8, max_tokens=2), seq("B", 8, max_tokens=3), seq("C", 8, max_tokens=3)
    for s in (a, b, c):
        sched.add(s)
    assert run(sched, 1) == [[("A", 8), ("B", 8), ("C", 8)]]
    assert sched.kv.num_free_blocks == 0
    d = seq("D", 4, max_tokens=1)
    sched.add(d)
    out = sched.schedule()
    assert out.preempted == [c]
    assert [(s.seq.seq_id, s.num_new_tokens) for s in out.scheduled] == [("A", 1), ("B", 1)]
    assert [s.seq_id for s in sched.waiting] == ["C", "D"]
    assert (c.status, c.num_computed_tokens, c.num_preemptions) == (SeqStatus.WAITING, 0, 1)
    assert not sched.kv.has("C") and c.token_ids[8:] == [SAMPLED]
    sched.commit(out)
    for s in (a, b):
        sched.append_token(s, SAMPLED, frozenset())
    assert a.status.finished  # and gave back its 3 blocks
    assert run(sched, 3) == [
        [("B", 1), ("C", 9)],  # C recomputes its prompt and its token; no block left for D
        [("C", 1), ("D", 4)],  # B finished
        [],
    ]


def test_the_last_in_line_preempts_itself() -> None:
    """A's decode fits its blocks; B's needs a third block and nothing runs after it."""
    sched = scheduler(num_blocks=4, prefix_caching=False)
    a, b = seq("A", 7, max_tokens=4), seq("B", 8, max_tokens=4)
    sched.add(a)
    sched.add(b)
    run(sched, 1)
    out = sched.schedule()
    assert out.preempted == [b] and [(s.seq.seq_id, s.num_new_tokens) for s in out.scheduled] \
        == [("A", 1)]
    assert list(sched.waiting) == [b] and sched.kv.block_table("A") == [0, 1]


# ------------------------------------------------------------------------------ views
def viewer(sid: str, tokens: int, source: str, viewed: int, **fields) -> Sequence:
    """A sequence whose every token attends to ``source``'s first ``viewed`` tokens."""
    v = seq(sid, tokens, **fields)
    v.kv_prefix, v.kv_prefix_visible = [(source, viewed)], [viewed] * tokens
    return v


def test_a_viewer_computes_only_once_its_source_computed_the_viewed_tokens() -> None:
    sched = scheduler(budget=6)
    s, v = seq("S", 8, max_tokens=4), viewer("V", 3, "S", 8, max_tokens=1)
    sched.add(s)
    sched.add(v)
    assert run(sched, 3) == [
        [("S", 6)],            # no budget left for V
        [("S", 2)],            # V is admitted, but S had only 6 of the 8 viewed tokens
        [("S", 1), ("V", 3)],
    ]
    assert v.status.finished and v.num_shareable_tokens == 0


def test_a_viewer_waits_for_an_evicted_source_without_blocking_the_queue() -> None:
    sched = scheduler()
    v, x = viewer("V", 3, "S", 4, max_tokens=1), seq("X", 2, max_tokens=1)
    sched.add(v)
    sched.add(x)
    assert run(sched, 2) == [[("X", 2)], []]
    assert list(sched.waiting) == [v] and not sched.kv.has("V")


def _note_on_a_new_chunk(budget: int) -> list[list[tuple[str, int]]]:
    """An open input S and a note V viewing its 8 computed tokens; then a chunk of 4
    arrives and V's next token views it. Returns the two steps after the chunk."""
    sched = scheduler(budget=budget)
    s = seq("S", 9, input_closed=False)  # the last input token is held back while open
    sched.add(s)
    while s.num_pending_tokens:
        step(sched)
    v = viewer("V", 3, "S", 8)
    sched.add(v)
    assert run(sched, 1) == [[("V", 3)]]  # V samples its fourth token
    s.token_ids += [7001, 7002, 7003, 7004]
    v.kv_prefix, v.kv_prefix_visible = [("S", 12)], [8, 8, 8, 12]
    return run(sched, 2)


def test_a_viewer_joins_the_step_that_computes_its_source_tokens() -> None:
    """V is planned after S in the step that computes S's chunk: a step writes the keys
    and values of all its tokens before any of them attends. With no budget left after
    the chunk, V waits for the next step."""
    assert _note_on_a_new_chunk(budget=64) == [[("S", 4), ("V", 1)], [("V", 1)]]
    assert _note_on_a_new_chunk(budget=4) == [[("S", 4)], [("V", 1)]]


def test_a_viewer_preempts_what_runs_after_it_but_never_its_source() -> None:
    """Running order V, X, S (by priority), five blocks all held. V needs a block: the
    last in line is its source S, so X is preempted instead."""
    order = {"V": 0, "X": 1, "S": 2}
    sched = scheduler(num_blocks=5, prefix_caching=False, priority=lambda q: order[q.seq_id])
    s, x, v = seq("S", 8), seq("X", 4), viewer("V", 4, "S", 8)
    sched.add(s)
    assert run(sched, 1) == [[("S", 8)]]
    sched.add(v)
    sched.add(x)
    assert run(sched, 1) == [[("S", 1), ("V", 4), ("X", 4)]]  # S 3 blocks, V 1, X 1
    out = sched.schedule()  # V's fifth token needs a second block
    assert out.preempted == [x] and list(sched.waiting) == [x]
    assert [(q.seq.seq_id, q.num_new_tokens) for q in out.scheduled] == [("V", 1), ("S", 1)]


def test_a_viewer_with_only_its_source_after_it_gives_way() -> None:
    """Running order Y, V, S: V can take blocks from nothing but its source (taking them
    would stall V on the blocks just freed for it), so V is preempted itself."""
    order = {"Y": 0, "V": 1, "S": 2}
    sched = scheduler(num_blocks=5, prefix_caching=False, priority=lambda q: order[q.seq_id])
    s, y, v = seq("S", 8), seq("Y", 3), viewer("V", 4, "S", 8)
    sched.add(s)
    run(sched, 1)
    sched.add(v)
    sched.add(y)
    assert run(sched, 1) == [[("S", 1), ("Y", 3), ("V", 4)]]
    out = sched.schedule()
    assert out.preempted == [v] and list(sched.waiting) == [v]
    assert [(q.seq.seq_id, q.num_new_tokens) for q in out.scheduled] == [("Y", 1), ("S", 1)]
    assert not out.starved  # V fits beside S once Y is done: it waits, it is not starved


# ----------------------------------------------------------------- idle open inputs
def test_an_idle_open_input_is_parked_under_pressure_and_woken_by_wake() -> None:
    """I (an open input with nothing left to compute) is preempted for B although B is
    after it in line, and parked out of the waiting queue. ``wake`` (its input changed)
    queues it again; it recomputes from what is left of its prefix in the cache."""
    sched = scheduler(num_blocks=6)
    a, i, b = seq("A", 8, max_tokens=4), seq("I", 9, input_closed=False), seq("B", 4)
    for q in (a, i, b):
        sched.add(q)
    assert run(sched, 1) == [[("A", 8), ("I", 8), ("B", 4)]]
    assert sched.kv.block_table("I") == [2, 3] and sched.kv.num_free_blocks == 1
    assert run(sched, 1) == [[("A", 1), ("B", 1)]]  # A takes the free block; B, one of I's
    assert sched.parked == [i] and i not in sched.waiting and not sched.kv.has("I")
    assert i.num_computed_tokens == 0 and i.num_preemptions == 1
    assert sched.kv.block_table("B") == [4, 3]  # I's last block went first
    assert run(sched, 1) == [[("A", 1), ("B", 1)]]  # parked: not re-admitted on its own
    i.token_ids.append(7000)
    sched.wake(i)
    assert sched.parked == [] and list(sched.waiting) == [i]
    sched.finish(b, SeqStatus.FINISHED_ABORTED)
    assert run(sched, 1) == [[("A", 1), ("I", 5)]]  # its first block was still cached
    assert sched.kv.block_table("I") == [2, 3, 4] and i.num_computed_tokens == 9


def test_an_idle_open_input_gives_its_slot_to_a_waiting_request() -> None:
    sched = scheduler(max_num_seqs=1)
    i, w = seq("I", 5, input_closed=False), seq("W", 3, max_tokens=1)
    sched.add(i)
    assert run(sched, 1) == [[("I", 4)]]
    sched.add(w)
    assert run(sched, 1) == [[("W", 3)]]
    assert sched.parked == [i] and w.status.finished
    i.token_ids.append(7000)
    sched.wake(i)
    assert run(sched, 1) == [[("I", 1)]]  # 4 tokens from the cache, 1 computed
    assert sched.kv.block_table("I") == [0, 1] and sched.kv.prefix_hits == 4


# ---------------------------------------------------------------------- admission groups
def test_passing_over_an_admission_group_is_bounded() -> None:
    """10 blocks; R holds 4 to 6 as it decodes. Group G (two members of 9 tokens: 6 blocks)
    does not fit; small requests (1 block) arriving one a step pass it at most
    ``max_num_seqs`` (4) times, then admission waits for G, admitted whole once R ends."""
    sched = scheduler(num_blocks=10, max_num_seqs=4, prefix_caching=False)
    r = seq("R", 16, max_tokens=100)
    sched.add(r)
    step(sched)
    group = [seq(f"G{i}", 9, admit_group="g") for i in range(2)]
    for g in group:
        sched.add(g)
    admitted = []
    for i in range(7):
        small = seq(f"s{i}", 3)
        sched.add(small)
        admitted += [sid for sid, _ in step(sched) if sid.startswith("s")]
        if small in sched.running:
            sched.finish(small, SeqStatus.FINISHED_STOPPED)
        assert not any(g in sched.running for g in group)
    assert admitted == ["s0", "s1", "s2", "s3"]
    assert [s.seq_id for s in sched.waiting] == ["G0", "G1", "s4", "s5", "s6"]
    sched.finish(r, SeqStatus.FINISHED_STOPPED)
    assert [sid for sid, _ in step(sched)][:2] == ["G0", "G1"]
    assert not sched._passed  # the group's count is dropped once it is admitted


def test_admission_reads_views_only_when_an_idle_input_could_give_way() -> None:
    """A waiting sequence that does not fit asks for an idle open input to park; with none
    running, the answer must not cost a pass over every running sequence's views (it did,
    once per waiting sequence per step: 1,600 queued prompts in a 64-block pool spent
    ~1.5x the scheduler's CPU time on it)."""
    sched = scheduler(num_blocks=12, max_num_seqs=64)
    for i in range(4):
        sched.add(seq(chr(ord("A") + i), 9))  # 3 blocks each: the pool is full
    step(sched)
    for i in range(40):
        sched.add(seq(f"W{i}", list(range(100 * i, 100 * i + 8))))
    calls = []
    real = sched.views.sources
    sched.views.sources = lambda s: calls.append(s.seq_id) or real(s)
    assert [sid for sid, _ in step(sched)] == ["A", "B", "C", "D"]  # nobody admitted
    assert len(calls) <= 40, len(calls)  # one per waiting sequence at most, not 1 + 4
