"""The pool of physical KV blocks: ref counts, the prefix-cache map, the LRU free queue.

Every block is in exactly one of three states::

    free    ref_count == 0, no hash    in the free queue, holds nothing of value
    cached  ref_count == 0, hash set   in the free queue and in the hash map: a prefix
                                       hit can revive it, an allocation can evict it
    in use  ref_count  > 0             in one or more block tables

The free queue (head = next to hand out) holds exactly the ref-0 blocks::

    head -> | free ... | cached, least recently released ... most recently | <- tail

Cached blocks are appended at the tail as they are released, so allocation
evicts the least recently used first. A block that reaches ref 0 without a hash
goes to the head instead: it is worthless, so it is handed out before any
cached block is evicted. The pool knows nothing of sequences; the caller passes
blocks to ``release`` in the order they should be evicted.

All operations are O(1) per block (an OrderedDict is the queue).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Mapping

from thinkstream.kv.prefix import BlockHash


class NoFreeBlocksError(RuntimeError):
    """More blocks were asked for than the pool has free (free + cached)."""


def check_invariant(condition: bool, message: str) -> None:
    # Integrity checks must survive ``python -O``, so no bare assert.
    if not condition:
        raise AssertionError(message)


class BlockPool:
    """Blocks ``0 .. num_blocks - 1`` with ref counts and an optional hash each."""

    def __init__(self, num_blocks: int) -> None:
        if num_blocks <= 0:
            raise ValueError(f"num_blocks must be positive, got {num_blocks}")
        self.num_blocks = num_blocks
        self._ref = [0] * num_blocks
        self._hash: list[BlockHash | None] = [None] * num_blocks
        self._cached: dict[BlockHash, int] = {}
        self._free: OrderedDict[int, None] = OrderedDict.fromkeys(range(num_blocks))

    # ---- queries -------------------------------------------------------

    @property
    def num_free(self) -> int:
        """Blocks an allocation may take: free plus cached."""
        return len(self._free)

    @property
    def num_in_use(self) -> int:
        return self.num_blocks - len(self._free)

    def ref_count(self, block_id: int) -> int:
        return self._ref[block_id]

    def block_hash(self, block_id: int) -> BlockHash | None:
        return self._hash[block_id]

    def lookup(self, block_hash: BlockHash) -> int | None:
        """The block holding ``block_hash`` (in use or cached), or None."""
        return self._cached.get(block_hash)

    def free_queue(self) -> list[int]:
        """Ref-0 blocks in the order allocation takes them (for tests and debugging)."""
        return list(self._free)

    # ---- ref counting --------------------------------------------------

    def allocate(self, n: int) -> list[int]:
        """Take ``n`` blocks from the head of the free queue, each with ref 1.

        A cached block taken here is evicted: its hash leaves the map.
        """
        if n > len(self._free):
            raise NoFreeBlocksError(f"asked for {n} blocks, {len(self._free)} free")
        out = []
        for _ in range(n):
            block_id, _ = self._free.popitem(last=False)
            self._drop_hash(block_id)
            self._ref[block_id] = 1
            out.append(block_id)
        return out

    def acquire(self, block_id: int) -> None:
        """Take one more reference; a ref-0 (cached) block leaves the free queue."""
        if self._ref[block_id] == 0:
            del self._free[block_id]
        self._ref[block_id] += 1

    def release(self, block_ids: Iterable[int], *, keep_hash: bool = True) -> None:
        """Drop one reference from each block, in the order given = eviction order.

        A block reaching ref 0 keeps its hash and goes to the queue's tail (cached),
        unless ``keep_hash`` is False or it has none: then it becomes plain free and
        goes to the head. Blocks still referenced elsewhere keep their hash.
        """
        for block_id in block_ids:
            ref = self._ref[block_id]
            if ref <= 0:
                raise ValueError(f"block {block_id} released with ref count {ref}")
            self._ref[block_id] = ref - 1
            if ref > 1:
                continue
            if not keep_hash:
                self._drop_hash(block_id)
            self._free[block_id] = None
            if self._hash[block_id] is None:
                self._free.move_to_end(block_id, last=False)

    # ---- the hash map --------------------------------------------------

    def cache(self, block_id: int, block_hash: BlockHash) -> bool:
        """Register an in-use block under ``block_hash``.

        Returns False and changes nothing if another block already holds that hash
        (the first writer keeps the mapping) or this block already has a hash.
        """
        if self._ref[block_id] <= 0:
            raise ValueError(f"block {block_id} is not in use")
        if block_hash in self._cached or self._hash[block_id] is not None:
            return False
        self._cached[block_hash] = block_id
        self._hash[block_id] = block_hash
        return True

    def uncache(self, block_id: int) -> None:
        """Forget a block's hash (before writing into it). A ref-0 block becomes plain free."""
        self._drop_hash(block_id)
        if self._ref[block_id] == 0:
            self._free.move_to_end(block_id, last=False)

    def _drop_hash(self, block_id: int) -> None:
        block_hash = self._hash[block_id]
        if block_hash is not None:
            del self._cached[block_hash]
            self._hash[block_id] = None

    # ---- invariants ----------------------------------------------------

    def check_integrity(self, expected_refs: Mapping[int, int] | None = None) -> None:
        """Raise AssertionError unless the pool's bookkeeping is consistent.

        ``expected_refs`` maps block id -> number of block tables holding it
        (missing ids expect 0); the manager passes it.
        """
        free = cached = in_use = 0
        for block_id in range(self.num_blocks):
            ref, block_hash = self._ref[block_id], self._hash[block_id]
            check_invariant(ref >= 0, f"block {block_id} has ref count {ref}")
            check_invariant((ref == 0) == (block_id in self._free), f"block {block_id}: ref {ref} vs queue")
            if ref > 0:
                in_use += 1
            elif block_hash is None:
                free += 1
            else:
                cached += 1
            if block_hash is not None:
                owner = self._cached.get(block_hash)
                check_invariant(owner == block_id, f"block {block_id}'s hash maps to block {owner}")
            if expected_refs is not None:
                want = expected_refs.get(block_id, 0)
                check_invariant(ref == want, f"block {block_id}: ref {ref}, in {want} tables")
        check_invariant(free + cached + in_use == self.num_blocks, "block states do not add up")
        check_invariant(len(self._free) == free + cached, "free queue size disagrees with ref counts")
        check_invariant(len(self._cached) == sum(h is not None for h in self._hash), "stale hash entries")
        for block_hash, block_id in self._cached.items():
            check_invariant(self._hash[block_id] == block_hash, f"hash map entry for block {block_id} stale")
        if expected_refs is not None:
            unknown = [b for b in expected_refs if not 0 <= b < self.num_blocks]
            check_invariant(not unknown, f"tables hold unknown blocks {unknown}")
