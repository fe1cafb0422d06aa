"""Checkpoint tensor names -> canonical names, one table per format.

Canonical names (what ``models/`` consumes)::

    embed.weight  norm.weight  lm_head.weight (absent when tied)
    layers.{i}.attn_norm.weight
    layers.{i}.attn.{q,k,v}_proj.{weight,bias}  layers.{i}.attn.o_proj.weight
    layers.{i}.attn.{q,k}_norm.weight                       (qk_norm)
    layers.{i}.post_attn_norm.weight  layers.{i}.post_mlp_norm.weight   (sandwich_norms)
    layers.{i}.mlp_norm.weight
    layers.{i}.mlp.{gate,up,down}_proj.weight
"""

from __future__ import annotations

import re

from thinkstream.config import ModelConfig

# Per-layer suffixes: checkpoint suffix -> canonical suffix ("{p}" = .weight or .bias).
_GGUF_LAYER = {
    "attn_norm": "attn_norm",
    "attn_q": "attn.q_proj",
    "attn_k": "attn.k_proj",
    "attn_v": "attn.v_proj",
    "attn_output": "attn.o_proj",
    "attn_q_norm": "attn.q_norm",
    "attn_k_norm": "attn.k_norm",
    "post_attention_norm": "post_attn_norm",
    "ffn_norm": "mlp_norm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "post_ffw_norm": "post_mlp_norm",
}
_GGUF_GLOBAL = {"token_embd": "embed", "output_norm": "norm", "output": "lm_head"}

_HF_LAYER = {
    "input_layernorm": "attn_norm",
    "self_attn.q_proj": "attn.q_proj",
    "self_attn.k_proj": "attn.k_proj",
    "self_attn.v_proj": "attn.v_proj",
    "self_attn.o_proj": "attn.o_proj",
    "self_attn.q_norm": "attn.q_norm",
    "self_attn.k_norm": "attn.k_norm",
    "post_attention_layernorm": "mlp_norm",  # Gemma 3: post_attn_norm, see _HF_SANDWICH
    "pre_feedforward_layernorm": "mlp_norm",
    "post_feedforward_layernorm": "post_mlp_norm",
    "mlp.gate_proj": "mlp.gate_proj",
    "mlp.up_proj": "mlp.up_proj",
    "mlp.down_proj": "mlp.down_proj",
}
# With sandwich norms, HF's post_attention_layernorm normalizes the attention *output*.
_HF_SANDWICH = {"post_attention_layernorm": "post_attn_norm"}
_HF_GLOBAL = {"model.embed_tokens": "embed", "model.norm": "norm", "lm_head": "lm_head"}

_GGUF_RE = re.compile(r"^blk\.(\d+)\.(\w+)\.(weight|bias)$")
_HF_RE = re.compile(r"^model\.layers\.(\d+)\.([\w.]+)\.(weight|bias)$")


def gguf_to_canonical(name: str) -> str | None:
    """Canonical name of a GGUF tensor, or None if thinkstream does not use it."""
    if m := _GGUF_RE.match(name):
        layer, part, kind = m.groups()
        target = _GGUF_LAYER.get(part)
        return f"layers.{layer}.{target}.{kind}" if target else None
    stem, _, kind = name.rpartition(".")
    target = _GGUF_GLOBAL.get(stem)
    return f"{target}.{kind}" if target and kind == "weight" else None


def hf_to_canonical(name: str, sandwich_norms: bool) -> str | None:
    """Canonical name of a Hugging Face tensor, or None if thinkstream does not use it."""
    if m := _HF_RE.match(name):
        layer, part, kind = m.groups()
        target = (_HF_SANDWICH.get(part) if sandwich_norms else None) or _HF_LAYER.get(part)
        return f"layers.{layer}.{target}.{kind}" if target else None
    stem, _, kind = name.rpartition(".")
    target = _HF_GLOBAL.get(stem)
    return f"{target}.{kind}" if target and kind == "weight" else None


def expected_names(config: ModelConfig) -> list[str]:
    """Every canonical tensor a model with ``config`` needs, in a stable order."""
    names = ["embed.weight", "norm.weight"]
    if not config.tie_word_embeddings:
        names.append("lm_head.weight")
    for i in range(config.num_layers):
        p = f"layers.{i}."
        names += [p + "attn_norm.weight", p + "mlp_norm.weight"]
        names += [f"{p}attn.{x}_proj.weight" for x in "qkvo"]
        if config.attention_bias:
            names += [f"{p}attn.{x}_proj.bias" for x in "qkv"]
        if config.qk_norm:
            names += [p + "attn.q_norm.weight", p + "attn.k_norm.weight"]
        if config.sandwich_norms:
            names += [p + "post_attn_norm.weight", p + "post_mlp_norm.weight"]
        names += [f"{p}mlp.{x}_proj.weight" for x in ("gate", "up", "down")]
    return names


def expected_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Shape of every expected canonical tensor."""
    h, d = config.hidden_size, config.head_dim
    q, kv = config.num_heads * d, config.num_kv_heads * d
    by_suffix = {
        "attn.q_proj.weight": (q, h), "attn.k_proj.weight": (kv, h), "attn.v_proj.weight": (kv, h),
        "attn.o_proj.weight": (h, q), "attn.q_proj.bias": (q,), "attn.k_proj.bias": (kv,),
        "attn.v_proj.bias": (kv,), "attn.q_norm.weight": (d,), "attn.k_norm.weight": (d,),
        "mlp.gate_proj.weight": (config.intermediate_size, h),
        "mlp.up_proj.weight": (config.intermediate_size, h),
        "mlp.down_proj.weight": (h, config.intermediate_size),
    }
    shapes = {}
    for name in expected_names(config):
        if name in ("embed.weight", "lm_head.weight"):
            shapes[name] = (config.vocab_size, h)
        else:
            suffix = name.split(".", 2)[2] if name.startswith("layers.") else name
            shapes[name] = by_suffix.get(suffix, (h,))
    return shapes
