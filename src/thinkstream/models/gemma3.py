"""Gemma 3: scaled embeddings, sandwich norms, q/k norm, GELU-tanh MLP, and sliding-window
layers with their own RoPE base interleaved with full-attention layers."""

from __future__ import annotations

import torch

from thinkstream.models.layers import rope_cos_sin, rope_inv_freq
from thinkstream.models.llama import LlamaForCausalLM


class Gemma3ForCausalLM(LlamaForCausalLM):
    def init_rope(self, device: torch.device | str) -> None:
        super().init_rope(device)
        local_theta = self.cfg.rope_local_theta or self.cfg.rope_theta
        self.local_inv_freq = rope_inv_freq(self.cfg.head_dim, local_theta, None).to(device)

    def embed_tokens(self, input_ids: torch.Tensor) -> torch.Tensor:
        x = self.embed(input_ids)
        # The scale is rounded to the embedding dtype first, as the reference does.
        return x * torch.tensor(self.cfg.embedding_scale, dtype=x.dtype)

    def rope_tables(
        self, positions: torch.Tensor, dtype: torch.dtype
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        full = rope_cos_sin(positions, self.inv_freq, dtype)
        local = rope_cos_sin(positions, self.local_inv_freq, dtype)
        return [local if self.cfg.layer_is_sliding(i) else full for i in range(self.cfg.num_layers)]
