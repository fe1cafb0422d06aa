"""BlockPool and prefix hashing: exact ids, eviction order, ref counts, integrity."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from thinkstream.kv import prefix
from thinkstream.kv.block_pool import BlockPool, NoFreeBlocksError
from thinkstream.kv.prefix import hash_block, iter_block_hashes

H1 = hash_block(None, [1, 2])
H2 = hash_block(H1, [3, 4])
H3 = hash_block(H2, [5, 6])


def counts(pool: BlockPool) -> tuple[int, int, int]:
    """(free, cached, in use), read block by block."""
    refs = [pool.ref_count(b) for b in range(pool.num_blocks)]
    hashes = [pool.block_hash(b) for b in range(pool.num_blocks)]
    free = sum(r == 0 and h is None for r, h in zip(refs, hashes, strict=True))
    cached = sum(r == 0 and h is not None for r, h in zip(refs, hashes, strict=True))
    return free, cached, sum(r > 0 for r in refs)


def test_allocates_in_order_from_head() -> None:
    pool = BlockPool(5)
    assert pool.allocate(2) == [0, 1]
    assert pool.allocate(1) == [2]
    assert [pool.ref_count(b) for b in range(5)] == [1, 1, 1, 0, 0]
    assert pool.num_free == 2 and pool.num_in_use == 3
    assert pool.free_queue() == [3, 4]
    assert counts(pool) == (2, 0, 3)
    pool.check_integrity({0: 1, 1: 1, 2: 1})


def test_allocate_more_than_free_raises_and_changes_nothing() -> None:
    pool = BlockPool(3)
    pool.allocate(2)
    with pytest.raises(NoFreeBlocksError):
        pool.allocate(2)
    assert isinstance(NoFreeBlocksError("x"), RuntimeError)
    assert pool.free_queue() == [2]
    pool.check_integrity({0: 1, 1: 1})


def test_cached_blocks_queue_at_tail_in_release_order() -> None:
    pool = BlockPool(5)
    assert pool.allocate(3) == [0, 1, 2]
    assert pool.cache(0, H1) and pool.cache(1, H2) and pool.cache(2, H3)
    pool.release([2, 1, 0])  # what the manager passes for table [0, 1, 2]
    assert pool.free_queue() == [3, 4, 2, 1, 0]
    assert counts(pool) == (2, 3, 0)
    pool.check_integrity({})
    # The two plain blocks go first, then cached ones in LRU order, each evicted.
    assert pool.allocate(3) == [3, 4, 2]
    assert pool.block_hash(2) is None and pool.lookup(H3) is None
    assert pool.lookup(H1) == 0 and pool.lookup(H2) == 1
    assert counts(pool) == (0, 2, 3)
    pool.check_integrity({3: 1, 4: 1, 2: 1})
    assert pool.allocate(1) == [1]
    assert pool.lookup(H2) is None and pool.free_queue() == [0]


def test_unhashed_release_goes_to_head() -> None:
    pool = BlockPool(4)
    assert pool.allocate(3) == [0, 1, 2]
    pool.cache(0, H1)
    pool.release([2, 1, 0])
    # 2 then 1 are pushed to the head (1 ends first); cached 0 goes to the tail.
    assert pool.free_queue() == [1, 2, 3, 0]
    assert pool.allocate(3) == [1, 2, 3]
    assert pool.lookup(H1) == 0
    pool.check_integrity({1: 1, 2: 1, 3: 1})


def test_acquire_revives_cached_block_and_shares_refs() -> None:
    pool = BlockPool(3)
    (b,) = pool.allocate(1)
    pool.cache(b, H1)
    pool.release([b])
    assert pool.free_queue() == [1, 2, 0] and pool.lookup(H1) == 0
    pool.acquire(0)
    assert pool.ref_count(0) == 1 and pool.free_queue() == [1, 2]
    pool.acquire(0)
    assert pool.ref_count(0) == 2
    assert counts(pool) == (2, 0, 1)
    pool.check_integrity({0: 2})
    pool.release([0])
    assert pool.ref_count(0) == 1 and pool.free_queue() == [1, 2]
    pool.release([0])
    assert pool.free_queue() == [1, 2, 0] and pool.lookup(H1) == 0
    pool.check_integrity({})


def test_release_below_zero_raises() -> None:
    pool = BlockPool(2)
    with pytest.raises(ValueError):
        pool.release([0])


def test_release_without_keeping_hash() -> None:
    pool = BlockPool(3)
    pool.allocate(2)
    pool.cache(0, H1)
    pool.cache(1, H2)
    pool.acquire(1)
    pool.release([1, 0], keep_hash=False)
    # 1 is still held elsewhere, so it keeps its hash; 0 reaches 0 and forgets it.
    assert pool.lookup(H1) is None and pool.lookup(H2) == 1
    assert pool.free_queue() == [0, 2]
    pool.check_integrity({1: 1})


def test_cache_first_writer_wins() -> None:
    pool = BlockPool(3)
    pool.allocate(2)
    assert pool.cache(0, H1) is True
    assert pool.cache(1, H1) is False
    assert pool.cache(0, H2) is False
    assert pool.lookup(H1) == 0 and pool.block_hash(1) is None and pool.lookup(H2) is None
    with pytest.raises(ValueError):
        pool.cache(2, H3)  # not in use
    pool.check_integrity({0: 1, 1: 1})


def test_uncache_free_block_moves_to_head() -> None:
    pool = BlockPool(3)
    pool.allocate(1)
    pool.cache(0, H1)
    pool.release([0])
    assert pool.free_queue() == [1, 2, 0]
    pool.uncache(0)
    assert pool.free_queue() == [0, 1, 2] and pool.lookup(H1) is None
    pool.check_integrity({})


def test_integrity_catches_bad_refs() -> None:
    pool = BlockPool(3)
    pool.allocate(1)
    with pytest.raises(AssertionError):
        pool.check_integrity({0: 2})
    with pytest.raises(AssertionError):
        pool.check_integrity({})
    with pytest.raises(AssertionError):
        pool.check_integrity({0: 1, 7: 1})
    pool._ref[1] = 1  # corrupt: in use but still queued
    with pytest.raises(AssertionError):
        pool.check_integrity()


def test_hash_chain_properties() -> None:
    assert len(H1) == 16
    assert hash_block(None, [1, 2]) == H1
    assert hash_block(None, [1, 2], salt="a") != H1
    assert hash_block(None, [1, 2], salt="a") != hash_block(None, [1, 2], salt="b")
    assert hash_block(None, [1, 2], salt=1) != hash_block(None, [1, 2], salt="1")
    assert hash_block(H1, [1, 2]) != H1  # position (parent) matters
    assert hash_block(H2, [5, 6]) == H3
    assert hash_block(H1, [3, 5]) != H2
    assert list(iter_block_hashes([1, 2, 3, 4, 5, 6, 7], 2, 0, 3, None)) == [H1, H2, H3]
    assert list(iter_block_hashes([1, 2, 3, 4, 5, 6], 2, 1, 3, H1)) == [H2, H3]
    with pytest.raises(ValueError):
        list(iter_block_hashes([1, 2, 3], 2, 0, 2, None))  # block 1 not full
    with pytest.raises(TypeError):
        hash_block(None, [1], salt=object())


def test_hash_is_stable_across_processes() -> None:
    # prefix.py is loaded by path so the child skips the package __init__ (and torch).
    code = (
        "import importlib.util, sys;"
        "spec = importlib.util.spec_from_file_location('prefix', sys.argv[1]);"
        "mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod);"
        "print(mod.hash_block(None, [1, 2], salt=('lora', 'x', 3)).hex())"
    )
    outs = {
        subprocess.run(
            [sys.executable, "-c", code, prefix.__file__],
            env={"PYTHONHASHSEED": seed},
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        for seed in ("1", "2")
    }
    assert outs == {hash_block(None, [1, 2], salt=("lora", "x", 3)).hex()}


def test_kv_package_imports_no_torch() -> None:
    kv_dir = Path(prefix.__file__).parent
    for path in kv_dir.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            assert not any(n.split(".")[0] == "torch" for n in names), f"{path.name} imports torch"
