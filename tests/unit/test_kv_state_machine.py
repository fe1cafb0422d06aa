"""A hypothesis state machine over KVCacheManager with a simulated device.

The model keeps, per sequence, its tokens, how many are allocated and how many
computed; the simulated device keeps, per block slot, which (salt, token prefix)
it holds KV for. After every step:

- ``check_integrity()`` passes and ref counts equal table membership;
- every table has ``ceil(allocated / block_size)`` blocks;
- every computed token of every sequence reads back the right KV through its
  table, which is what makes prefix hits, forks and copies correct;
- no write ever lands in a shared or hashed block (checked at the write).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import hypothesis.strategies as st
import pytest
from hypothesis import HealthCheck, event, settings
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from thinkstream.kv import KVCacheManager, NoFreeBlocksError

BS = 2
NUM_BLOCKS = 12
SYSTEM = [1, 0, 1, 1, 0, 0, 1, 0, 1]  # a shared "system prompt", so prefix hits are common
prefix_st = st.integers(0, len(SYSTEM)).map(lambda k: SYSTEM[:k])
tokens_st = st.builds(
    lambda head, tail: (head + tail) or [0], prefix_st, st.lists(st.integers(0, 1), max_size=5)
)
salts_st = st.sampled_from([None, "x"])


@dataclass
class Seq:
    tokens: list[int]
    salt: object
    allocated: int = 0
    computed: int = 0


def ceil_blocks(n: int) -> int:
    return -(-n // BS)


class KVMachine(RuleBasedStateMachine):
    @initialize(caching=st.booleans(), keep=st.booleans())
    def setup(self, caching: bool, keep: bool) -> None:
        """Prefill the system prompt once; keep that sequence running or free it (cached)."""
        self.m = KVCacheManager(NUM_BLOCKS, BS, enable_prefix_caching=caching)
        self.seqs: dict[int, Seq] = {}
        self.device: list[list[object]] = [[None] * BS for _ in range(NUM_BLOCKS)]
        self.next_id = 0
        self.new_seq(list(SYSTEM), None, allocate=True)
        seq_id = self.next_id
        self._compute(seq_id, len(SYSTEM))
        if not keep:
            self.seqs.pop(seq_id)
            self.m.free(seq_id)

    def _new_id(self) -> int:
        self.next_id += 1
        return self.next_id

    def _slot(self, seq: Seq, pos: int) -> tuple[object, tuple[int, ...]]:
        return (seq.salt, tuple(seq.tokens[: pos + 1]))

    def _apply_copies(self, copies: list[tuple[int, int]]) -> None:
        for src, dst in copies:
            self.device[dst] = list(self.device[src])

    def _pick(self, data: st.DataObject) -> int:
        return data.draw(st.sampled_from(sorted(self.seqs)), label="seq")

    # ---- rules -----------------------------------------------------------

    @rule(tokens=tokens_st, salt=salts_st, allocate=st.booleans())
    def new_seq(self, tokens: list[int], salt: object, allocate: bool = False) -> None:
        """A request arrives: prefix lookup, then (usually) room for its whole prompt."""
        seq_id = self._new_id()
        hit = self.m.lookup_prefix(seq_id, tokens, salt)
        assert hit % BS == 0 and hit <= (len(tokens) - 1) // BS * BS
        if not self.m.enable_prefix_caching:
            assert hit == 0
        event(f"prefix hit: {hit > 0}")
        seq = self.seqs[seq_id] = Seq(tokens, salt, allocated=hit, computed=hit)
        if allocate and self.m.allocate(seq_id, len(tokens)):
            seq.allocated = len(tokens)

    @precondition(lambda self: self.seqs)
    @rule(data=st.data(), extra=st.integers(0, 6))
    def allocate(self, data: st.DataObject, extra: int) -> None:
        """Reserve slots ahead (lookahead); all or nothing."""
        seq_id = self._pick(data)
        seq = self.seqs[seq_id]
        target = max(len(seq.tokens), seq.allocated) + extra
        before = self.m.block_table(seq_id)
        fits = ceil_blocks(target) - len(before) <= self.m.num_free_blocks
        assert self.m.can_allocate(seq_id, target) == fits
        assert self.m.allocate(seq_id, target) == fits
        if fits:
            seq.allocated = target
        else:
            assert self.m.block_table(seq_id) == before
            assert self.m.num_tokens(seq_id) == seq.allocated

    @precondition(lambda self: self.seqs)
    @rule(data=st.data(), chunk=st.integers(1, 5), new=st.lists(st.integers(0, 1), max_size=2))
    def step(self, data: st.DataObject, chunk: int, new: list[int]) -> None:
        """One engine step: compute up to ``chunk`` tokens, writing KV, then commit.

        When every token is computed, ``new`` (or one token) arrives first, as a
        sampled token or streamed-in input.
        """
        seq_id = self._pick(data)
        seq = self.seqs[seq_id]
        if seq.computed == len(seq.tokens):
            seq.tokens.extend(new or [0])
        target = min(len(seq.tokens), seq.computed + chunk)
        if target > seq.allocated:
            if not self.m.allocate(seq_id, target):
                event("step: out of blocks")
                return
            seq.allocated = target
        self._compute(seq_id, target)

    def _compute(self, seq_id: int, target: int) -> None:
        """The "forward pass": write KV for positions computed..target, then commit."""
        seq = self.seqs[seq_id]
        table = self.m.block_table(seq_id)
        for pos in range(seq.computed, target):
            block = table[pos // BS]
            assert self.m.pool.ref_count(block) == 1, "write into a shared block"
            assert self.m.pool.block_hash(block) is None, "write into a hashed block"
            self.device[block][pos % BS] = self._slot(seq, pos)
        self.m.commit(seq_id, seq.tokens, target)
        seq.computed = target

    @precondition(lambda self: self.seqs)
    @rule(data=st.data())
    def fork(self, data: st.DataObject) -> None:
        src_id = self._pick(data)
        self._fork(src_id, data.draw(st.integers(0, self.seqs[src_id].computed), label="n"))

    def _fork(self, src_id: int, n: int) -> int | None:
        """Fork ``n`` computed tokens of ``src_id``; the new id, or None if out of blocks."""
        src = self.seqs[src_id]
        dst_id = self._new_id()
        possible = n % BS == 0 or self.m.num_free_blocks >= 1
        assert self.m.can_fork(src_id, n) == possible
        if not possible:
            event("fork: out of blocks")
            with pytest.raises(NoFreeBlocksError):
                self.m.fork(src_id, dst_id, n)
            assert not self.m.has(dst_id)
            return None
        copies = self.m.fork(src_id, dst_id, n)
        event(f"fork copies: {len(copies)}")
        assert len(copies) == (1 if n % BS else 0)
        assert self.m.block_table(dst_id)[: n // BS] == self.m.block_table(src_id)[: n // BS]
        self._apply_copies(copies)
        self.seqs[dst_id] = Seq(src.tokens[:n], src.salt, allocated=n, computed=n)
        return dst_id

    @precondition(lambda self: self.seqs)
    @rule(data=st.data())
    def truncate(self, data: st.DataObject) -> None:
        seq_id = self._pick(data)
        n = data.draw(st.integers(0, self.seqs[seq_id].allocated + 2), label="n")
        self._truncate(seq_id, n)

    @precondition(lambda self: any(s.computed >= BS for s in self.seqs.values()))
    @rule(data=st.data(), roll_back_src=st.booleans())
    def branch_and_roll_back(self, data: st.DataObject, roll_back_src: bool) -> None:
        """Fork a branch, then roll one side back into the blocks they share."""
        src_id = data.draw(
            st.sampled_from(sorted(s for s, q in self.seqs.items() if q.computed >= BS)),
            label="src",
        )
        n = self.seqs[src_id].computed
        dst_id = self._fork(src_id, n)
        if dst_id is not None:
            cut = data.draw(st.integers(0, n // BS * BS - 1), label="cut")
            self._truncate(src_id if roll_back_src else dst_id, cut)

    def _truncate(self, seq_id: int, n: int) -> None:
        seq = self.seqs[seq_id]
        if n >= seq.allocated:  # nothing past the cut: a no-op
            before = self.m.block_table(seq_id)
            assert self.m.can_truncate(seq_id, n) and self.m.truncate(seq_id, n) == []
            assert self.m.block_table(seq_id) == before
            return
        others = {s: self.m.block_table(s) for s in self.seqs if s != seq_id}
        held_elsewhere = {b for table in others.values() for b in table}
        table = self.m.block_table(seq_id)
        keep = ceil_blocks(n)
        needs_copy = n % BS != 0 and table[keep - 1] in held_elsewhere
        freed = [b for b in table[keep:] if b not in held_elsewhere]
        possible = not needs_copy or self.m.num_free_blocks + len(freed) >= 1
        assert self.m.can_truncate(seq_id, n) == possible
        if not possible:
            event("truncate: out of blocks")
            with pytest.raises(NoFreeBlocksError):
                self.m.truncate(seq_id, n)
            return
        copies = self.m.truncate(seq_id, n)
        assert len(copies) == (1 if needs_copy else 0)
        event(f"truncate copies: {len(copies)}")
        self._apply_copies(copies)
        assert {s: self.m.block_table(s) for s in others} == others
        seq.tokens = seq.tokens[:n]
        seq.allocated = n
        seq.computed = min(seq.computed, n)

    @precondition(lambda self: self.seqs)
    @rule(data=st.data())
    def free(self, data: st.DataObject) -> None:
        seq_id = self._pick(data)
        self.m.free(seq_id)
        del self.seqs[seq_id]
        assert not self.m.has(seq_id)

    @precondition(lambda self: self.seqs)
    @rule(data=st.data())
    def preempt_and_resume(self, data: st.DataObject) -> None:
        """Preemption is a free; the sequence comes back through lookup_prefix."""
        seq_id = self._pick(data)
        seq = self.seqs.pop(seq_id)
        self.m.free(seq_id)
        self.new_seq(seq.tokens or [0], seq.salt)

    @rule()
    def free_unknown(self) -> None:
        self.m.free("never-registered")

    # ---- invariants ------------------------------------------------------

    @invariant()
    def integrity(self) -> None:
        self.m.check_integrity()

    @invariant()
    def model_agrees(self) -> None:
        membership: Counter[int] = Counter()
        for seq_id, seq in self.seqs.items():
            table = self.m.block_table(seq_id)
            membership.update(table)
            assert len(table) == ceil_blocks(seq.allocated)
            assert self.m.num_tokens(seq_id) == seq.allocated
            for pos in range(seq.computed):
                assert self.device[table[pos // BS]][pos % BS] == self._slot(seq, pos)
        for block in range(NUM_BLOCKS):
            assert self.m.pool.ref_count(block) == membership[block]
        assert self.m.num_free_blocks == NUM_BLOCKS - len(membership)


KVMachine.TestCase.settings = settings(
    max_examples=100,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_kv_state_machine = KVMachine.TestCase
