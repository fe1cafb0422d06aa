"""Parity of thinkstream's loaders with transformers on the two real GGUFs (SmolLM2-135M
default model, Gemma 3 270M): tokenizer ids, decode, chat template, config, and weights."""

from __future__ import annotations

import pytest
import torch

from thinkstream.loading import NoChatTemplateError, load_tokenizer
from thinkstream.loading.names import expected_names, hf_to_canonical

pytestmark = pytest.mark.integration

TEXTS = [
    "Hello world", " leading space", "trailing  ", "a  b   c    d", "12345 678.9 1,000,000 3.14e-10",
    "héllo wörld ñ Ü\u0301", "日本語のテキスト、中文文本，한국어", "emoji 😀👍🏽 🇫🇷 ❤️", "tabs\tand\nnew\n\n\nlines\r\n",
    "<|im_start|>user\nhi<|im_end|>", "<start_of_turn>user\nhi<end_of_turn>", "<bos>x<eos>", "  \n  \t ", "",
    "don't WON'T I'm", "def f(x):\n    return x**2  # sq\n", "\u200bzero\u00a0width", "<table><tr>x</tr>", "ÿ\x00\x7f",
]
CHATS = [
    [{"role": "user", "content": "Hi!"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2+2?"}],
    [{"role": "user", "content": "Hello"}, {"role": "assistant", "content": "Hi there!"},
     {"role": "user", "content": "Tell me a joke about 日本."}],
    [{"role": "system", "content": "You are a pirate."}, {"role": "user", "content": "  spaces\n\nand lines  "},
     {"role": "assistant", "content": "Arr 😀"}],
    [{"role": "user", "content": "<|im_start|> literal tokens <|im_end|>"}],
]


@pytest.fixture(scope="module")
def smol(refs):
    return refs.path(None), refs.checkpoint(None), refs.hf_tokenizer(None)


@pytest.fixture(scope="module")
def gemma(refs):
    return refs.path("gemma3-270m"), refs.checkpoint("gemma3-270m"), refs.hf_tokenizer("gemma3-270m")


def _assert_tokenizer_parity(ours, theirs) -> None:
    assert ours.vocab_size == len(theirs)
    for text in TEXTS:
        for special in (True, False):
            assert ours.encode(text, add_special_tokens=special) == theirs.encode(text, add_special_tokens=special), (text, special)
        ids = theirs.encode(text)
        for skip in (False, True):
            assert ours.decode(ids, skip_special_tokens=skip) == theirs.decode(ids, skip_special_tokens=skip), text
        assert ours.convert_ids_to_tokens(ids) == theirs.convert_ids_to_tokens(ids)


def test_smollm2_tokenizer_parity(smol) -> None:
    _, ck, theirs = smol
    _assert_tokenizer_parity(ck.tokenizer, theirs)
    assert ck.tokenizer.bos_token_id == theirs.bos_token_id == 1
    assert ck.tokenizer.eos_token_ids == (theirs.eos_token_id,) == (2,)


def test_smollm2_chat_template_parity(smol) -> None:
    _, ck, theirs = smol
    for chat in CHATS:
        for gen in (True, False):
            text = ck.tokenizer.apply_chat_template(chat, add_generation_prompt=gen)
            assert text == theirs.apply_chat_template(chat, add_generation_prompt=gen, tokenize=False)
            ids = ck.tokenizer.apply_chat_template(chat, add_generation_prompt=gen, tokenize=True)
            want = theirs.apply_chat_template(chat, add_generation_prompt=gen, tokenize=True)
            assert ids == list(want["input_ids"] if isinstance(want, dict) or hasattr(want, "keys") else want)


def test_default_checkpoint(smol) -> None:
    path, ck, _ = smol
    c = ck.config
    assert (c.architecture, c.num_layers, c.hidden_size, c.num_heads, c.num_kv_heads, c.head_dim) == ("llama", 30, 576, 9, 3, 64)
    assert (c.vocab_size, c.rope_theta, c.tie_word_embeddings, c.intermediate_size) == (49152, 1e5, True, 1536)
    assert sorted(ck.tensors) == sorted(expected_names(c)) and ck.path == path
    assert load_tokenizer(None).encode("Hello") == ck.tokenizer.encode("Hello")


def _assert_weights_equal(ck, hf_model, names) -> None:
    state = hf_model.state_dict()
    gemma = ck.config.architecture == "gemma3"
    for hf_name in names:
        canonical = hf_to_canonical(hf_name, ck.config.sandwich_norms)
        ref = state[hf_name].float() + (1.0 if gemma and canonical.endswith("norm.weight") else 0.0)
        assert torch.equal(ck.tensors[canonical], ref), hf_name


@pytest.mark.slow  # transformers loads the model
def test_smollm2_weights_match_transformers(smol, refs) -> None:
    _, ck, _ = smol
    model = refs.hf_model(None)
    # q/k: llama.cpp's row permutation undone; the 4-bit and 8-bit blocks dequantize identically
    _assert_weights_equal(ck, model, [
        "model.embed_tokens.weight", "model.norm.weight", "model.layers.0.self_attn.q_proj.weight",
        "model.layers.7.self_attn.k_proj.weight", "model.layers.29.self_attn.v_proj.weight",
        "model.layers.3.mlp.down_proj.weight", "model.layers.3.post_attention_layernorm.weight"])


@pytest.mark.slow  # transformers loads the tokenizer
def test_gemma3_tokenizer_parity_and_no_template(gemma) -> None:
    _, ck, theirs = gemma
    _assert_tokenizer_parity(ck.tokenizer, theirs)
    assert ck.tokenizer.bos_token_id == theirs.bos_token_id == 2
    assert ck.tokenizer.encode("Hi")[0] == 2  # add_bos_token
    # <eos> plus <end_of_turn>, as Gemma 3's generation_config.json lists
    assert ck.tokenizer.eos_token_ids == (1, 106) and ck.tokenizer.convert_ids_to_tokens([106]) == ["<end_of_turn>"]
    with pytest.raises(NoChatTemplateError):
        ck.tokenizer.apply_chat_template(CHATS[0])


@pytest.mark.slow  # transformers loads the model
def test_gemma3_config_and_weights_match_transformers(gemma, refs) -> None:
    _, ck, _ = gemma
    model = refs.hf_model("gemma3-270m")
    hc, c = model.config, ck.config
    assert c.layer_types == tuple("sliding" if t == "sliding_attention" else "full" for t in hc.layer_types)
    assert c.layer_types.count("full") == 3 and c.layer_types[5] == "full"
    assert (c.num_layers, c.hidden_size, c.num_heads, c.num_kv_heads, c.head_dim) == (18, 640, 4, 1, 256)
    assert (c.sliding_window, c.vocab_size, c.intermediate_size) == (hc.sliding_window, 262144, hc.intermediate_size)
    assert c.query_scale == hc.query_pre_attn_scalar**-0.5
    assert c.rope_theta == hc.rope_parameters["full_attention"]["rope_theta"] == 1e6
    assert c.rope_local_theta == hc.rope_parameters["sliding_attention"]["rope_theta"] == 1e4
    assert c.final_logit_softcap == hc.final_logit_softcapping and c.rms_norm_eps == 1e-6
    assert sorted(ck.tensors) == sorted(expected_names(c))
    # Q8_0 embedding, Q5_0/Q4_K/Q6_K matrices; norms: the GGUF stores 1 + w, transformers w
    _assert_weights_equal(ck, model, [
        "model.embed_tokens.weight", "model.norm.weight", "model.layers.0.self_attn.q_proj.weight",
        "model.layers.0.self_attn.o_proj.weight", "model.layers.0.mlp.down_proj.weight",
        "model.layers.0.self_attn.v_proj.weight", "model.layers.5.self_attn.q_norm.weight",
        "model.layers.5.post_attention_layernorm.weight", "model.layers.5.pre_feedforward_layernorm.weight",
        "model.layers.17.post_feedforward_layernorm.weight", "model.layers.2.input_layernorm.weight"])
