"""KVCacheManager: prefix sharing, allocation, fork, truncate, free, eviction, with exact ids."""

from __future__ import annotations

import pytest

from thinkstream.kv import KVCacheManager, NoFreeBlocksError

BS = 4


def run_prompt(m: KVCacheManager, seq_id: str, tokens: list[int], salt: object = None) -> int:
    """Lookup, allocate and commit a whole prompt, as the engine does after prefill."""
    hit = m.lookup_prefix(seq_id, tokens, salt)
    assert m.allocate(seq_id, len(tokens))
    m.commit(seq_id, tokens, len(tokens))
    m.check_integrity()
    return hit


def refs(m: KVCacheManager, blocks: list[int]) -> list[int]:
    return [m.pool.ref_count(b) for b in blocks]


def test_prefix_hit_shares_exact_blocks() -> None:
    m = KVCacheManager(num_blocks=10, block_size=BS)
    a = list(range(10))  # 2 full blocks + 2 tokens
    assert run_prompt(m, "a", a) == 0
    assert m.block_table("a") == [0, 1, 2]
    b = list(range(8)) + [50, 51, 52]  # same 2 full blocks, different tail
    assert run_prompt(m, "b", b) == 8
    assert m.block_table("b") == [0, 1, 3]
    assert refs(m, [0, 1, 2, 3]) == [2, 2, 1, 1]
    assert m.num_tokens("b") == 11
    assert (m.prefix_hits, m.prefix_queries) == (8, 21)
    assert m.prefix_hit_rate == pytest.approx(8 / 21)
    assert m.num_free_blocks == 6 and m.usage == pytest.approx(0.4)


def test_partial_prefix_hit_stops_at_first_miss() -> None:
    m = KVCacheManager(num_blocks=10, block_size=BS)
    run_prompt(m, "a", list(range(13)))  # blocks 0,1,2 full and hashed, 3 partial
    b = list(range(4)) + [9, 9, 9, 9] + list(range(8, 13))  # block 1 differs
    assert m.lookup_prefix("b", b) == 4
    assert m.block_table("b") == [0]
    assert m.num_tokens("b") == 4
    m.check_integrity()


def test_cap_leaves_one_token_to_compute() -> None:
    m = KVCacheManager(num_blocks=10, block_size=BS)
    prompt = list(range(12))  # exactly 3 full blocks
    run_prompt(m, "a", prompt)
    assert m.block_table("a") == [0, 1, 2]
    assert m.lookup_prefix("b", prompt) == 8  # 2 of 3 blocks
    assert m.block_table("b") == [0, 1]
    assert m.allocate("b", 12)
    assert m.block_table("b") == [0, 1, 3]
    m.commit("b", prompt, 12)  # block 3 duplicates block 2: the existing mapping stays
    assert m.pool.lookup(m.pool.block_hash(2)) == 2 and m.pool.block_hash(3) is None
    assert m.lookup_prefix("c", prompt + [99]) == 12
    assert m.block_table("c") == [0, 1, 2]
    m.check_integrity()


def test_salt_separates_caches() -> None:
    m = KVCacheManager(num_blocks=10, block_size=BS)
    prompt = list(range(9))
    run_prompt(m, "a", prompt, salt="tenant-1")
    assert m.lookup_prefix("b", prompt, salt="tenant-2") == 0
    assert m.lookup_prefix("c", prompt) == 0
    assert m.lookup_prefix("d", prompt, salt="tenant-1") == 8
    assert m.block_table("d") == [0, 1]


def test_prefix_caching_off() -> None:
    m = KVCacheManager(num_blocks=10, block_size=BS, enable_prefix_caching=False)
    prompt = list(range(9))
    assert run_prompt(m, "a", prompt) == 0
    assert run_prompt(m, "b", prompt) == 0
    assert m.block_table("a") == [0, 1, 2] and m.block_table("b") == [3, 4, 5]
    assert all(m.pool.block_hash(b) is None for b in range(10))
    assert m.has("b") and m.prefix_queries == 0
    m.free("a")
    assert m.lookup_prefix("c", prompt) == 0


def test_lookup_registers_and_rejects_known_id() -> None:
    m = KVCacheManager(num_blocks=4, block_size=BS)
    assert m.lookup_prefix("a", [1, 2]) == 0
    assert m.has("a") and m.block_table("a") == [] and m.num_tokens("a") == 0
    with pytest.raises(ValueError):
        m.lookup_prefix("a", [1, 2])


def test_allocate_all_or_nothing() -> None:
    m = KVCacheManager(num_blocks=4, block_size=BS)
    assert m.allocate("a", 5)
    assert m.block_table("a") == [0, 1]
    assert m.can_allocate("b", 8) and not m.can_allocate("b", 9)
    assert not m.allocate("b", 9)
    assert not m.has("b")
    assert not m.allocate("a", 17)  # needs 3 more, 2 free
    assert m.block_table("a") == [0, 1] and m.num_tokens("a") == 5
    assert m.num_free_blocks == 2
    assert m.allocate("a", 8) and m.block_table("a") == [0, 1]  # fits in what it has
    assert m.allocate("a", 3) and m.num_tokens("a") == 8  # never shrinks
    assert m.allocate("a", 16) and m.block_table("a") == [0, 1, 2, 3]
    assert m.num_free_blocks == 0 and m.usage == 1.0
    m.check_integrity()


def test_commit_validates_and_hashes_only_new_full_blocks() -> None:
    m = KVCacheManager(num_blocks=6, block_size=BS)
    tokens = list(range(10))
    m.lookup_prefix("a", tokens)
    m.allocate("a", 10)
    with pytest.raises(ValueError):
        m.commit("a", tokens, 11)
    m.commit("a", tokens, 5)
    assert m.pool.block_hash(0) is not None and m.pool.block_hash(1) is None
    h0 = m.pool.block_hash(0)
    m.commit("a", tokens, 10)
    assert m.pool.block_hash(0) == h0 and m.pool.block_hash(1) is not None
    assert m.pool.block_hash(2) is None
    m.check_integrity()


def test_fork_shares_full_blocks_and_copies_partial() -> None:
    m = KVCacheManager(num_blocks=8, block_size=BS)
    prompt = list(range(10))
    run_prompt(m, "a", prompt)
    assert m.block_table("a") == [0, 1, 2]
    assert m.can_fork("a", 10)
    assert m.fork("a", "b", 10) == [(2, 3)]
    assert m.block_table("b") == [0, 1, 3]
    assert refs(m, [0, 1, 2, 3]) == [2, 2, 1, 1]
    assert m.num_tokens("b") == 10
    assert m.fork("a", "c", 8) == []
    assert m.block_table("c") == [0, 1] and refs(m, [0, 1]) == [3, 3]
    m.check_integrity()
    with pytest.raises(ValueError):
        m.fork("a", "b", 4)  # b exists
    with pytest.raises(ValueError):
        m.fork("a", "d", 11)  # more than a has


def test_fork_keeps_salt_for_blocks_the_branch_commits() -> None:
    m = KVCacheManager(num_blocks=8, block_size=BS)
    tokens = [1, 2, 3, 4, 5]
    m.lookup_prefix("a", tokens, salt="s")
    assert m.allocate("a", 5)
    m.commit("a", tokens, 3)  # nothing full yet
    assert m.block_table("a") == [0, 1]
    assert m.fork("a", "b", 3) == [(0, 2)]
    assert m.allocate("b", 5)
    m.commit("b", tokens, 5)  # b's copy, block 2, is the one registered
    assert m.block_table("b") == [2, 3]
    assert m.lookup_prefix("c", tokens, salt=None) == 0
    assert m.lookup_prefix("d", tokens, salt="s") == 4
    assert m.block_table("d") == [2]
    m.check_integrity()


def test_fork_without_a_free_block_raises_and_changes_nothing() -> None:
    m = KVCacheManager(num_blocks=3, block_size=BS)
    assert m.allocate("a", 10)
    assert not m.can_fork("a", 10) and m.can_fork("a", 8)
    with pytest.raises(NoFreeBlocksError):
        m.fork("a", "b", 10)
    assert not m.has("b") and refs(m, [0, 1, 2]) == [1, 1, 1]
    m.check_integrity()


def test_truncate_into_shared_block_copies() -> None:
    m = KVCacheManager(num_blocks=8, block_size=BS)
    prompt = list(range(12))
    run_prompt(m, "a", prompt)
    assert m.fork("a", "b", 12) == []
    assert m.block_table("b") == [0, 1, 2]
    assert m.truncate("b", 6) == [(1, 3)]
    assert m.block_table("b") == [0, 3] and m.num_tokens("b") == 6
    assert m.block_table("a") == [0, 1, 2]
    assert refs(m, [0, 1, 2, 3]) == [2, 1, 1, 1]
    assert m.pool.block_hash(1) is not None and m.pool.block_hash(2) is not None
    m.check_integrity()


def test_truncate_own_hashed_block_unhashes_in_place() -> None:
    m = KVCacheManager(num_blocks=8, block_size=BS)
    tokens = list(range(12))
    run_prompt(m, "a", tokens)
    h1, h2 = m.pool.block_hash(1), m.pool.block_hash(2)
    assert m.truncate("a", 6) == []
    assert m.block_table("a") == [0, 1]
    assert m.pool.block_hash(1) is None and m.pool.lookup(h1) is None
    assert m.pool.lookup(h2) is None  # dropped past the cut: forgotten
    assert m.pool.free_queue()[0] == 2  # plain free, reused first
    m.check_integrity()
    # Re-commit different tokens: new hashes, and the old prefix no longer hits.
    new = tokens[:6] + [70, 71, 72, 73, 74, 75]
    assert m.allocate("a", 12) and m.block_table("a") == [0, 1, 2]
    m.commit("a", new, 12)
    assert m.pool.block_hash(1) not in (None, h1) and m.pool.block_hash(2) not in (None, h2)
    assert m.lookup_prefix("b", tokens + [1]) == 4
    assert m.lookup_prefix("c", new + [1]) == 12
    m.check_integrity()


def test_truncate_on_block_boundary_and_errors() -> None:
    m = KVCacheManager(num_blocks=4, block_size=BS)
    run_prompt(m, "a", list(range(12)))
    assert m.truncate("a", 8) == []
    assert m.block_table("a") == [0, 1] and m.pool.block_hash(1) is not None
    assert m.truncate("a", 9) == [] and m.num_tokens("a") == 8  # past the end: no-op
    assert m.can_truncate("a", 100)
    with pytest.raises(ValueError):
        m.truncate("a", -1)
    assert m.truncate("a", 0) == [] and m.block_table("a") == []
    m.check_integrity()


def test_truncate_copy_reuses_a_dropped_block_when_pool_is_full() -> None:
    m = KVCacheManager(num_blocks=4, block_size=BS)
    run_prompt(m, "a", list(range(8)))
    m.fork("a", "b", 8)
    assert m.allocate("b", 16) and m.block_table("b") == [0, 1, 2, 3]
    assert m.num_free_blocks == 0
    assert m.can_truncate("b", 6)
    # 3 and 2 are dropped (to the head, 2 first), then 2 is taken for the copy.
    assert m.truncate("b", 6) == [(1, 2)]
    assert m.block_table("b") == [0, 2] and m.block_table("a") == [0, 1]
    assert m.pool.free_queue() == [3]
    m.check_integrity()
    assert m.allocate("b", 12) and m.block_table("b") == [0, 2, 3]
    m.fork("a", "c", 8)
    assert not m.can_truncate("c", 6)
    with pytest.raises(NoFreeBlocksError):
        m.truncate("c", 6)
    assert m.block_table("c") == [0, 1] and m.num_tokens("c") == 8
    m.check_integrity()


def test_free_returns_pool_to_full() -> None:
    m = KVCacheManager(num_blocks=6, block_size=BS)
    run_prompt(m, "a", list(range(10)))
    m.fork("a", "b", 10)
    m.free("a")
    m.free("b")
    m.free("never-seen")
    assert m.num_free_blocks == 6 and m.usage == 0.0
    assert not m.has("a")
    m.check_integrity()


def test_cached_blocks_hit_after_free_and_evict_in_lru_order() -> None:
    m = KVCacheManager(num_blocks=6, block_size=BS)
    run_prompt(m, "a", list(range(100, 109)))  # blocks 0,1 hashed, 2 partial
    run_prompt(m, "b", list(range(200, 209)))  # blocks 3,4 hashed, 5 partial
    m.free("a")
    m.free("b")
    # Plain 5 and 2 at the head; then a's cached blocks (last first), then b's.
    assert m.pool.free_queue() == [5, 2, 1, 0, 4, 3]
    # A hit after free revives the cached blocks.
    assert m.lookup_prefix("a2", list(range(100, 109))) == 8
    assert m.block_table("a2") == [0, 1]
    m.free("a2")
    assert m.pool.free_queue() == [5, 2, 4, 3, 1, 0]
    # Pressure: 4 blocks take the two plain ones, then evict b's last block, then its first.
    assert m.allocate("c", 16) and m.block_table("c") == [5, 2, 4, 3]
    assert m.lookup_prefix("b2", list(range(200, 209))) == 0
    assert m.pool.free_queue() == [1, 0]
    # One more block evicts a's last cached block before its first.
    assert m.allocate("d", 4) and m.block_table("d") == [1]
    assert m.lookup_prefix("a3", list(range(100, 109))) == 4
    assert m.block_table("a3") == [0]
    m.check_integrity()


def test_eviction_order_within_one_sequence() -> None:
    m = KVCacheManager(num_blocks=4, block_size=BS)
    prompt = list(range(12))
    run_prompt(m, "a", prompt)  # 0,1,2 all hashed
    m.free("a")
    assert m.pool.free_queue() == [3, 2, 1, 0]
    assert m.allocate("x", 8) and m.block_table("x") == [3, 2]
    # Blocks 0 and 1 (the prefix) survive; a new prompt still hits both.
    assert m.lookup_prefix("a2", prompt + [1]) == 8
    m.check_integrity()


def test_a_hash_cache_makes_a_repeated_lookup_probes_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """A waiting sequence's lookup each step: its block hashes come from its HashCache,
    re-hashed only from the first block whose tokens (or salt) changed."""
    import thinkstream.kv.prefix as prefix

    m = KVCacheManager(num_blocks=10, block_size=BS)
    run_prompt(m, "a", list(range(13)))  # blocks 0, 1, 2 hashed
    hashed: list[list[int]] = []
    real = prefix.hash_block
    monkeypatch.setattr(prefix, "hash_block", lambda p, t, s=None: hashed.append(list(t)) or real(p, t, s))
    cache, b = prefix.HashCache(), [*range(12), 70, 71]
    assert m.lookup_prefix("b", b, hashes=cache) == 12 and m.block_table("b") == [0, 1, 2]
    assert len(hashed) == 3
    for _ in range(3):  # waits: freed and looked up again, no hashing
        m.free("b")
        assert m.lookup_prefix("b", b, hashes=cache) == 12 and m.block_table("b") == [0, 1, 2]
    assert len(hashed) == 3
    m.free("b")
    b[5] = 99  # its input replaced inside block 1: block 0 cached, block 1 re-hashed, a miss
    assert m.lookup_prefix("b", b, hashes=cache) == 4 and m.block_table("b") == [0]
    assert hashed[3:] == [[4, 99, 6, 7]]
    m.free("b")
    assert m.lookup_prefix("b", b, salt="x", hashes=cache) == 0  # another salt: nothing shared
    assert m.lookup_prefix("c", b) == 4 and m.block_table("c") == [0]  # the uncached lookup agrees
    m.check_integrity()
