"""Llama family: Llama 2/3 (with rope scaling), SmolLM2, Qwen2/2.5 (qkv bias) and Qwen3
(q/k norm). One decoder stack; the architectures differ only in ``ModelConfig`` flags."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from thinkstream.attention.metadata import AttentionMetadata
from thinkstream.config import ModelConfig
from thinkstream.models.layers import DecoderLayer, RMSNorm, rope_cos_sin, rope_inv_freq


class LlamaForCausalLM(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        # an explicit (meta) weight: a default-initialized one would run normal_, whose meta
        # kernel imports torch._dynamo (~2 s on the first model a process builds)
        self.embed = nn.Embedding(cfg.vocab_size, cfg.hidden_size,
                                  _weight=torch.empty(cfg.vocab_size, cfg.hidden_size))
        self.layers = nn.ModuleList(DecoderLayer(cfg, i) for i in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.lm_head: nn.Module | None = None  # an LMHead, set by build_model (models/head.py)
        self.inv_freq = torch.empty(0)  # set by init_rope once the model leaves the meta device
        # the decoder stack as one native call for steps of a few rows (GGUF models on CPU:
        # models/fused_decode.py), set by build_model; None: eager layers only
        self.fused: Callable[..., torch.Tensor | None] | None = None

    def init_rope(self, device: torch.device | str) -> None:
        cfg = self.cfg
        self.inv_freq = rope_inv_freq(cfg.head_dim, cfg.rope_theta, cfg.rope_scaling).to(device)

    def embed_tokens(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.embed(input_ids)

    def rope_tables(
        self, positions: torch.Tensor, dtype: torch.dtype
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """cos/sin per layer (computed once per distinct RoPE base, shared by the layers)."""
        table = rope_cos_sin(positions, self.inv_freq, dtype)
        return [table] * self.cfg.num_layers

    def forward(
        self, input_ids: torch.Tensor, positions: torch.Tensor, attn_metadata: AttentionMetadata
    ) -> torch.Tensor:
        """input_ids, positions: (T,) packed tokens of the step -> hidden states (T, hidden)."""
        x = self.embed_tokens(input_ids)  # (T, hidden)
        if self.fused is not None and (out := self.fused(x, positions, attn_metadata)) is not None:
            return self.norm(out)
        ropes = self.rope_tables(positions, x.dtype)
        metas = attn_metadata.per_layer(self.rope_tables) or [attn_metadata] * len(ropes)
        for layer, rope, meta in zip(self.layers, ropes, metas, strict=True):  # meta: shifted views
            x = layer(x, rope, meta)
        return self.norm(x)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """(N, hidden) -> float32 logits (N, vocab)."""
        logits = self.lm_head(hidden)  # float32 (models/head.py)
        cap = self.cfg.final_logit_softcap
        if cap:
            logits = torch.tanh(logits / cap) * cap
        return logits
