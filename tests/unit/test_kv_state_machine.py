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
tokens_st = st.lists(st.integers(0, 2), min_size=1, max_size=9)
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
    @initialize(caching=st.booleans())
    def setup(self, caching: bool) -> None:
        self.m = KVCacheManager(NUM_BLOCKS, BS, enable_prefix_caching=caching)
        self.seqs: dict[int, Seq] = {}
        self.device: list[list[object]] = [[None] * BS for _ in range(NUM_BLOCKS)]
        self.next_id = 0

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

    @rule(tokens=tokens_st, salt=salts_st)
    def new_seq(self, tokens: list[int], salt: object) -> None:
        seq_id = self._new_id()
        hit = self.m.lookup_prefix(seq_id, tokens, salt)
        assert hit % BS == 0 and hit <= (len(tokens) - 1) // BS * BS
        if not self.m.enable_prefix_caching:
            assert hit == 0
        event(f'hit={hit > 0}')
        self.seqs[seq_id] = Seq(tokens, salt, allocated=hit, computed=hit)

    @precondition(lambda self: self.seqs)
    @rule(data=st.data(), extra=st.integers(0, 6))
    def allocate(self, data: st.DataObject, extra: int) -> None:
        seq_id = self._pick(data)
        seq = self.seqs[seq_id]
        target = max(len(seq.tokens), seq.allocated) + extra
        before = self.m.block_table(seq_id)
        fits = ceil_blocks(target) - len(before) <= self.m.num_free_blocks
        assert self.m.can_allocate(seq_id, target) == fits
        assert self.m.allocate(seq_id, target) == fits
        event(f'alloc fits={fits}')
        if fits:
            seq.allocated = target
        else:
            assert self.m.block_table(seq_id) == before

    @precondition(lambda self: self.seqs)
    @rule(data=st.data(), new=st.lists(st.integers(0, 2), max_size=3))
    def append_and_commit(self, data: st.DataObject, new: list[int]) -> None:
        seq_id = self._pick(data)
        seq = self.seqs[seq_id]
        seq.tokens.extend(new)  # generated or streamed-in tokens
        upto = min(seq.allocated, len(seq.tokens))
        num_computed = data.draw(st.integers(seq.computed, upto), label="num_computed")
        table = self.m.block_table(seq_id)
        for pos in range(seq.computed, num_computed):  # the "forward pass" writes KV
            block = table[pos // BS]
            assert self.m.pool.ref_count(block) == 1, "write into a shared block"
            assert self.m.pool.block_hash(block) is None, "write into a hashed block"
            self.device[block][pos % BS] = self._slot(seq, pos)
        self.m.commit(seq_id, seq.tokens, num_computed)
        seq.computed = num_computed

    @precondition(lambda self: self.seqs)
    @rule(data=st.data())
    def fork(self, data: st.DataObject) -> None:
        src_id = self._pick(data)
        src = self.seqs[src_id]
        n = data.draw(st.integers(0, src.computed), label="fork_tokens")
        dst_id = self._new_id()
        if not self.m.can_fork(src_id, n):
            with pytest.raises(NoFreeBlocksError):
                self.m.fork(src_id, dst_id, n)
            assert not self.m.has(dst_id)
            return
        copies = self.m.fork(src_id, dst_id, n)
        event(f'fork n={n}')
        assert len(copies) == (1 if n % BS else 0)
        assert self.m.block_table(dst_id)[: n // BS] == self.m.block_table(src_id)[: n // BS]
        self._apply_copies(copies)
        self.seqs[dst_id] = Seq(src.tokens[:n], src.salt, allocated=n, computed=n)

    @precondition(lambda self: self.seqs)
    @rule(data=st.data())
    def truncate(self, data: st.DataObject) -> None:
        seq_id = self._pick(data)
        seq = self.seqs[seq_id]
        n = data.draw(st.integers(0, seq.allocated), label="truncate_to")
        others = {s: self.m.block_table(s) for s in self.seqs if s != seq_id}
        if not self.m.can_truncate(seq_id, n):
            with pytest.raises(NoFreeBlocksError):
                self.m.truncate(seq_id, n)
            return
        copies = self.m.truncate(seq_id, n)
        assert len(copies) <= 1
        event(f'truncate copies={len(copies)}')
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
