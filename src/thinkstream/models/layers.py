"""Layers shared by every architecture: RMSNorm, rotary embeddings, attention over the
paged cache, gated MLP and the decoder block.

Weights are built on the meta device and filled by ``load_state_dict(..., assign=True)``;
q/k/v and gate/up projections are fused at load time (see ``fuse_canonical``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from thinkstream.attention.metadata import AttentionMetadata
from thinkstream.attention.paged import paged_attention
from thinkstream.config import ModelConfig, RopeScaling


class RMSNorm(nn.Module):
    """y = x / rms(x) * w, computed in float32 (w is multiplicative; Gemma's 1+w is folded in)."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.empty(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float32 and self.weight.dtype == torch.float32:
            return F.rms_norm(x, self.weight.shape, self.weight, self.eps)  # one fused kernel
        return F.rms_norm(x.float(), self.weight.shape, self.weight.float(), self.eps).to(x.dtype)


def rope_inv_freq(head_dim: int, theta: float, scaling: RopeScaling | None) -> torch.Tensor:
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
    if scaling is None:
        return inv_freq
    if scaling.kind == "linear":
        return inv_freq / scaling.factor
    # llama3: long wavelengths scaled by factor, short kept, smooth blend in between.
    old_len = scaling.original_max_position_embeddings
    low_wavelen = old_len / scaling.low_freq_factor
    high_wavelen = old_len / scaling.high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    smooth = (old_len / wavelen - scaling.low_freq_factor) / (
        scaling.high_freq_factor - scaling.low_freq_factor
    )
    blended = (1 - smooth) * inv_freq / scaling.factor + smooth * inv_freq
    out = torch.where(wavelen > low_wavelen, inv_freq / scaling.factor, blended)
    return torch.where(wavelen < high_wavelen, inv_freq, out)


def rope_cos_sin(
    positions: torch.Tensor, inv_freq: torch.Tensor, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin for explicit positions: each (T, D/2)."""
    angles = positions.to(torch.float32)[:, None] * inv_freq.to(positions.device, torch.float32)
    return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the two halves of each head: x (T, H, D), cos/sin (T, D/2)."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    c, s = cos[:, None, :], sin[:, None, :]
    return torch.cat((x1 * c - x2 * s, x2 * c + x1 * s), dim=-1)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int) -> None:
        super().__init__()
        self.layer = layer
        self.num_heads = cfg.num_heads
        self.num_kv_heads = cfg.num_kv_heads
        self.head_dim = cfg.head_dim
        self.scale = cfg.scale
        self.sliding = cfg.layer_is_sliding(layer)
        q_size, kv_size = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
        self.qkv_proj = nn.Linear(cfg.hidden_size, q_size + 2 * kv_size, bias=cfg.attention_bias)
        self.o_proj = nn.Linear(q_size, cfg.hidden_size, bias=False)
        self.q_norm = RMSNorm(cfg.head_dim, cfg.rms_norm_eps) if cfg.qk_norm else None
        self.k_norm = RMSNorm(cfg.head_dim, cfg.rms_norm_eps) if cfg.qk_norm else None

    def forward(
        self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], meta: AttentionMetadata
    ) -> torch.Tensor:
        t = x.shape[0]
        q_size, kv_size = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        qk, v = self.qkv_proj(x).split([q_size + kv_size, kv_size], dim=-1)
        qk = qk.view(t, self.num_heads + self.num_kv_heads, self.head_dim)  # (T, H + KVH, D)
        v = v.view(t, self.num_kv_heads, self.head_dim)  # (T, KVH, D)
        if self.q_norm is not None:
            qk = torch.cat([self.q_norm(qk[:, : self.num_heads]), self.k_norm(qk[:, self.num_heads :])], 1)
        qk = apply_rope(qk, *rope)  # q and k rotated in one pass
        q, k = qk[:, : self.num_heads], qk[:, self.num_heads :]
        o = paged_attention(q, k, v, self.layer, meta, self.scale, self.sliding)  # (T, H, D)
        return self.o_proj(o.reshape(t, q_size))


class GatedMLP(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.inter = cfg.intermediate_size
        self.gate_up_proj = nn.Linear(cfg.hidden_size, 2 * cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)
        self.gelu = cfg.hidden_act == "gelu_tanh"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up_proj(x).split(self.inter, dim=-1)
        act = F.gelu(gate, approximate="tanh") if self.gelu else F.silu(gate)
        return self.down_proj(act * up)


class DecoderLayer(nn.Module):
    """Pre-norm block; with ``sandwich_norms`` (Gemma 3) the attention and MLP outputs are
    normalised again before joining the residual."""

    def __init__(self, cfg: ModelConfig, layer: int) -> None:
        super().__init__()
        eps = cfg.rms_norm_eps
        self.attn_norm = RMSNorm(cfg.hidden_size, eps)
        self.attn = Attention(cfg, layer)
        self.mlp_norm = RMSNorm(cfg.hidden_size, eps)
        self.mlp = GatedMLP(cfg)
        self.post_attn_norm = RMSNorm(cfg.hidden_size, eps) if cfg.sandwich_norms else None
        self.post_mlp_norm = RMSNorm(cfg.hidden_size, eps) if cfg.sandwich_norms else None

    def forward(
        self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], meta: AttentionMetadata
    ) -> torch.Tensor:
        h = self.attn(self.attn_norm(x), rope, meta)
        if self.post_attn_norm is not None:
            h = self.post_attn_norm(h)
        x = x + h
        h = self.mlp(self.mlp_norm(x))
        if self.post_mlp_norm is not None:
            h = self.post_mlp_norm(h)
        return x + h


def fuse_canonical(tensors: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """Canonical checkpoint names -> this package's module names (q/k/v and gate/up fused)."""
    out = dict(tensors)
    for i in range(cfg.num_layers):
        a, m = f"layers.{i}.attn.", f"layers.{i}.mlp."
        for kind in ("weight", "bias"):
            parts = [a + p + "_proj." + kind for p in "qkv"]
            if parts[0] in out:
                out[a + "qkv_proj." + kind] = torch.cat([out.pop(p) for p in parts], dim=0)
        if m + "gate_proj.weight" not in out:  # a subset without this layer (streaming)
            continue
        out[m + "gate_up_proj.weight"] = torch.cat(
            [out.pop(m + "gate_proj.weight"), out.pop(m + "up_proj.weight")], dim=0
        )
    return out
