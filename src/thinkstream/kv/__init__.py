"""Paged KV cache bookkeeping: the block pool, prefix hashing, per-sequence tables.

Pure Python, no torch: the device-side KV tensors live elsewhere and are indexed
by the block ids handed out here.
"""

from thinkstream.kv.block_pool import BlockPool, NoFreeBlocksError
from thinkstream.kv.manager import CopyPair, KVCacheManager
from thinkstream.kv.prefix import BlockHash, hash_block, iter_block_hashes

__all__ = [
    "BlockHash",
    "BlockPool",
    "CopyPair",
    "KVCacheManager",
    "NoFreeBlocksError",
    "hash_block",
    "iter_block_hashes",
]
