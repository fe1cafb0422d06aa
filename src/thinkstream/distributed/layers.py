"""Tensor-parallel wrappers put around an ordinary model built from one rank's slice
(``distributed.plan``): the model code stays unchanged, whatever its linears are
(``nn.Linear``, a quantized linear) because only their outputs are combined.

- ``RowParallel``: o_proj and down_proj see a slice of their input features; their
  partial outputs (T, hidden) are summed over the ranks (one all-reduce each, two per
  layer, as in Megatron-LM).
- ``VocabParallelEmbedding``: each rank looks up the ids in its vocabulary slice (zeros
  elsewhere); the all-reduce sums them into the full embedding.
- ``VocabParallelHead``: each rank computes the logits of its vocabulary slice; an
  all-gather joins them (N, V) on every rank.

Sums are exact for the embedding (one non-zero term) and differ from one matmul's
summation order in the last bits for the row-parallel layers (float32: ~1e-6 relative).
"""

from __future__ import annotations

import torch
from torch import nn

from thinkstream.distributed.comm import Comm
from thinkstream.distributed.plan import RankShard


class RowParallel(nn.Module):
    def __init__(self, inner: nn.Module, comm: Comm) -> None:
        super().__init__()
        self.inner = inner
        self.comm = comm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(T, in / world) -> (T, out), summed over the ranks (this rank's partial sum
        while ``comm.deferred``: ``distributed.overlap`` reduces it asynchronously)."""
        y = self.inner(x)
        return y if self.comm.deferred else self.comm.all_reduce(y)


class VocabParallelEmbedding(nn.Module):
    def __init__(self, inner: nn.Embedding, shard: RankShard, comm: Comm) -> None:
        super().__init__()
        self.inner = inner
        self.start, self.stop = shard.vocab
        self.comm = comm

    @property
    def weight(self) -> torch.Tensor:
        return self.inner.weight

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """(T,) global ids -> (T, hidden): this rank's rows, summed over the ranks."""
        mine = (ids >= self.start) & (ids < self.stop)
        x = self.inner(torch.where(mine, ids - self.start, 0))
        x = x * mine[:, None].to(x.dtype)
        return self.comm.all_reduce(x)


class VocabParallelHead(nn.Module):
    def __init__(self, inner: nn.Module, shards: list[RankShard], comm: Comm) -> None:
        super().__init__()
        self.inner = inner
        self.padded = shards[0].vocab_padded
        self.sizes = [s.vocab[1] - s.vocab[0] for s in shards]
        self.comm = comm

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """(N, hidden) -> (N, V) float32, the slices of all ranks joined."""
        return self.comm.all_gather_last(self.inner(hidden), self.padded, self.sizes)


def parallelize_layer(layer: nn.Module, comm: Comm) -> None:
    """Sum the partial outputs of a decoder layer's row-parallel linears over the ranks."""
    layer.attn.o_proj = RowParallel(layer.attn.o_proj, comm)
    layer.mlp.down_proj = RowParallel(layer.mlp.down_proj, comm)


def parallelize(model: nn.Module, shards: list[RankShard], rank: int, comm: Comm,
                layers: bool = True) -> nn.Module:
    """Wrap the embedding, the head and (``layers``; a weight streamer wraps each layer
    as it loads) the row-parallel linears of a model built from rank ``rank``'s slice;
    returns the model (changed in place)."""
    if layers:
        for layer in model.layers:
            parallelize_layer(layer, comm)
    model.embed = VocabParallelEmbedding(model.embed, shards[rank], comm)
    model.lm_head = VocabParallelHead(model.lm_head, shards, comm)
    return model
