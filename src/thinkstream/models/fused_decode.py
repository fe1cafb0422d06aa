"""The decoder stack of a GGUF model as one native call for steps of a few rows.

At batch 1 the eager layers spend about a third of a step between the matmuls: some thirty
torch ops per layer (norms, RoPE, the cache write, casts, residuals), each a dispatch of a
few microseconds on vectors of 576 floats. llama.cpp runs the whole graph natively;
``FusedDecoder`` does the same for the steps where the GGUF kernels run anyway: the layers'
own GGUF blocks, norm weights and KV caches are described once to ``kernels/decoder.c``,
and a step of up to ``max_rows`` rows (decode batches, chunks, a verification of draft
tokens) is one ctypes call. The result is the eager layers' up to float32 summation order
(tests/unit/test_fused_decode.py).

Rows: with the kernels' GEMM (AVX2 / AVX-512 builds, ``kernels/gguf_gemm.h``) the linears
run on the kernel at any row count in both paths, and the stack saves the eager layers'
op dispatch on top: measured on Zen 4 (SmolLM2, 1 thread, CPU time) a batch-32 decode step
took 118 ms on the stack against 127 ms eager, a fresh 128-token prompt 344-348 ms against
351-372. So ``max_rows`` is unlimited there (the portable build: ``MAX_ROWS``, where the
dense copy takes over). Fresh prompts too, since the fused attention kernel's register-
blocked passes for many queries: 512 tokens took 1,313 ms on the stack against 1,416 eager,
2,048 tokens 6,430 against 7,404 (``bench/stack_rows.py``; before those passes the stack's
attention took 302 ms of a 512-token prompt, SDPA 243 ms). ``max_queries`` (queries of one
sequence in one attention group) stays as a knob for a build where that does not hold.

Every attention group of such a step runs on the fused attention kernel: a decode batch, a
chunk, a padded batch of chunks (speculative verification of several sequences, several
sessions' chunks), a fresh prompt over its own keys. Everything else keeps the eager
layers: shifted KV views, compiled or distributed runs, bfloat16 activations. The caches
may be float32 or bfloat16 (``EngineConfig.kv_cache_dtype``: the stack rounds what it
stores as the eager cache write does, and the kernel reads bfloat16 keys widened).
``LlamaForCausalLM.forward`` asks first; ``None`` means "not this step".
"""

from __future__ import annotations

import ctypes
import time

import torch
from torch import nn

from thinkstream.attention.metadata import (
    AttentionMetadata,
    Decode,
    Prefill,
    ShortBatch,
    ShortChunk,
)
from thinkstream.kernels import decoder as td
from thinkstream.kernels.attention import load_fq_attention
from thinkstream.kernels.gguf import ENTRY_OF_ACT
from thinkstream.models.gguf_linear import GGUFLinear, kernel_rows

_PROJECTIONS = (("attn", "qkv_proj", "qkv"), ("attn", "o_proj", "o"),
                ("mlp", "gate_up_proj", "gate_up"), ("mlp", "down_proj", "down"))


def _ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def _linear(mod: GGUFLinear) -> td.Linear:
    lin = td.Linear(nparts=len(mod._calls), k=mod.in_features, n=mod.out_features, bias=_ptr(mod.bias))
    for i, (qtype, blocks, row_bytes, rows, col) in enumerate(mod._calls):
        lin.parts[i] = td.Part(qtype, blocks.data_ptr(), row_bytes, rows, col)
    return lin


def _norm(mod: nn.Module | None) -> int | None:
    return None if mod is None else mod.weight.data_ptr()


class FusedDecoder:
    """The native stack over ``model.layers`` (built by ``build``; holds no tensors of its
    own beyond the descriptors, which point into the model's buffers)."""

    def __init__(self, model: nn.Module, lib: ctypes.CDLL, matmul: int, attention: int,
                 split_keys: tuple[int, int] = (0, 0)) -> None:
        cfg, layers = model.cfg, model.layers
        self.model, self.lib = model, lib
        probe = model.rope_tables(torch.zeros(1, dtype=torch.long), torch.float32)
        table_ids: dict[int, int] = {}
        rope_index = [table_ids.setdefault(id(t), len(table_ids)) for t in probe]
        if len(table_ids) > 2:
            raise ValueError("fused decoder: at most two RoPE tables")
        self._layers = (td.Layer * len(layers))()
        for i, layer in enumerate(layers):
            a = layer.attn
            self._layers[i] = td.Layer(
                attn_norm=_norm(layer.attn_norm), mlp_norm=_norm(layer.mlp_norm),
                post_attn_norm=_norm(layer.post_attn_norm), post_mlp_norm=_norm(layer.post_mlp_norm),
                q_norm=_norm(a.q_norm), k_norm=_norm(a.k_norm),
                rope=rope_index[i], sliding=int(a.sliding),
                **{name: _linear(getattr(getattr(layer, part), attr)) for part, attr, name in _PROJECTIONS})
        self._model = td.Model(
            hidden=cfg.hidden_size, heads=cfg.num_heads, kv_heads=cfg.num_kv_heads, head_dim=cfg.head_dim,
            inter=cfg.intermediate_size, gelu=int(layers[0].mlp.gelu), num_layers=len(layers),
            eps=cfg.rms_norm_eps, scale=cfg.scale, layers=self._layers, matmul=matmul, attention=attention,
            # fq_attention_keys / _merge: a lone sequence's long context split between threads
            attention_keys=split_keys[0] or None, attention_merge=split_keys[1] or None)
        # rows a step can take on the stack (speculative/decoder.py caps drafts by it), and
        # the queries per sequence of one attention group
        qkv = layers[0].attn.qkv_proj
        self.max_rows = kernel_rows(qkv.kernels, torch.float32, qkv.act)
        self.max_queries = self.max_rows
        # rows up to which each row's logits are bitwise a one-row step's (None: any): a
        # speculative verification stays within them, so its greedy output is exact
        self.exact_rows = qkv.kernels.exact_rows
        self._caches: tuple[int, ...] = ()  # the bound caches' key (_bind_caches)

    @classmethod
    def build(cls, model: nn.Module) -> FusedDecoder | None:
        """The fused stack for ``model`` (a CPU float32 model whose every decoder projection
        is a GGUFLinear, a head size divisible by 16), or None where it does not apply or a
        library cannot be loaded."""
        layers = getattr(model, "layers", None)
        if not layers or model.cfg.head_dim % 16:
            return None
        for layer in layers:
            mods = [getattr(getattr(layer, part), attr) for part, attr, _ in _PROJECTIONS]
            if not all(isinstance(m, GGUFLinear) and len(m._calls) <= 3 and m.act == mods[0].act
                       for m in mods):
                return None
            norms = [layer.attn_norm, layer.mlp_norm, layer.post_attn_norm, layer.post_mlp_norm,
                     layer.attn.q_norm, layer.attn.k_norm]
            if any(n is not None and (n.weight.dtype != torch.float32 or n.weight.device.type != "cpu")
                   for n in norms):
                return None
        lib, attention = td.load_decoder(), load_fq_attention()
        kernels = layers[0].attn.qkv_proj.kernels
        if lib is None or attention is None:
            return None
        # the kernel entry for the linears' activations (float32; int16 / int8: gguf-q16 / q8)
        entry = getattr(kernels.lib, ENTRY_OF_ACT[layers[0].attn.qkv_proj.act])
        address = ctypes.cast(entry, ctypes.c_void_p).value
        fq = attention.lib

        def at(name: str) -> int:
            return ctypes.cast(getattr(fq, name), ctypes.c_void_p).value or 0

        split = (at("fq_attention_keys"), at("fq_attention_merge")) if hasattr(fq, "fq_attention_keys") \
            else (0, 0)
        return cls(model, lib, address, at("fq_attention_part"), split)

    def time_parts(self, timers: ctypes.Array | None, cpu_clock: bool = False) -> None:
        """Add the seconds of the stack's matmuls and attention to ``timers[0]`` and
        ``timers[1]`` (a ctypes array of two doubles) from now on, on this process's CPU
        clock or the monotonic one; None stops (``bench profile``)."""
        self._model.timers = timers
        self._model.clock_id = time.CLOCK_PROCESS_CPUTIME_ID if cpu_clock else time.CLOCK_MONOTONIC

    def _bind_caches(self, kv_caches: list[tuple[torch.Tensor, torch.Tensor]]) -> bool:
        """Point the layers at the step's caches; False unless every cache is contiguous and
        all are float32 or all bfloat16 (``EngineConfig.kv_cache_dtype``: the stack rounds
        the keys and values it stores, and the attention kernel reads them widened)."""
        dtype = kv_caches[0][0].dtype
        key = (id(kv_caches), len(kv_caches), kv_caches[0][0].data_ptr(),
               kv_caches[-1][1].data_ptr(), dtype)
        if key == self._caches:  # the runner's list, allocated once
            return True
        if (len(kv_caches) != len(self._layers) or dtype not in (torch.float32, torch.bfloat16)
                or any(t.dtype != dtype or not t.is_contiguous() for kv in kv_caches for t in kv)):
            return False
        for layer, (k, v) in zip(self._layers, kv_caches, strict=True):
            layer.k_cache, layer.v_cache = k.data_ptr(), v.data_ptr()
        self._model.kv_bf16 = int(dtype == torch.bfloat16)
        self._caches = key
        return True

    def __call__(self, x: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata) -> torch.Tensor | None:
        """x (T, hidden) float32 embedded inputs, positions (T,) -> the last layer's output
        (T, hidden) (x itself, updated in place), or None when this step is not one it runs:
        more than ``max_rows`` rows or a group of more than ``max_queries`` queries per
        sequence, shifted keys, non-float32 tensors, or inside torch.compile.
        Raises RuntimeError if the native call fails."""
        t = x.shape[0]
        if (t == 0 or t > self.max_rows or x.dtype != torch.float32 or x.device.type != "cpu"
                or meta.shift_deltas is not None or torch.compiler.is_compiling()):
            return None
        keep: list[torch.Tensor] = []  # the tensors the C structures point into, alive for the call
        groups = (td.Group * len(meta.groups))()
        for i, g in enumerate(meta.groups):
            if (not _describe(g, t, len(meta.groups) == 1, meta.slot_mapping, groups[i], keep)
                    or groups[i].nq > self.max_queries):
                return None
        if not self._bind_caches(meta.kv_caches):
            return None
        x = x.contiguous()
        step = td.Step(t=t, ngroups=len(groups), groups=groups)
        tables = {id(c): (c, s) for c, s in self.model.rope_tables(positions, torch.float32)}
        for i, (c, s) in enumerate(tables.values()):
            c, s = c.contiguous(), s.contiguous()
            keep += [c, s]
            step.cos[i], step.sin[i] = c.data_ptr(), s.data_ptr()
        mapping = meta.slot_mapping.to(torch.int64).contiguous()
        step.slot_mapping = mapping.data_ptr()
        rc = self.lib.td_forward(ctypes.byref(self._model), ctypes.byref(step), x.data_ptr(),
                                 torch.get_num_threads())
        if rc:
            raise RuntimeError(f"fused decoder failed (code {rc})")
        return x


def _set_masks(out: td.Group, masks: list[torch.Tensor | None], b_dim: int | None, q_dim: int) -> bool:
    """The group's full and sliding masks ((..., L) bool, unit stride on L) with the strides
    of their sequence (``b_dim``; None: one sequence) and query dims."""
    for j, m in enumerate(masks):
        if m is None:
            continue
        if m.dtype != torch.bool or m.stride(-1) != 1:
            return False
        out.mask[j] = m.data_ptr()
        out.mask_b[j] = 0 if b_dim is None else m.stride(b_dim)
        out.mask_q[j] = m.stride(q_dim)
    return True


def _slots(out: td.Group, slots: torch.Tensor) -> bool:
    if slots.dtype != torch.int64 or slots.stride(-1) != 1:
        return False
    out.slots, out.length = slots.data_ptr(), slots.shape[-1]
    out.slot_b_stride = slots.stride(0) if slots.dim() == 2 else 0
    return True


def _describe(g, t: int, only: bool, slot_mapping: torch.Tensor, out: td.Group,
              keep: list[torch.Tensor]) -> bool:
    """Fill ``out`` for the attention group ``g`` (``metadata``'s kinds); False for a group
    the stack does not take (shifted keys). ``only``: ``g`` is the step's one group."""
    if getattr(g, "key_shift", None) is not None:
        return False
    if isinstance(g, Decode):  # (B, 1, 1, L) masks, one query per row
        out.b, out.nq = g.key_slots.shape[0], 1
        if not only and g.rows is not None:
            index = g.rows.to(torch.int64).contiguous()
            keep.append(index)
            out.index = index.data_ptr()
        masks = [g.mask, g.sliding_mask]
        return _slots(out, g.key_slots) and _set_masks(out, masks, 0, 2)
    if isinstance(g, ShortChunk):  # one chunk: (Q, L) masks
        out.b, out.nq, out.start = 1, g.stop - g.start, g.start
        return _slots(out, g.key_slots) and _set_masks(out, [g.mask, g.sliding_mask], None, 0)
    if isinstance(g, ShortBatch):  # padded chunks: (B, Qmax, L) masks
        out.b, out.nq = g.rows.shape
        index = g.rows.reshape(-1).to(torch.int64).contiguous()
        real = torch.zeros(index.numel(), dtype=torch.bool)
        real[g.take] = True
        keep += [index, real]
        out.index, out.real = index.data_ptr(), real.data_ptr()
        return _slots(out, g.key_slots) and _set_masks(out, [g.mask, g.sliding_mask], 0, 1)
    if isinstance(g, Prefill):  # (1, 1, Q, L) masks; a fresh prompt attends to its own keys
        q = g.stop - g.start
        out.b, out.nq, out.start = 1, q, g.start
        if g.key_slots is None:
            slots = slot_mapping[g.start : g.stop].to(torch.int64).contiguous()
            mask = g.mask if g.mask is not None else torch.ones(q, q, dtype=torch.bool).tril()
            keep += [slots, mask]
        else:
            slots, mask = g.key_slots, g.mask
        masks = [mask.reshape(q, -1), None if g.sliding_mask is None else g.sliding_mask.reshape(q, -1)]
        return _slots(out, slots) and _set_masks(out, masks, None, 0)
    return False
