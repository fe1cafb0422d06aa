"""Compiled decode: a pure decode step runs as a graph instead of op by op.

A step is *pure decode* when every scheduled sequence computes one token and the
attention metadata is a single ``Decode`` group on the plain path (no cascade over a shared
prefix: that path stays eager, its split point is a Python int). Such a step is a fixed
function of a few tensors, ``decode_logits``:

    token ids (B,), positions (B,), slots of the new keys (B,),
    context slots (B, L), masks (B, 1, 1, L)  ->  logits (B, V)   (KV caches written in place)

computed by the model's own layers. Two executors, chosen by device:

- ``CompiledDecode`` (CPU): ``torch.compile`` (inductor) of ``decode_logits``. B and L are
  dynamic dimensions, so a few graphs serve every batch and context length without
  padding: one per range of B that the model's own row-count switches separate (B = 1,
  2-7, 8, 9+ with int4 linears and the fast head). Each graph compiles once, on first use
  (30-60 s at SmolLM2-135M on one core; inductor caches it on disk for later processes).
  The weights are graph inputs, not constants, so engines of the same shapes share graphs.
- ``GraphDecode`` (CUDA): the step padded to a bucket (B up to the next of
  ``batch_buckets``, L up to the next power of two), captured once per bucket as a CUDA
  graph over static input buffers and replayed; no kernel launches from Python per step.

Padding (``GraphDecode``):

    rows:        | real sequences 0 .. B-1          | padded rows B .. Bp-1             |
    token, pos:  | real                             | 0, 0                              |
    new key in:  | the sequence's slot              | the scratch slot                  |
    context:     | own slots, then scratch (masked) | the scratch slot only (col 0)     |

The scratch slot is one slot past the block pool (``num_slots``): no block owns it and no
real row attends to it, and rows never mix in the model, so padding leaves every real row's
result and every real KV slot as the eager step would (up to the rounding of matmul kernels
picked for another row count).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from thinkstream.attention.metadata import AttentionConfig, AttentionMetadata, Decode
from thinkstream.models.llama import LlamaForCausalLM

KVCaches = list[tuple[torch.Tensor, torch.Tensor]]
# Decode computes alike in every precision mode; passed explicitly (a constant the graph
# guards on) because dynamo cannot build a dataclass default inside the graph.
DECODE_CONFIG = AttentionConfig()


def decode_logits(
    model: LlamaForCausalLM, input_ids: torch.Tensor, positions: torch.Tensor,
    slot_mapping: torch.Tensor, key_slots: torch.Tensor, mask: torch.Tensor,
    sliding_mask: torch.Tensor | None, kv_caches: KVCaches,
) -> torch.Tensor:
    """One pure decode step: (B,) tokens -> float32 logits (B, V); writes the new keys."""
    group = Decode(key_slots, mask, sliding_mask)
    meta = AttentionMetadata(slot_mapping, [group], kv_caches, model.cfg.sliding_window,
                             DECODE_CONFIG)
    return model.compute_logits(model(input_ids, positions, meta))


def plain_decode(meta: AttentionMetadata) -> Decode | None:
    """The step's decode group if the step is pure decode on the plain path, else None."""
    if len(meta.groups) != 1:
        return None
    g = meta.groups[0]
    if not isinstance(g, Decode) or g.shared or g.key_shift is not None:
        return None
    return g


class CompiledDecode:
    """``decode_logits`` compiled by inductor with dynamic batch and context dimensions."""

    def __init__(self, model: LlamaForCausalLM) -> None:
        self.model = model

        def step(*args: torch.Tensor | None | KVCaches) -> torch.Tensor:
            return decode_logits(model, *args)

        # emulate_precision_casts: fused kernels round bfloat16 intermediates where eager does.
        self._step = torch.compile(step, dynamic=False, fullgraph=True,
                                   options={"emulate_precision_casts": True})

    def __call__(
        self, input_ids: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata
    ) -> torch.Tensor | None:
        g = plain_decode(meta)
        if g is None:
            return None
        batched = [input_ids, positions, meta.slot_mapping, g.key_slots, g.mask, g.sliding_mask]
        for t in batched:
            if t is None:
                continue
            if t.shape[0] > 1:  # B = 1, the latency case, keeps its own static graph
                torch._dynamo.maybe_mark_dynamic(t, 0)
            if t.dim() > 1:
                torch._dynamo.maybe_mark_dynamic(t, t.dim() - 1)  # context length L
        return self._step(*batched, meta.kv_caches)


def batch_buckets(max_batch: int) -> tuple[int, ...]:
    """Padded batch sizes: 1, 2, 4, 8, then every multiple of 8, up to ``max_batch``."""
    sizes = [b for b in (1, 2, 4) if b < max_batch] + list(range(8, max_batch, 8))
    return (*sizes, max_batch)


def context_bucket(length: int, minimum: int = 64) -> int:
    """Padded context length: the next power of two, at least ``minimum``."""
    return max(minimum, 1 << (length - 1).bit_length())


class _Buffers:
    """Static inputs and output of one bucket (Bp rows, Lp context slots)."""

    def __init__(self, bp: int, lp: int, sliding: bool, device: torch.device) -> None:
        long = dict(dtype=torch.long, device=device)
        self.input_ids = torch.zeros(bp, **long)
        self.positions = torch.zeros(bp, **long)
        self.slot_mapping = torch.zeros(bp, **long)
        self.key_slots = torch.zeros(bp, lp, **long)
        self.mask = torch.zeros(bp, 1, 1, lp, dtype=torch.bool, device=device)
        self.sliding_mask = torch.zeros_like(self.mask) if sliding else None
        self.logits: torch.Tensor | None = None
        self.graph: torch.cuda.CUDAGraph | None = None

    def load(self, input_ids: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata,
             g: Decode, scratch: int) -> None:
        """Copy one step's inputs in, padding rows and context as the module docstring draws."""
        b, n = g.key_slots.shape
        self.input_ids.zero_()[:b].copy_(input_ids)
        self.positions.zero_()[:b].copy_(positions)
        self.slot_mapping.fill_(scratch)[:b].copy_(meta.slot_mapping)
        self.key_slots.fill_(scratch)[:b, :n].copy_(g.key_slots)
        for buf, src in ((self.mask, g.mask), (self.sliding_mask, g.sliding_mask)):
            if buf is None:
                continue
            buf.zero_()[:b, ..., :n].copy_(src)
            buf[b:, ..., 0] = True  # a padded row attends to the scratch key only

    def args(self) -> tuple:
        return (self.input_ids, self.positions, self.slot_mapping, self.key_slots, self.mask,
                self.sliding_mask)


class GraphDecode:
    """Pure decode steps padded to buckets; on CUDA each bucket is captured once as a CUDA
    graph and replayed. With ``capture=False`` the padded step runs eagerly (what the graph
    computes, runnable on CPU: the tests use it to check the padding)."""

    def __init__(
        self, model: LlamaForCausalLM, kv_caches: KVCaches, scratch_slot: int,
        batch_sizes: Sequence[int], device: torch.device, capture: bool = True,
    ) -> None:
        if kv_caches and kv_caches[0][0].shape[0] <= scratch_slot:
            raise ValueError("the KV caches need the scratch slot (one slot past the pool)")
        self.model = model
        self.kv_caches = kv_caches
        self.scratch = scratch_slot
        self.batch_sizes = tuple(sorted(batch_sizes))
        self.device = device
        self.capture = capture
        self.buckets: dict[tuple[int, int], _Buffers] = {}
        self._pool = None  # one memory pool shared by every captured graph

    def __call__(
        self, input_ids: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata
    ) -> torch.Tensor | None:
        g = plain_decode(meta)
        if g is None:
            return None
        b, n = g.key_slots.shape
        bp = next((s for s in self.batch_sizes if s >= b), None)
        if bp is None:
            return None
        key = (bp, context_bucket(n))
        buf = self.buckets.get(key)
        if buf is None:
            buf = self.buckets[key] = _Buffers(*key, g.sliding_mask is not None, self.device)
        buf.load(input_ids, positions, meta, g, self.scratch)
        if not self.capture:
            return decode_logits(self.model, *buf.args(), self.kv_caches)[:b]
        if buf.graph is None:
            self._capture(buf)
        buf.graph.replay()
        return buf.logits[:b].clone()  # the buffer is shared with later replays

    def _capture(self, buf: _Buffers) -> None:
        """Warm up on a side stream (lazy initialisations), then capture one step. Both
        runs compute this step's own inputs, so the KV they write is the step's own."""
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):
            for _ in range(2):
                decode_logits(self.model, *buf.args(), self.kv_caches)
        torch.cuda.current_stream(self.device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool):
            buf.logits = decode_logits(self.model, *buf.args(), self.kv_caches)
        self._pool = graph.pool()
        buf.graph = graph
