"""GGUF loading on tiny files written with ``gguf.GGUFWriter``: config, canonical names, the
llama q/k un-permutation, dequantization of each quant type the real models use, corruption."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as Q
from gguf.quants import quantize

from thinkstream.loading import load_checkpoint, load_tokenizer
from thinkstream.loading.errors import (
    CorruptModelError,
    MissingWeightError,
    ModelLoadError,
    UnsupportedArchitectureError,
)
from thinkstream.loading.gguf import _dequantize
from thinkstream.loading.gguf_reader import read_gguf
from thinkstream.loading.names import expected_names

HIDDEN, HEADS, KV_HEADS, HEAD_DIM, FFN, LAYERS = 64, 4, 2, 16, 96, 2
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def byte_alphabet() -> list[str]:
    """GPT-2's byte spelling, written out independently of the loader."""
    keep = set(range(33, 127)) | set(range(161, 173)) | set(range(174, 256))
    out, n = [], 0
    for b in range(256):
        out.append(chr(b) if b in keep else chr(256 + n))
        n += b not in keep
    return out


def gpt2_vocab() -> tuple[list[str], list[str]]:
    merges = ["h e", "l l", "he ll", "hell o", "Ġ w"]
    tokens = SPECIALS + byte_alphabet() + [m.replace(" ", "") for m in merges]
    return tokens, merges


def llama_permute(w: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's converter: row h*d + 2*j + t of the file is row h*d + t*d/2 + j of HF."""
    out = np.empty_like(w)
    d = w.shape[0] // heads
    for h in range(heads):
        for j in range(d // 2):
            for t in range(2):
                out[h * d + 2 * j + t] = w[h * d + t * (d // 2) + j]
    return out


def write_gguf(path: Path, arch: str = "llama", tensors: dict | None = None, *,
               drop: tuple[str, ...] = (), extra_kv: dict | None = None, tied: bool = True,
               quant: dict[str, Q] | None = None) -> dict:
    """Write a tiny model; returns the HF-order float32 arrays by GGUF name. ``quant``:
    GGUF name fragment (``"attn_v."``) -> the type its 2-D tensors are stored in."""
    rng = np.random.default_rng(0)
    tokens, merges = gpt2_vocab()
    w = gguf.GGUFWriter(str(path), arch)
    w.add_uint32(f"{arch}.block_count", LAYERS)
    w.add_uint32(f"{arch}.context_length", 256)
    w.add_uint32(f"{arch}.embedding_length", HIDDEN)
    w.add_uint32(f"{arch}.feed_forward_length", FFN)
    w.add_uint32(f"{arch}.attention.head_count", HEADS)
    w.add_uint32(f"{arch}.attention.head_count_kv", KV_HEADS)
    w.add_float32(f"{arch}.rope.freq_base", 100000.0)
    w.add_float32(f"{arch}.attention.layer_norm_rms_epsilon", 1e-5)
    for key, value in (extra_kv or {}).items():
        (w.add_uint32 if isinstance(value, int) else w.add_float32)(key, value)
    w.add_string("tokenizer.ggml.model", "gpt2")
    w.add_string("tokenizer.ggml.pre", "smollm")
    w.add_token_list(tokens)
    w.add_token_types([3] * len(SPECIALS) + [1] * (len(tokens) - len(SPECIALS)))
    w.add_token_merges(merges)
    w.add_uint32("tokenizer.ggml.bos_token_id", 1)
    w.add_uint32("tokenizer.ggml.eos_token_id", 2)
    w.add_string("tokenizer.chat_template", "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}")
    shapes = {"token_embd.weight": (len(tokens), HIDDEN), "output_norm.weight": (HIDDEN,)}
    if not tied:
        shapes["output.weight"] = (len(tokens), HIDDEN)
    for i in range(LAYERS):
        shapes |= {f"blk.{i}.attn_norm.weight": (HIDDEN,), f"blk.{i}.ffn_norm.weight": (HIDDEN,),
                   f"blk.{i}.attn_q.weight": (HEADS * HEAD_DIM, HIDDEN),
                   f"blk.{i}.attn_k.weight": (KV_HEADS * HEAD_DIM, HIDDEN),
                   f"blk.{i}.attn_v.weight": (KV_HEADS * HEAD_DIM, HIDDEN),
                   f"blk.{i}.attn_output.weight": (HIDDEN, HEADS * HEAD_DIM),
                   f"blk.{i}.ffn_gate.weight": (FFN, HIDDEN), f"blk.{i}.ffn_up.weight": (FFN, HIDDEN),
                   f"blk.{i}.ffn_down.weight": (HIDDEN, FFN)}
        if arch == "gemma3":
            shapes |= {f"blk.{i}.attn_q_norm.weight": (HEAD_DIM,), f"blk.{i}.attn_k_norm.weight": (HEAD_DIM,),
                       f"blk.{i}.post_attention_norm.weight": (HIDDEN,), f"blk.{i}.post_ffw_norm.weight": (HIDDEN,)}
    arrays = {n: rng.standard_normal(s).astype(np.float32) for n, s in shapes.items()}
    arrays |= tensors or {}
    for name, array in arrays.items():
        if name in drop:
            continue
        stored = array
        if arch == "llama" and (".attn_q." in name or ".attn_k." in name):
            stored = llama_permute(array, HEADS if ".attn_q." in name else KV_HEADS)
        qtype = next((q for frag, q in (quant or {}).items() if frag in name and array.ndim == 2), None)
        if qtype is not None:
            w.add_tensor(name, quantize(stored, qtype), raw_dtype=qtype)
        else:
            w.add_tensor(name, stored)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return arrays


@pytest.fixture
def tiny_llama(tmp_path: Path) -> tuple[Path, dict]:
    path = tmp_path / "tiny.gguf"
    return path, write_gguf(path)


def test_config_from_metadata(tiny_llama: tuple[Path, dict]) -> None:
    ck = load_checkpoint(tiny_llama[0])
    c = ck.config
    assert (c.architecture, c.num_layers, c.hidden_size, c.num_heads, c.num_kv_heads) == ("llama", 2, 64, 4, 2)
    assert (c.head_dim, c.intermediate_size, c.vocab_size) == (16, 96, len(gpt2_vocab()[0]))
    assert c.rope_theta == 100000.0 and c.rms_norm_eps == 1e-5 and c.max_position_embeddings == 256
    assert c.tie_word_embeddings and c.bos_token_id == 1 and c.eos_token_ids == (2,)
    assert ck.tokenizer.eos_token_ids == (2,)


def test_canonical_names_and_unpermuted_qk(tiny_llama: tuple[Path, dict]) -> None:
    path, arrays = tiny_llama
    ck = load_checkpoint(path)
    assert sorted(ck.tensors) == sorted(expected_names(ck.config))
    assert "lm_head.weight" not in ck.tensors
    pairs = {"token_embd.weight": "embed.weight", "output_norm.weight": "norm.weight",
             "blk.1.attn_q.weight": "layers.1.attn.q_proj.weight",
             "blk.1.attn_k.weight": "layers.1.attn.k_proj.weight",
             "blk.0.attn_v.weight": "layers.0.attn.v_proj.weight",
             "blk.0.attn_output.weight": "layers.0.attn.o_proj.weight",
             "blk.0.ffn_norm.weight": "layers.0.mlp_norm.weight",
             "blk.0.ffn_down.weight": "layers.0.mlp.down_proj.weight"}
    for src, dst in pairs.items():
        assert ck.tensors[dst].dtype == torch.float32
        assert torch.equal(ck.tensors[dst], torch.from_numpy(arrays[src])), dst


def test_untied_lm_head(tmp_path: Path) -> None:
    arrays = write_gguf(tmp_path / "m.gguf", tied=False)
    ck = load_checkpoint(tmp_path / "m.gguf")
    assert not ck.config.tie_word_embeddings
    assert torch.equal(ck.tensors["lm_head.weight"], torch.from_numpy(arrays["output.weight"]))


def test_gemma3_config_and_norms_kept(tmp_path: Path) -> None:
    arrays = write_gguf(tmp_path / "g.gguf", "gemma3", extra_kv={
        "gemma3.attention.key_length": HEAD_DIM, "gemma3.attention.sliding_window": 8,
        "gemma3.block_count": LAYERS})
    ck = load_checkpoint(tmp_path / "g.gguf")
    c = ck.config
    assert c.qk_norm and c.sandwich_norms and c.hidden_act == "gelu_tanh"
    assert c.layer_types == ("sliding", "sliding") and c.sliding_window == 8
    assert c.rope_local_theta == 10000.0 and c.query_scale == HEAD_DIM**-0.5
    assert c.embedding_scale == pytest.approx(HIDDEN**0.5)
    # llama.cpp stores Gemma's norms as 1 + w already; no permutation for neox-rope archs
    assert torch.equal(ck.tensors["layers.0.post_attn_norm.weight"], torch.from_numpy(arrays["blk.0.post_attention_norm.weight"]))
    assert torch.equal(ck.tensors["layers.1.post_mlp_norm.weight"], torch.from_numpy(arrays["blk.1.post_ffw_norm.weight"]))
    assert torch.equal(ck.tensors["layers.0.attn.q_proj.weight"], torch.from_numpy(arrays["blk.0.attn_q.weight"]))


def test_tokenizer_from_gpt2_metadata(tiny_llama: tuple[Path, dict]) -> None:
    tok = load_tokenizer(tiny_llama[0])
    ids = tok.encode("hello world<|im_end|>")
    assert tok.convert_ids_to_tokens(ids) == ["hello", "Ġw", "o", "r", "l", "d", "<|im_end|>"]
    assert tok.decode(ids) == "hello world<|im_end|>"
    assert tok.decode(ids, skip_special_tokens=True) == "hello world"
    assert tok.is_special(2) and not tok.is_special(ids[0])
    assert tok.encode("12") == [tok.backend.token_to_id("1"), tok.backend.token_to_id("2")]
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}])
    assert text == "<|im_start|>user\nhi<|im_end|>\n"
    assert tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=True) == tok.encode(text, add_special_tokens=False)


def _round_trip(tmp_path: Path, qtype: Q, x: np.ndarray) -> torch.Tensor:
    path = tmp_path / f"{qtype.name}.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_tensor("t", quantize(x, qtype) if qtype != Q.F32 else x, raw_dtype=qtype if qtype != Q.F32 else None)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return _dequantize(read_gguf(path), "t")


@pytest.mark.parametrize(("qtype", "tol"), [(Q.F32, 0.0), (Q.F16, 2e-3), (Q.Q8_0, 0.02), (Q.Q5_0, 0.15), (Q.Q4_1, 0.25)])
def test_dequantize_round_trip(tmp_path: Path, qtype: Q, tol: float) -> None:
    x = np.random.default_rng(1).standard_normal((8, 64)).astype(np.float32)
    y = _round_trip(tmp_path, qtype, x)
    assert y.shape == (8, 64) and y.dtype == torch.float32
    assert (y - torch.from_numpy(x)).abs().max().item() <= tol


def _q4_k_reference(block: bytes) -> np.ndarray:
    """ggml's Q4_K: d, dmin (f16), 12 bytes of 6-bit scales/mins for 8 sub-blocks, 128 nibbles."""
    d, dmin = np.frombuffer(block[:4], dtype=np.float16).astype(np.float32)
    s, qs = block[4:16], block[16:]

    def scale_min(j: int) -> tuple[int, int]:
        if j < 4:
            return s[j] & 63, s[j + 4] & 63
        return (s[j + 4] & 0xF) | ((s[j - 4] >> 6) << 4), (s[j + 4] >> 4) | ((s[j] >> 6) << 4)

    out = []
    for chunk in range(4):
        q = qs[chunk * 32 : chunk * 32 + 32]
        for half, shift in ((0, 0), (1, 4)):
            sc, m = scale_min(2 * chunk + half)
            out += [d * sc * ((b >> shift) & 0xF) - dmin * m for b in q]
    return np.array(out, dtype=np.float32)


def _q6_k_reference(block: bytes) -> np.ndarray:
    """ggml's Q6_K: 128 low nibbles, 64 bytes of high 2-bit pairs, 16 int8 scales, d (f16)."""
    ql, qh = block[:128], block[128:192]
    sc = np.frombuffer(block[192:208], dtype=np.int8).astype(np.float32)
    d = np.frombuffer(block[208:210], dtype=np.float16).astype(np.float32)[0]
    y = np.zeros(256, dtype=np.float32)
    for n in range(2):
        lo, hi, s, base = ql[64 * n :], qh[32 * n :], sc[8 * n :], 128 * n
        for i in range(32):
            k = i // 16
            y[base + i] = d * s[k] * (((lo[i] & 0xF) | ((hi[i] & 3) << 4)) - 32)
            y[base + i + 32] = d * s[k + 2] * (((lo[i + 32] & 0xF) | (((hi[i] >> 2) & 3) << 4)) - 32)
            y[base + i + 64] = d * s[k + 4] * (((lo[i] >> 4) | (((hi[i] >> 4) & 3) << 4)) - 32)
            y[base + i + 96] = d * s[k + 6] * (((lo[i + 32] >> 4) | (((hi[i] >> 6) & 3) << 4)) - 32)
    return y


@pytest.mark.parametrize(("qtype", "reference"), [(Q.Q4_K, _q4_k_reference), (Q.Q6_K, _q6_k_reference)])
def test_dequantize_k_quants_against_reference(tmp_path: Path, qtype: Q, reference) -> None:
    """gguf cannot quantize K-types: write random blocks and compare to ggml's formulas."""
    rng = np.random.default_rng(2)
    block_bytes = gguf.GGML_QUANT_SIZES[qtype][1]
    raw = rng.integers(0, 256, size=(2, block_bytes), dtype=np.uint8)
    scale_at = {Q.Q4_K: (0, 2), Q.Q6_K: (208,)}[qtype]
    for row in raw:  # finite, modest f16 scales
        for at in scale_at:
            row[at : at + 2] = np.frombuffer(np.float16(rng.uniform(0.01, 0.1)).tobytes(), dtype=np.uint8)
    path = tmp_path / "k.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_tensor("t", raw, raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    got = _dequantize(read_gguf(path), "t")
    want = np.stack([reference(bytes(row)) for row in raw])
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-6, atol=1e-6)


def test_truncated_file(tiny_llama: tuple[Path, dict], tmp_path: Path) -> None:
    data = tiny_llama[0].read_bytes()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(data[: len(data) - 100])
    with pytest.raises(CorruptModelError, match="cut.gguf.*truncated"):
        load_checkpoint(cut)
    cut.write_bytes(data[:300])
    with pytest.raises(CorruptModelError, match="truncated GGUF header"):
        load_tokenizer(cut)


def test_a_corrupt_length_field_is_named(tiny_llama: tuple[Path, dict], tmp_path: Path) -> None:
    """A length no file could hold was reported as a truncated header needing byte 1.8e19."""
    data = bytearray(tiny_llama[0].read_bytes())
    data[24:32] = (2**64 - 1).to_bytes(8, "little")  # the first metadata key's length
    bad = tmp_path / "len.gguf"
    bad.write_bytes(bytes(data))
    with pytest.raises(CorruptModelError, match=r"len.gguf: corrupt GGUF string length 18446744073709551615 at byte 24 \(only \d+ bytes follow\)"):
        load_tokenizer(bad)


def test_bad_magic(tmp_path: Path) -> None:
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"NOPE" + bytes(64))
    with pytest.raises(CorruptModelError, match="bad.gguf: not a GGUF file"):
        load_checkpoint(bad)


def test_unknown_architecture(tmp_path: Path) -> None:
    write_gguf(tmp_path / "x.gguf", arch="mamba")
    with pytest.raises(UnsupportedArchitectureError, match="'mamba'"):
        load_checkpoint(tmp_path / "x.gguf")


def test_missing_weight(tmp_path: Path) -> None:
    write_gguf(tmp_path / "m.gguf", drop=("blk.1.ffn_up.weight",))
    with pytest.raises(MissingWeightError, match=r"m.gguf: missing weights layers\.1\.mlp\.up_proj\.weight"):
        load_checkpoint(tmp_path / "m.gguf")
    assert issubclass(MissingWeightError, ModelLoadError)


def test_reader_agrees_with_gguf_reader(tiny_llama: tuple[Path, dict]) -> None:
    ours = read_gguf(tiny_llama[0])
    theirs = gguf.GGUFReader(str(tiny_llama[0]))
    assert set(ours.tensors) == {t.name for t in theirs.tensors}
    for t in theirs.tensors:
        info = ours.tensors[t.name]
        assert info.offset == t.data_offset and info.qtype == t.tensor_type
        assert info.shape == tuple(int(n) for n in reversed(t.shape))
    assert ours.metadata["tokenizer.ggml.tokens"] == list(theirs.fields["tokenizer.ggml.tokens"].contents())
