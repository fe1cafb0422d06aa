"""Per-sequence block tables over a shared BlockPool, with prefix caching.

A sequence's table maps its token positions to physical blocks, block_size
tokens each. Along the table::

    block table:  | b0  | b1  | b2  | b3  | b4  |
    tokens:       | cached prefix |  computed  | allocated-not-computed |
                  0          prefix hit    committed          num_tokens <= len(table) * block_size

- ``num_tokens(seq)`` is the number of token slots allocated (the largest total
  passed to ``allocate``, or what ``lookup_prefix`` / ``fork`` / ``truncate`` set).
  Invariant: ``len(table) == ceil(num_tokens / block_size)``.
- The leading ``len(hashes)`` blocks are full and committed, and ``hashes[i]`` is
  block i's chained hash. Committing only hashes blocks past them.
- A block carrying a hash in the pool is never written again: a block that is
  about to be written (the partial last one after ``truncate``) is un-hashed or
  copied first. A block shared by several tables (ref > 1) is full and never
  written either; ``fork`` and ``truncate`` copy a shared block that would be.
- A block's ref count equals the number of tables that hold it.

When a hash is already held by another block, commit keeps the existing mapping
and the sequence keeps its own (unhashed) block: two copies, one findable.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field

from thinkstream.kv.block_pool import BlockPool, NoFreeBlocksError, check_invariant
from thinkstream.kv.prefix import BlockHash, HashCache, iter_block_hashes

CopyPair = tuple[int, int]
"""(source block, destination block): a whole-block KV copy the device must perform."""


@dataclass
class _SeqState:
    salt: object = None
    table: list[int] = field(default_factory=list)
    hashes: list[BlockHash] = field(default_factory=list)
    num_tokens: int = 0


class KVCacheManager:
    """Block tables for sequences identified by opaque hashable ids."""

    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True):
        if block_size <= 0:
            raise ValueError(f"block_size must be positive, got {block_size}")
        self.pool = BlockPool(num_blocks)
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.prefix_hits = 0  # tokens served from the cache by lookup_prefix
        self.prefix_queries = 0  # tokens looked up by lookup_prefix
        self._seqs: dict[Hashable, _SeqState] = {}

    # ---- queries -------------------------------------------------------

    @property
    def num_free_blocks(self) -> int:
        """Free plus cached (evictable) blocks."""
        return self.pool.num_free

    @property
    def usage(self) -> float:
        """Fraction of blocks in use by some table."""
        return self.pool.num_in_use / self.num_blocks

    @property
    def prefix_hit_rate(self) -> float:
        return self.prefix_hits / self.prefix_queries if self.prefix_queries else 0.0

    def has(self, seq_id: Hashable) -> bool:
        return seq_id in self._seqs

    def block_table(self, seq_id: Hashable) -> list[int]:
        """Physical block ids in token order (a copy)."""
        return list(self._seqs[seq_id].table)

    def num_tokens(self, seq_id: Hashable) -> int:
        """Token slots allocated for the sequence (see the module diagram)."""
        return self._seqs[seq_id].num_tokens

    def blocks_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    # ---- prefix lookup, allocation, commit -------------------------------

    def lookup_prefix(self, seq_id: Hashable, token_ids: Sequence[int], salt: object = None,
                      hashes: HashCache | None = None) -> int:
        """Start a sequence on the longest cached run of full blocks of ``token_ids``.

        At most ``(len(token_ids) - 1) // block_size`` blocks are reused, so at least
        one token is left to compute (its logits are needed). Returns the number of
        tokens covered, a multiple of block_size; 0 with prefix caching off. The
        sequence is registered with ``salt`` either way. ``hashes``: the caller's cache
        of this token list's block hashes (a sequence looked up again each step it
        waits: then a lookup is a dict probe per block). Raises ValueError if
        ``seq_id`` is already known.
        """
        if seq_id in self._seqs:
            raise ValueError(f"sequence {seq_id!r} already has a block table")
        seq = self._seqs[seq_id] = _SeqState(salt=salt)
        if not self.enable_prefix_caching:
            return 0
        max_blocks = max(len(token_ids) - 1, 0) // self.block_size
        chain = (hashes.iter_hashes(token_ids, self.block_size, max_blocks, salt) if hashes is not None
                 else iter_block_hashes(token_ids, self.block_size, 0, max_blocks, None, salt))
        for block_hash in chain:
            block_id = self.pool.lookup(block_hash)
            if block_id is None:
                break
            self.pool.acquire(block_id)
            seq.table.append(block_id)
            seq.hashes.append(block_hash)
        seq.num_tokens = len(seq.table) * self.block_size
        self.prefix_queries += len(token_ids)
        self.prefix_hits += seq.num_tokens
        return seq.num_tokens

    def can_allocate(self, seq_id: Hashable, num_tokens: int) -> bool:
        """Whether ``allocate(seq_id, num_tokens)`` would succeed (unknown ids: empty table)."""
        seq = self._seqs.get(seq_id)
        have = len(seq.table) if seq is not None else 0
        return self.blocks_for(num_tokens) - have <= self.pool.num_free

    def allocate(self, seq_id: Hashable, num_tokens: int) -> bool:
        """Ensure blocks for the first ``num_tokens`` tokens (a total, not a delta).

        All or nothing: returns False and changes nothing when blocks are short.
        Registers an unknown ``seq_id`` (salt None). Never shrinks; see truncate.
        """
        if num_tokens < 0:
            raise ValueError(f"num_tokens must be >= 0, got {num_tokens}")
        if not self.can_allocate(seq_id, num_tokens):
            return False
        seq = self._seqs.setdefault(seq_id, _SeqState())
        need = self.blocks_for(num_tokens) - len(seq.table)
        if need > 0:
            seq.table.extend(self.pool.allocate(need))
        seq.num_tokens = max(seq.num_tokens, num_tokens)
        return True

    def commit(self, seq_id: Hashable, token_ids: Sequence[int], num_computed: int) -> None:
        """Record that the first ``num_computed`` tokens have their KV written.

        ``token_ids`` is the sequence's full token list so far. Each block that is
        now full and not yet hashed gets its chained hash and enters the prefix
        cache, unless another block already holds that hash.
        """
        seq = self._seqs[seq_id]
        if not 0 <= num_computed <= min(seq.num_tokens, len(token_ids)):
            raise ValueError(
                f"num_computed {num_computed} outside [0, min({seq.num_tokens} allocated, "
                f"{len(token_ids)} tokens)]"
            )
        if not self.enable_prefix_caching:
            return
        start, stop = len(seq.hashes), num_computed // self.block_size
        parent = seq.hashes[-1] if seq.hashes else None
        for i, block_hash in enumerate(
            iter_block_hashes(token_ids, self.block_size, start, stop, parent, seq.salt), start
        ):
            self.pool.cache(seq.table[i], block_hash)
            seq.hashes.append(block_hash)

    # ---- fork, truncate, free --------------------------------------------

    def can_fork(self, src_id: Hashable, num_tokens: int) -> bool:
        """Whether ``fork`` has the one block a partial last block needs."""
        return num_tokens % self.block_size == 0 or self.pool.num_free >= 1

    def fork(self, src_id: Hashable, dst_id: Hashable, num_tokens: int) -> list[CopyPair]:
        """Start ``dst_id`` as a copy-on-write fork of the first ``num_tokens`` of ``src_id``.

        ``dst`` shares ``src``'s full blocks (one more ref each) and gets a fresh block
        for a partial last one; returns that copy, ``[(src_block, dst_block)]``, or
        ``[]``. The first ``num_tokens`` of ``src`` should be computed. Raises
        NoFreeBlocksError (changing nothing) when the fresh block is not available,
        ValueError when ``dst_id`` exists or ``num_tokens`` exceeds ``src``'s.
        """
        src = self._seqs[src_id]
        if dst_id in self._seqs:
            raise ValueError(f"sequence {dst_id!r} already exists")
        if not 0 <= num_tokens <= src.num_tokens:
            raise ValueError(
                f"cannot fork {num_tokens} tokens of a {src.num_tokens}-token sequence"
            )
        if not self.can_fork(src_id, num_tokens):
            raise NoFreeBlocksError(f"fork of {src_id!r} needs a block for its partial tail")
        full, partial = divmod(num_tokens, self.block_size)
        table = src.table[:full]
        for block_id in table:
            self.pool.acquire(block_id)
        copies: list[CopyPair] = []
        if partial:
            (fresh,) = self.pool.allocate(1)
            copies.append((src.table[full], fresh))
            table.append(fresh)
        self._seqs[dst_id] = _SeqState(src.salt, table, src.hashes[:full], num_tokens)
        return copies

    def _truncate_needs_copy(self, seq: _SeqState, num_tokens: int) -> bool:
        if num_tokens % self.block_size == 0:
            return False
        return self.pool.ref_count(seq.table[self.blocks_for(num_tokens) - 1]) > 1

    def can_truncate(self, seq_id: Hashable, num_tokens: int) -> bool:
        """Whether ``truncate`` has the block a copy of a shared last block needs."""
        seq = self._seqs[seq_id]
        if num_tokens >= seq.num_tokens or not self._truncate_needs_copy(seq, num_tokens):
            return True
        dropped = seq.table[self.blocks_for(num_tokens) :]
        freed = sum(self.pool.ref_count(b) == 1 for b in dropped)
        return self.pool.num_free + freed >= 1

    def truncate(self, seq_id: Hashable, num_tokens: int) -> list[CopyPair]:
        """Roll the sequence back to its first ``num_tokens`` tokens.

        Blocks past the cut are released; those no other table holds lose their
        hash (rolled-back content is unlikely to be asked for again, so they are
        reused before any cached block is evicted). If the new last block is
        partial, it will be written again, so:

        - shared (ref > 1): it is replaced by a fresh block and the copy
          ``(old, new)`` is returned for the device to perform before writing;
        - ours alone but hashed: it is un-hashed in place (no copy; the cache
          loses that block rather than spending a block and a copy to keep it).

        A cut at or past ``num_tokens(seq_id)`` drops nothing and returns ``[]``.
        Raises NoFreeBlocksError (changing nothing) if a copy is needed and no
        block can be had, ValueError if ``num_tokens`` is negative.
        """
        seq = self._seqs[seq_id]
        if num_tokens < 0:
            raise ValueError(f"num_tokens must be >= 0, got {num_tokens}")
        if num_tokens >= seq.num_tokens:
            return []
        if not self.can_truncate(seq_id, num_tokens):
            raise NoFreeBlocksError(f"truncate of {seq_id!r} needs a block to copy into")
        keep = self.blocks_for(num_tokens)
        self.pool.release(reversed(seq.table[keep:]), keep_hash=False)
        del seq.table[keep:]
        del seq.hashes[num_tokens // self.block_size :]
        seq.num_tokens = num_tokens
        if num_tokens % self.block_size == 0:
            return []
        last = seq.table[-1]
        if self.pool.ref_count(last) == 1:
            self.pool.uncache(last)
            return []
        (fresh,) = self.pool.allocate(1)
        self.pool.release([last])
        seq.table[-1] = fresh
        return [(last, fresh)]

    def free(self, seq_id: Hashable) -> None:
        """Release every block of the sequence; an unknown id is a no-op.

        Blocks go back in reverse table order, so under pressure a sequence's last
        blocks are evicted before its first ones (the likelier shared prefix).
        """
        seq = self._seqs.pop(seq_id, None)
        if seq is not None:
            self.pool.release(reversed(seq.table))

    # ---- invariants ----------------------------------------------------

    def check_integrity(self) -> None:
        """Raise AssertionError unless tables, hashes and the pool agree."""
        membership: Counter[int] = Counter()
        for seq_id, seq in self._seqs.items():
            membership.update(seq.table)
            check_invariant(
                len(seq.table) == self.blocks_for(seq.num_tokens),
                f"{seq_id!r}: {len(seq.table)} blocks for {seq.num_tokens} tokens",
            )
            check_invariant(len(set(seq.table)) == len(seq.table), f"{seq_id!r}: a block appears twice")
            check_invariant(
                len(seq.hashes) <= seq.num_tokens // self.block_size,
                f"{seq_id!r}: {len(seq.hashes)} hashes for {seq.num_tokens} tokens",
            )
            for i, block_id in enumerate(seq.table):
                block_hash = self.pool.block_hash(block_id)
                if block_hash is None:
                    continue
                # A hashed block is full, and its hash is the chain hash at its position
                # (a sharer that has not committed it yet may not have that hash listed).
                check_invariant(
                    (i + 1) * self.block_size <= seq.num_tokens,
                    f"{seq_id!r}: hashed block {block_id} at {i} is not full",
                )
                check_invariant(
                    i >= len(seq.hashes) or seq.hashes[i] == block_hash,
                    f"{seq_id!r}: block {block_id} at {i} holds a hash the table disagrees with",
                )
        self.pool.check_integrity(membership)
