"""How a model splits over tensor-parallel ranks (Megatron-LM, Shoeybi et al. 2019), as
pure slicing of the canonical weight tensors.

Each rank holds:

- a contiguous run of KV heads and the query heads of their groups (GQA groups never
  split across ranks while there are at least as many KV heads as ranks; with fewer, each
  KV head is replicated on ``world / num_kv_heads`` ranks and its query heads split
  among them). Uneven counts are allowed (SmolLM2: 3 KV groups of 3 heads on 2 ranks ->
  6 + 3 query heads);
- a contiguous slice of the MLP's intermediate features (gate/up rows, down columns);
- a contiguous slice of the vocabulary (embedding rows, LM-head rows).

q/k/v and gate/up are column-parallel (output rows sliced), o_proj and down are
row-parallel (input columns sliced; their partial outputs are summed by an all-reduce).
Every rank then builds an ordinary model from its slice with a *local* ``ModelConfig``
(its head and feature counts), so the model code is unchanged (``distributed.layers``
adds the all-reduces). Norms, RoPE and biases of row-parallel layers are replicated.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from thinkstream.config import ModelConfig


@dataclass(frozen=True)
class RankShard:
    """What one rank holds: ranges are [start, stop) in global indices."""

    rank: int
    world: int
    q_heads: tuple[int, int]
    kv_heads: tuple[int, int]
    inter: tuple[int, int]
    vocab: tuple[int, int]
    vocab_padded: int  # the largest rank's vocabulary slice (all-gathers need equal sizes)


def _split(n: int, parts: int) -> list[tuple[int, int]]:
    """n items into ``parts`` contiguous ranges, the first ``n % parts`` one longer."""
    base, extra = divmod(n, parts)
    out, start = [], 0
    for i in range(parts):
        stop = start + base + (i < extra)
        out.append((start, stop))
        start = stop
    return out


def plan_shards(cfg: ModelConfig, world: int) -> list[RankShard]:
    """One ``RankShard`` per rank. Raises ``ValueError`` when the model cannot split
    ``world`` ways (fewer query heads than ranks, or KV heads that neither cover the
    ranks nor divide them)."""
    if world < 1:
        raise ValueError("tensor_parallel_size must be >= 1")
    h, kvh = cfg.num_heads, cfg.num_kv_heads
    group = h // kvh  # query heads per KV head
    if h < world:
        raise ValueError(f"tensor_parallel_size {world} exceeds the model's {h} attention heads")
    if kvh >= world:
        kv = _split(kvh, world)
        q = [(a * group, b * group) for a, b in kv]
    else:
        if world % kvh:
            raise ValueError(f"tensor_parallel_size {world} must divide or be at most the "
                             f"model's {kvh} KV heads")
        per = world // kvh  # ranks sharing one replicated KV head
        if group < per:
            raise ValueError(f"tensor_parallel_size {world}: {group} query heads per KV head "
                             f"cannot split over {per} ranks")
        kv, q = [], []
        for r in range(world):
            k = r // per
            a, b = _split(group, per)[r % per]
            kv.append((k, k + 1))
            q.append((k * group + a, k * group + b))
    inter, vocab = _split(cfg.intermediate_size, world), _split(cfg.vocab_size, world)
    padded = max(b - a for a, b in vocab)
    return [RankShard(r, world, q[r], kv[r], inter[r], vocab[r], padded) for r in range(world)]


def local_config(cfg: ModelConfig, shard: RankShard) -> ModelConfig:
    """The ``ModelConfig`` of the rank's slice (its heads, features and vocabulary)."""
    return dataclasses.replace(
        cfg, num_heads=shard.q_heads[1] - shard.q_heads[0],
        num_kv_heads=shard.kv_heads[1] - shard.kv_heads[0],
        intermediate_size=shard.inter[1] - shard.inter[0],
        vocab_size=shard.vocab[1] - shard.vocab[0],
    )


def shard_tensors(
    tensors: dict[str, torch.Tensor], cfg: ModelConfig, shard: RankShard
) -> dict[str, torch.Tensor]:
    """The rank's slices of canonical tensors (views where possible; names unchanged).
    Tensors it does not know (norms) are shared whole. Works on any subset of names, so a
    weight streamer can shard one layer at a time."""
    d = cfg.head_dim
    rows = {
        "q_proj": (shard.q_heads[0] * d, shard.q_heads[1] * d),
        "k_proj": (shard.kv_heads[0] * d, shard.kv_heads[1] * d),
        "v_proj": (shard.kv_heads[0] * d, shard.kv_heads[1] * d),
        "gate_proj": shard.inter,
        "up_proj": shard.inter,
    }
    cols = {"o_proj": rows["q_proj"], "down_proj": shard.inter}
    out: dict[str, torch.Tensor] = {}
    for name, t in tensors.items():
        parts = name.split(".")
        proj = parts[-2] if len(parts) >= 2 else ""
        if name in ("embed.weight", "lm_head.weight"):
            out[name] = t[shard.vocab[0] : shard.vocab[1]]
        elif proj in rows:
            a, b = rows[proj]
            out[name] = t[a:b]
        elif proj in cols and parts[-1] == "weight":
            a, b = cols[proj]
            out[name] = t[:, a:b].contiguous()
        else:
            out[name] = t
    return out
