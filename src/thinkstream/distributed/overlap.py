"""Overlapping tensor parallelism's all-reduces with compute (TokenWeave, Gond et al.
2025): a step's packed tokens are split in two halves A and B, and each half's
all-reduce runs (gloo / NCCL async collectives) while the other half computes.

Per layer (``r(.)``: an async all-reduce, ``w(.)``: waiting for it)::

    attn(A) r(a_A) | w(m_B') attn(B) r(a_B) | w(a_A) mlp(A) r(m_A) | w(a_B) mlp(B) r(m_B) | w(m_A)

where ``m_B'`` is the previous layer's MLP output of B: every reduce but the last is
hidden behind the other half's work. The split is at the middle token; a sequence that
straddles it contributes its first tokens to A and the rest to B, whose attention then
reads A's keys of the same layer from the cache (A's attention wrote them just before),
as a later chunk of a chunked prefill would. Every rank splits the same ``StepBatch`` the
same way. Results equal the plain forward up to summation order (float32: ~1e-6).

Not combined with weight streaming (B's last reduce finishes after the next layer is
fetched) or with decode graphs.
"""

from __future__ import annotations

import torch
from torch import nn

from thinkstream.attention.metadata import SeqSlice
from thinkstream.distributed.comm import Comm
from thinkstream.worker.runner import StepBatch


def split_batch(batch: StepBatch) -> list[tuple[list[int], list[int], list[SeqSlice]]]:
    """(ids, positions, slices) of halves A and B: the first ``T // 2`` packed tokens and
    the rest (B is empty for a single token)."""
    half = len(batch.ids) // 2
    a, b, offset = [], [], 0
    for s in batch.slices:
        if offset + s.num_new <= half:
            a.append(s)
        elif offset >= half:
            b.append(s)
        else:
            k = half - offset  # this sequence's first k new tokens go to A
            vis = s.prefix_visible
            a.append(SeqSlice(s.block_table, s.num_computed, k, s.prefix,
                              None if vis is None else vis[:k]))
            b.append(SeqSlice(s.block_table, s.num_computed + k, s.num_new - k, s.prefix,
                              None if vis is None else vis[k:]))
        offset += s.num_new
    return [(batch.ids[:half], batch.positions[:half], a),
            (batch.ids[half:], batch.positions[half:], b)]


class _Half:
    """One half's residual stream and its pending reduce."""

    def __init__(self, x: torch.Tensor, ropes: list, metas: list) -> None:
        self.x, self.ropes, self.metas = x, ropes, metas
        self.partial: torch.Tensor | None = None
        self.work = None


def overlapped_forward(model: nn.Module, inputs: list[tuple[torch.Tensor, torch.Tensor, object]],
                       comm: Comm) -> torch.Tensor:
    """The model's forward over two halves ``(ids, positions, metadata)`` with their
    all-reduces overlapped; returns the hidden states (T, hidden) in packed order."""
    halves = []
    for ids, pos, meta in inputs:
        x = model.embed_tokens(ids)  # (T_h, hidden), all-reduced (vocabulary-parallel)
        ropes = model.rope_tables(pos, x.dtype)
        metas = meta.per_layer(model.rope_tables) or [meta] * len(ropes)
        halves.append(_Half(x, ropes, metas))
    A, B = halves
    comm.deferred = True  # row-parallel linears return partial sums; reduced here
    try:
        prev_post = None
        for i, layer in enumerate(model.layers):
            _start(comm, A, layer.attn(layer.attn_norm(A.x), A.ropes[i], A.metas[i]))
            if B.work is not None:  # the previous layer's MLP reduce of B
                _finish(comm, B, prev_post)
            _start(comm, B, layer.attn(layer.attn_norm(B.x), B.ropes[i], B.metas[i]))
            for h in (A, B):
                _finish(comm, h, layer.post_attn_norm)
                _start(comm, h, layer.mlp(layer.mlp_norm(h.x)))
            _finish(comm, A, layer.post_mlp_norm)
            prev_post = layer.post_mlp_norm
        _finish(comm, B, prev_post)
    finally:
        comm.deferred = False
    return model.norm(torch.cat([A.x, B.x]))


def _start(comm: Comm, h: _Half, partial: torch.Tensor) -> None:
    h.partial, h.work = partial, comm.all_reduce_async(partial)


def _finish(comm: Comm, h: _Half, post_norm: nn.Module | None) -> None:
    comm.wait(h.work)
    out = h.partial if post_norm is None else post_norm(h.partial)
    h.x, h.partial, h.work = h.x + out, None, None
