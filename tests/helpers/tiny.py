"""Tiny random-weight models for unit tests: a config per architecture, canonical tensors,
a small byte-level BPE tokenizer with ChatML specials, and a dense reference forward that
shares no code with the engine's paged model.

The BPE is trained once per process and ``tiny_checkpoint`` is built once per process and
shared by every test (``tests/conftest.py`` hands out the default one as ``tiny_ckpt``, and
one tokenizer as ``tiny_tok``): read those, never change them. ``tiny_tokenizer()`` is a new
``Tokenizer`` over the trained BPE each call (cheap): one a test may change."""

from __future__ import annotations

import functools
import json
import math
from pathlib import Path

import tokenizers
import torch
from tokenizers import decoders, models, pre_tokenizers, trainers

from thinkstream.config import ModelConfig, RopeScaling

CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content']"
    " + '<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\n' }}{% endif %}"
)
CORPUS = [
    "The quick brown fox jumps over the lazy dog. " * 3,
    "What is the capital of France? Paris is the capital of France.",
    "Streaming input arrives in chunks; the engine prefills each chunk as it arrives.",
    "0123456789 numbers, punctuation! and symbols: #$%&*()[]{} café naïve 東京 🙂",
]
VOCAB = 320


def tiny_config(arch: str = "llama", **overrides) -> ModelConfig:
    base = dict(
        architecture=arch, vocab_size=VOCAB, hidden_size=64, intermediate_size=96,
        num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16, rms_norm_eps=1e-6,
        rope_theta=10000.0, max_position_embeddings=512, tie_word_embeddings=arch != "qwen2",
        eos_token_ids=(2,), bos_token_id=None,
    )
    if arch == "qwen2":
        base.update(attention_bias=True)
    if arch == "qwen3":
        base.update(qk_norm=True)
    if arch == "gemma3":
        base.update(
            qk_norm=True, sandwich_norms=True, hidden_act="gelu_tanh", embedding_scale=8.0,
            num_layers=3, sliding_window=8, layer_types=("sliding", "sliding", "full"),
            rope_local_theta=10000.0, rope_theta=1e6, query_scale=0.2,
        )
    if arch == "llama3":
        base.update(architecture="llama", rope_scaling=RopeScaling("llama3", 8.0, 1.0, 4.0, 64))
    base.update(overrides)
    return ModelConfig(**base)


def random_tensors(cfg: ModelConfig, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)

    def w(*shape: int, scale: float | None = None) -> torch.Tensor:
        s = scale if scale is not None else 1.0 / math.sqrt(shape[-1])
        return torch.randn(*shape, generator=g) * s

    h, d = cfg.hidden_size, cfg.head_dim
    t = {"embed.weight": w(cfg.vocab_size, h, scale=1.0), "norm.weight": 1 + 0.1 * w(h, scale=1.0)}
    if not cfg.tie_word_embeddings:
        t["lm_head.weight"] = w(cfg.vocab_size, h)
    for i in range(cfg.num_layers):
        p = f"layers.{i}."
        t[p + "attn_norm.weight"] = 1 + 0.1 * w(h, scale=1.0)
        t[p + "mlp_norm.weight"] = 1 + 0.1 * w(h, scale=1.0)
        t[p + "attn.q_proj.weight"] = w(cfg.num_heads * d, h)
        t[p + "attn.k_proj.weight"] = w(cfg.num_kv_heads * d, h)
        t[p + "attn.v_proj.weight"] = w(cfg.num_kv_heads * d, h)
        t[p + "attn.o_proj.weight"] = w(h, cfg.num_heads * d)
        if cfg.attention_bias:
            for n, size in (("q", cfg.num_heads), ("k", cfg.num_kv_heads), ("v", cfg.num_kv_heads)):
                t[p + f"attn.{n}_proj.bias"] = w(size * d, scale=0.1)
        if cfg.qk_norm:
            t[p + "attn.q_norm.weight"] = 1 + 0.1 * w(d, scale=1.0)
            t[p + "attn.k_norm.weight"] = 1 + 0.1 * w(d, scale=1.0)
        if cfg.sandwich_norms:
            t[p + "post_attn_norm.weight"] = 1 + 0.1 * w(h, scale=1.0)
            t[p + "post_mlp_norm.weight"] = 1 + 0.1 * w(h, scale=1.0)
        t[p + "mlp.gate_proj.weight"] = w(cfg.intermediate_size, h)
        t[p + "mlp.up_proj.weight"] = w(cfg.intermediate_size, h)
        t[p + "mlp.down_proj.weight"] = w(h, cfg.intermediate_size)
    return t


@functools.cache
def _trained_bpe() -> tokenizers.Tokenizer:
    """The byte-level BPE trained on ``CORPUS`` with ChatML specials (once per process)."""
    tok = tokenizers.Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB, special_tokens=["<unk>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer)
    return tok


def tiny_tokenizer():
    """A new ``Tokenizer`` (ChatML template) over the shared trained BPE."""
    from thinkstream.loading.tokenizer import Tokenizer

    return Tokenizer(
        _trained_bpe(), bos_token_id=None, eos_token_ids=(2,), chat_template=CHATML,
        special_tokens={"eos_token": "<|im_end|>"},
    )


@functools.cache
def tiny_checkpoint(arch: str = "llama", seed: int = 0, **overrides):
    """One per (arch, seed, overrides) and process, shared: engines built from it alias its
    float32 tensors (nothing writes to them)."""
    from thinkstream.loading import LoadedCheckpoint

    cfg = tiny_config(arch, **overrides)
    return LoadedCheckpoint(cfg, random_tensors(cfg, seed), tiny_tokenizer(), Path(f"<tiny-{arch}>"))


# the GGUF block type of each matrix in ``tiny_gguf_checkpoint`` (types mixed within q/k/v)
GGUF_TYPES = {"q_proj": "Q4_1", "k_proj": "Q4_0", "v_proj": "Q8_0", "o_proj": "Q5_0",
              "gate_proj": "Q5_1", "up_proj": "Q4_1", "down_proj": "Q8_0", "embed": "Q8_0"}


@functools.cache
def tiny_gguf_checkpoint(arch: str = "llama"):
    """The tiny checkpoint with its matrices as GGUF blocks (``GGUF_TYPES``) and its dense
    tensors the blocks dequantized (the exact weights the native kernels compute with)."""
    import dataclasses

    import numpy as np
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize, quantize

    from thinkstream.loading.gguf import GGUFBlocks

    ckpt = tiny_checkpoint(arch)
    tensors, blocks = dict(ckpt.tensors), {}
    for name, w in ckpt.tensors.items():
        qname = GGUF_TYPES.get(name.split(".")[-2])
        if w.dim() == 2 and qname is not None:
            qtype = GGMLQuantizationType[qname]
            raw = quantize(w.numpy().astype(np.float32), qtype)
            tensors[name] = torch.from_numpy(dequantize(raw, qtype).astype(np.float32).reshape(w.shape))
            blocks[name] = GGUFBlocks(int(qtype), torch.from_numpy(raw.copy()), w.shape[1])
    return dataclasses.replace(ckpt, tensors=tensors, blocks=blocks)


# --------------------------------------------------------------- dense reference
def _norm(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def _rope(x: torch.Tensor, pos: torch.Tensor, inv_freq: torch.Tensor) -> torch.Tensor:
    ang = pos[:, None].double() * inv_freq[None, :].double()
    cos, sin = ang.cos().float(), ang.sin().float()
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * cos[:, None] - x2 * sin[:, None], x2 * cos[:, None] + x1 * sin[:, None]], -1)


def reference_logits(cfg: ModelConfig, t: dict[str, torch.Tensor], ids: list[int],
                     positions: list[int] | None = None,
                     allowed: torch.Tensor | None = None,
                     kv_dtype: torch.dtype | None = None) -> torch.Tensor:
    """All-position logits (T, V) of a full causal pass, float32, no cache, written plainly.
    ``allowed`` (T, T) replaces the causal mask (True: query row may attend to key column).
    ``kv_dtype``: keys (after RoPE) and values rounded through it, as a KV cache of that
    dtype holds them (``EngineConfig.kv_cache_dtype``)."""
    from thinkstream.models.layers import rope_inv_freq

    n = len(ids)
    mask = allowed
    pos = torch.tensor(positions if positions is not None else list(range(n)))
    x = t["embed.weight"][torch.tensor(ids)] * cfg.embedding_scale
    d, hq, hk = cfg.head_dim, cfg.num_heads, cfg.num_kv_heads
    for i in range(cfg.num_layers):
        p = f"layers.{i}."
        sliding = cfg.layer_is_sliding(i)
        theta = (cfg.rope_local_theta or cfg.rope_theta) if sliding else cfg.rope_theta
        inv = rope_inv_freq(d, theta, None if sliding else cfg.rope_scaling)
        h = _norm(x, t[p + "attn_norm.weight"], cfg.rms_norm_eps)

        def proj(name: str, h=h, p=p) -> torch.Tensor:
            y = h @ t[p + f"attn.{name}_proj.weight"].T
            return y + t[p + f"attn.{name}_proj.bias"] if cfg.attention_bias else y

        q, k, v = proj("q").view(n, hq, d), proj("k").view(n, hk, d), proj("v").view(n, hk, d)
        if cfg.qk_norm:
            q = _norm(q, t[p + "attn.q_norm.weight"], cfg.rms_norm_eps)
            k = _norm(k, t[p + "attn.k_norm.weight"], cfg.rms_norm_eps)
        q, k = _rope(q, pos, inv), _rope(k, pos, inv)
        if kv_dtype is not None:
            k, v = k.to(kv_dtype).float(), v.to(kv_dtype).float()
        k = k.repeat_interleave(hq // hk, dim=1)
        v = v.repeat_interleave(hq // hk, dim=1)
        scores = torch.einsum("qhd,khd->hqk", q, k) * cfg.scale
        qi, ki = torch.arange(n)[:, None], torch.arange(n)[None, :]
        allowed = ki <= qi if mask is None else mask
        if sliding:
            allowed &= ki > qi - cfg.sliding_window
        scores = scores.masked_fill(~allowed, float("-inf"))
        o = torch.einsum("hqk,khd->qhd", scores.softmax(-1), v).reshape(n, hq * d)
        a = o @ t[p + "attn.o_proj.weight"].T
        if cfg.sandwich_norms:
            a = _norm(a, t[p + "post_attn_norm.weight"], cfg.rms_norm_eps)
        x = x + a
        h = _norm(x, t[p + "mlp_norm.weight"], cfg.rms_norm_eps)
        g = h @ t[p + "mlp.gate_proj.weight"].T
        act = torch.nn.functional.gelu(g, approximate="tanh") if cfg.hidden_act == "gelu_tanh" else torch.nn.functional.silu(g)
        m = (act * (h @ t[p + "mlp.up_proj.weight"].T)) @ t[p + "mlp.down_proj.weight"].T
        if cfg.sandwich_norms:
            m = _norm(m, t[p + "post_mlp_norm.weight"], cfg.rms_norm_eps)
        x = x + m
    x = _norm(x, t["norm.weight"], cfg.rms_norm_eps)
    head = t["embed.weight"] if cfg.tie_word_embeddings else t["lm_head.weight"]
    return x @ head.T


def write_tokenizer(directory: Path, template: str | None = None) -> None:
    """An HF tokenizer directory: a 14-token BPE (letters a-j and space), <s> / </s>, and
    ``template`` as its chat template."""
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2} | {c: 3 + i for i, c in enumerate("abcdefghij ")}
    backend = tokenizers.Tokenizer(models.BPE(vocab, [], unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.add_special_tokens(["<s>", "</s>"])
    backend.save(str(directory / "tokenizer.json"))
    config = {"bos_token": "<s>", "eos_token": {"content": "</s>"}}
    if template:
        config["chat_template"] = template
    (directory / "tokenizer_config.json").write_text(json.dumps(config))
