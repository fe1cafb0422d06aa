"""Hugging Face directories written to tmp_path: config mapping, canonical names with exact
values, Gemma's ``1 + w`` norms, sharding, and the typed errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers.tiny import write_tokenizer
from safetensors.torch import save_file

from thinkstream.config import RopeScaling
from thinkstream.loading import load_checkpoint, load_tokenizer
from thinkstream.loading.errors import (
    CorruptModelError,
    MissingWeightError,
    UnsupportedArchitectureError,
)
from thinkstream.loading.names import expected_names

VOCAB, HIDDEN, HEADS, KV, HEAD_DIM, FFN, LAYERS = 32, 16, 4, 2, 8, 24, 2

BASE = {"hidden_size": HIDDEN, "intermediate_size": FFN, "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS, "num_key_value_heads": KV, "head_dim": HEAD_DIM,
        "vocab_size": VOCAB, "rms_norm_eps": 1e-6, "rope_theta": 5e5, "max_position_embeddings": 128,
        "bos_token_id": 1, "eos_token_id": 2}
ARCHS = {
    "llama": {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "tie_word_embeddings": False,
              "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                               "high_freq_factor": 4.0, "original_max_position_embeddings": 64}},
    "qwen2": {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "tie_word_embeddings": True},
    "qwen3": {"architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "tie_word_embeddings": True},
    "gemma3": {"architectures": ["Gemma3ForCausalLM"], "model_type": "gemma3_text",
               "hidden_activation": "gelu_pytorch_tanh", "query_pre_attn_scalar": 64, "sliding_window": 4,
               "layer_types": ["sliding_attention", "full_attention"], "rope_local_base_freq": 10000.0,
               "rope_scaling": {"rope_type": "linear", "factor": 8.0}},
    "mistral": {"architectures": ["MistralForCausalLM"], "model_type": "mistral",
                "tie_word_embeddings": False, "sliding_window": 4},
}


def hf_weights(arch: str) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)

    def r(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g)

    w = {"model.embed_tokens.weight": r(VOCAB, HIDDEN), "model.norm.weight": r(HIDDEN),
         "lm_head.weight": r(VOCAB, HIDDEN)}
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        w |= {p + "input_layernorm.weight": r(HIDDEN), p + "post_attention_layernorm.weight": r(HIDDEN),
              p + "self_attn.q_proj.weight": r(HEADS * HEAD_DIM, HIDDEN),
              p + "self_attn.k_proj.weight": r(KV * HEAD_DIM, HIDDEN),
              p + "self_attn.v_proj.weight": r(KV * HEAD_DIM, HIDDEN),
              p + "self_attn.o_proj.weight": r(HIDDEN, HEADS * HEAD_DIM),
              p + "mlp.gate_proj.weight": r(FFN, HIDDEN), p + "mlp.up_proj.weight": r(FFN, HIDDEN),
              p + "mlp.down_proj.weight": r(HIDDEN, FFN),
              p + "self_attn.rotary_emb.inv_freq": r(HEAD_DIM // 2)}
        if arch == "qwen2":
            w |= {p + f"self_attn.{x}_proj.bias": r(n) for x, n in (("q", HEADS * HEAD_DIM), ("k", KV * HEAD_DIM), ("v", KV * HEAD_DIM))}
        if arch in ("qwen3", "gemma3"):
            w |= {p + "self_attn.q_norm.weight": r(HEAD_DIM), p + "self_attn.k_norm.weight": r(HEAD_DIM)}
        if arch == "gemma3":
            w |= {p + "pre_feedforward_layernorm.weight": r(HIDDEN), p + "post_feedforward_layernorm.weight": r(HIDDEN)}
    return {k: v.to(torch.bfloat16) if arch == "gemma3" else v for k, v in w.items()}


def write_model(directory: Path, arch: str, shards: int = 1, **config_overrides) -> dict[str, torch.Tensor]:
    directory.mkdir(parents=True, exist_ok=True)
    weights = hf_weights(arch)
    (directory / "config.json").write_text(json.dumps(BASE | ARCHS[arch] | config_overrides))
    write_tokenizer(directory)
    if shards == 1:
        save_file(weights, str(directory / "model.safetensors"))
        return weights
    names = sorted(weights)
    weight_map = {}
    for s in range(shards):
        part = {n: weights[n] for n in names[s::shards]}
        file = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        save_file(part, str(directory / file))
        weight_map |= dict.fromkeys(part, file)
    (directory / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    return weights


@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3", "gemma3", "mistral"])
def test_names_complete_and_values_exact(tmp_path: Path, arch: str) -> None:
    weights = write_model(tmp_path, arch)
    ck = load_checkpoint(tmp_path)
    assert sorted(ck.tensors) == sorted(expected_names(ck.config))
    assert all(t.dtype == torch.float32 for t in ck.tensors.values())
    offset = 1.0 if arch == "gemma3" else 0.0  # Gemma norms: w is used as 1 + w
    assert torch.equal(ck.tensors["embed.weight"], weights["model.embed_tokens.weight"].float())
    assert torch.equal(ck.tensors["norm.weight"], weights["model.norm.weight"].float() + offset)
    assert torch.equal(ck.tensors["layers.1.attn.q_proj.weight"], weights["model.layers.1.self_attn.q_proj.weight"].float())
    assert torch.equal(ck.tensors["layers.0.attn_norm.weight"], weights["model.layers.0.input_layernorm.weight"].float() + offset)
    post = weights["model.layers.1.post_attention_layernorm.weight"].float() + offset
    if arch == "gemma3":
        assert torch.equal(ck.tensors["layers.1.post_attn_norm.weight"], post)
        assert torch.equal(ck.tensors["layers.1.mlp_norm.weight"], weights["model.layers.1.pre_feedforward_layernorm.weight"].float() + 1)
        assert torch.equal(ck.tensors["layers.0.post_mlp_norm.weight"], weights["model.layers.0.post_feedforward_layernorm.weight"].float() + 1)
        assert torch.equal(ck.tensors["layers.0.attn.k_norm.weight"], weights["model.layers.0.self_attn.k_norm.weight"].float() + 1)
    else:
        assert torch.equal(ck.tensors["layers.1.mlp_norm.weight"], post)
    if arch == "qwen2":
        assert torch.equal(ck.tensors["layers.0.attn.k_proj.bias"], weights["model.layers.0.self_attn.k_proj.bias"])
    if arch == "qwen3":
        assert torch.equal(ck.tensors["layers.0.attn.q_norm.weight"], weights["model.layers.0.self_attn.q_norm.weight"])
    if arch in ("llama", "mistral"):
        assert torch.equal(ck.tensors["lm_head.weight"], weights["lm_head.weight"])


def test_config_mapping(tmp_path: Path) -> None:
    write_model(tmp_path / "l", "llama")
    c = load_checkpoint(tmp_path / "l").config
    assert (c.architecture, c.num_layers, c.num_heads, c.num_kv_heads, c.head_dim) == ("llama", 2, 4, 2, 8)
    assert c.rope_theta == 5e5 and c.rms_norm_eps == 1e-6 and not c.tie_word_embeddings
    assert c.rope_scaling == RopeScaling("llama3", 8.0, 1.0, 4.0, 64)
    assert (c.bos_token_id, c.eos_token_ids) == (1, (2,))
    write_model(tmp_path / "q", "qwen2")
    q = load_checkpoint(tmp_path / "q").config
    assert q.attention_bias and q.tie_word_embeddings and not q.qk_norm
    write_model(tmp_path / "g", "gemma3")
    g = load_checkpoint(tmp_path / "g").config
    assert g.layer_types == ("sliding", "full") and g.sliding_window == 4 and g.hidden_act == "gelu_tanh"
    assert g.query_scale == 64**-0.5 and g.rope_local_theta == 10000.0 and g.embedding_scale == HIDDEN**0.5
    assert g.rope_scaling == RopeScaling("linear", 8.0) and g.tie_word_embeddings


def test_mistral_is_llama_with_its_sliding_window_on_every_layer(tmp_path: Path) -> None:
    """MistralForCausalLM is Llama's layers (a window of ``sliding_window`` keys on every
    layer where it is set; Mistral 7B v0.2 on have none). Checked by hand against
    transformers' MistralForCausalLM, window 8 and none: prompt log-probs within 1e-6."""
    write_model(tmp_path / "w", "mistral")
    c = load_checkpoint(tmp_path / "w").config
    assert (c.architecture, c.sliding_window, c.layer_types) == ("llama", 4, ("sliding",) * LAYERS)
    assert c.layer_is_sliding(0) and c.layer_is_sliding(LAYERS - 1) and not c.tie_word_embeddings
    write_model(tmp_path / "n", "mistral", sliding_window=None)
    n = load_checkpoint(tmp_path / "n").config
    assert (n.architecture, n.sliding_window, n.layer_types) == ("llama", None, ())


def test_transformers5_rope_parameters(tmp_path: Path) -> None:
    write_model(tmp_path, "gemma3", rope_scaling=None, rope_local_base_freq=None, rope_parameters={
        "full_attention": {"rope_type": "default", "rope_theta": 1e6},
        "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}})
    c = load_checkpoint(tmp_path).config
    assert (c.rope_theta, c.rope_local_theta, c.rope_scaling) == (1e6, 1e4, None)


def test_sharded_equals_single(tmp_path: Path) -> None:
    write_model(tmp_path / "one", "qwen2")
    write_model(tmp_path / "three", "qwen2", shards=3)
    a, b = load_checkpoint(tmp_path / "one").tensors, load_checkpoint(tmp_path / "three").tensors
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_generation_config_eos(tmp_path: Path) -> None:
    write_model(tmp_path, "qwen2")
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [2, 0]}))
    assert load_tokenizer(tmp_path).eos_token_ids == (2, 0)


def test_truncated_safetensors(tmp_path: Path) -> None:
    write_model(tmp_path, "llama")
    f = tmp_path / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-1000])
    with pytest.raises(CorruptModelError, match="model.safetensors: cannot read safetensors"):
        load_checkpoint(tmp_path)


def test_missing_weight(tmp_path: Path) -> None:
    weights = write_model(tmp_path, "llama")
    del weights["model.layers.1.mlp.gate_proj.weight"]
    save_file(weights, str(tmp_path / "model.safetensors"))
    with pytest.raises(MissingWeightError, match=r"missing weights layers\.1\.mlp\.gate_proj\.weight"):
        load_checkpoint(tmp_path)


def test_untied_without_lm_head(tmp_path: Path) -> None:
    weights = write_model(tmp_path, "llama")
    del weights["lm_head.weight"]
    save_file(weights, str(tmp_path / "model.safetensors"))
    with pytest.raises(MissingWeightError, match="lm_head.weight"):
        load_checkpoint(tmp_path)


def test_unknown_architecture(tmp_path: Path) -> None:
    write_model(tmp_path, "llama", architectures=["MambaForCausalLM"])
    with pytest.raises(UnsupportedArchitectureError, match="config.json: architecture.*MambaForCausalLM"):
        load_checkpoint(tmp_path)


def test_missing_files(tmp_path: Path) -> None:
    write_model(tmp_path, "llama")
    (tmp_path / "tokenizer.json").unlink()
    with pytest.raises(CorruptModelError, match="missing tokenizer.json"):
        load_checkpoint(tmp_path)
    (tmp_path / "config.json").unlink()
    with pytest.raises(CorruptModelError, match="missing config.json"):
        load_checkpoint(tmp_path)


def test_config_missing_or_mistyped_fields_name_the_file_and_key(tmp_path: Path) -> None:
    """A config.json without a required key raised a bare ``KeyError``, one with a value of
    the wrong type a ``TypeError``: both are ``CorruptModelError``s naming the file."""
    write_model(tmp_path, "llama")
    config = json.loads((tmp_path / "config.json").read_text())
    del config["num_attention_heads"]
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CorruptModelError, match=r"config.json: missing 'num_attention_heads'"):
        load_checkpoint(tmp_path, tensors=False)
    (tmp_path / "config.json").write_text(json.dumps(config | {"num_attention_heads": None}))
    with pytest.raises(CorruptModelError, match=r"config.json: invalid configuration"):
        load_checkpoint(tmp_path, tensors=False)


def test_a_chat_template_that_does_not_compile_names_its_file(tmp_path: Path) -> None:
    """It raised jinja's ``TemplateSyntaxError`` at the first chat; now the load fails."""
    write_model(tmp_path, "llama")
    write_tokenizer(tmp_path, "{% for m in messages %}{{ m.content ")
    with pytest.raises(CorruptModelError, match="tokenizer_config.json: invalid chat template"):
        load_tokenizer(tmp_path)
    write_tokenizer(tmp_path)
    (tmp_path / "chat_template.jinja").write_text("{% if %}")
    with pytest.raises(CorruptModelError, match="chat_template.jinja: invalid chat template"):
        load_tokenizer(tmp_path)
