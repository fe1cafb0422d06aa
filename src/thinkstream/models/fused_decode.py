"""The decoder stack of a GGUF model as one native call for steps of a few rows.

At batch 1 the eager layers spend about a third of a step between the matmuls: some thirty
torch ops per layer (norms, RoPE, the cache write, casts, residuals), each a dispatch of a
few microseconds on vectors of 576 floats. llama.cpp runs the whole graph natively;
``FusedDecoder`` does the same for the steps where the GGUF kernels run anyway: the layers'
own GGUF blocks, norm weights and KV caches are described once to ``kernels/decoder.c``,
and a step of up to ``MAX_ROWS`` rows (decode of a few sequences, one short chunk such as
a session's question or a verification of draft tokens) is one ctypes call. The result is
the eager layers' up to float32 summation order (tests/unit/test_fused_decode.py).

Everything else keeps the eager layers: more rows (the dense path), several attention
groups in one step, shifted KV views, compiled or distributed runs, bfloat16 activations
or caches. ``LlamaForCausalLM.forward`` asks first; ``None`` means "not this step".
"""

from __future__ import annotations

import ctypes
import time

import torch
from torch import nn

from thinkstream.attention.metadata import AttentionMetadata, Decode, ShortChunk
from thinkstream.kernels import decoder as td
from thinkstream.kernels.attention import load_fq_attention
from thinkstream.models.gguf_linear import MAX_ROWS, GGUFLinear

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

    def __init__(self, model: nn.Module, lib: ctypes.CDLL, matmul: int, attention: int) -> None:
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
            eps=cfg.rms_norm_eps, scale=cfg.scale, layers=self._layers, matmul=matmul, attention=attention)
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
            if not all(isinstance(m, GGUFLinear) and len(m._calls) <= 3 for m in mods):
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
        address = ctypes.cast(kernels.lib.gguf_matmul, ctypes.c_void_p).value
        fq_address = ctypes.cast(attention.lib.fq_attention, ctypes.c_void_p).value
        return cls(model, lib, address, fq_address)

    def time_parts(self, timers: ctypes.Array | None, cpu_clock: bool = False) -> None:
        """Add the seconds of the stack's matmuls and attention to ``timers[0]`` and
        ``timers[1]`` (a ctypes array of two doubles) from now on, on this process's CPU
        clock or the monotonic one; None stops (``bench profile``)."""
        self._model.timers = timers
        self._model.clock_id = time.CLOCK_PROCESS_CPUTIME_ID if cpu_clock else time.CLOCK_MONOTONIC

    def _bind_caches(self, kv_caches: list[tuple[torch.Tensor, torch.Tensor]]) -> bool:
        """Point the layers at the step's caches; False if a cache is not float32 contiguous."""
        key = (id(kv_caches), len(kv_caches), kv_caches[0][0].data_ptr(), kv_caches[-1][1].data_ptr())
        if key == self._caches:  # the runner's list, allocated once
            return True
        if len(kv_caches) != len(self._layers) or any(
                t.dtype != torch.float32 or not t.is_contiguous() for kv in kv_caches for t in kv):
            return False
        for layer, (k, v) in zip(self._layers, kv_caches, strict=True):
            layer.k_cache, layer.v_cache = k.data_ptr(), v.data_ptr()
        self._caches = key
        return True

    def __call__(self, x: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata) -> torch.Tensor | None:
        """x (T, hidden) float32 embedded inputs, positions (T,) -> the last layer's output
        (T, hidden) (x itself, updated in place), or None when this step is not one it runs:
        more than MAX_ROWS rows, not one Decode / ShortChunk group over the whole step,
        shifted keys, non-float32 tensors, or inside torch.compile. Raises RuntimeError if
        the native call fails."""
        t = x.shape[0]
        if (t == 0 or t > MAX_ROWS or x.dtype != torch.float32 or x.device.type != "cpu"
                or meta.shift_deltas is not None or len(meta.groups) != 1 or torch.compiler.is_compiling()):
            return None
        g = meta.groups[0]
        step = td.Step(t=t)
        if isinstance(g, Decode) and g.key_shift is None:  # the one group: its rows are 0..t-1
            step.b, step.nq = t, 1
            slots, masks = g.key_slots, [g.mask, g.sliding_mask]
            step.slot_b_stride = slots.stride(0)
            step.mask_b[:] = [0 if m is None else m.stride(0) for m in masks]
        elif isinstance(g, ShortChunk) and g.start == 0 and g.stop == t and g.key_shift is None:
            step.b, step.nq = 1, t
            slots, masks = g.key_slots, [g.mask, g.sliding_mask]
            step.mask_q[:] = [0 if m is None else m.stride(0) for m in masks]
        else:
            return None
        if (slots.dtype != torch.int64 or slots.stride(-1) != 1
                or any(m is not None and (m.dtype != torch.bool or m.stride(-1) != 1) for m in masks)
                or not self._bind_caches(meta.kv_caches)):
            return None
        x = x.contiguous()
        tables = {id(c): (c, s) for c, s in self.model.rope_tables(positions, torch.float32)}
        tables = [(c.contiguous(), s.contiguous()) for c, s in tables.values()]
        for i, (c, s) in enumerate(tables):
            step.cos[i], step.sin[i] = c.data_ptr(), s.data_ptr()
        mapping = meta.slot_mapping.to(torch.int64).contiguous()
        step.slot_mapping, step.slots, step.length = mapping.data_ptr(), slots.data_ptr(), slots.shape[-1]
        step.mask[:] = [_ptr(m) for m in masks]
        rc = self.lib.td_forward(ctypes.byref(self._model), ctypes.byref(step), x.data_ptr(),
                                 torch.get_num_threads())
        if rc:
            raise RuntimeError(f"fused decoder failed (code {rc})")
        return x
