"""``Tokenizer.token_bytes``: the bytes each token stands for, byte tokens included, so the
bytes of a token sequence concatenate to its text (what OpenAI's logprob ``bytes`` report)."""

from __future__ import annotations

from thinkstream.loading.gguf_tokenizer import build_gguf_tokenizer

TEXT = "hi 東京 🙂 café"


def test_byte_level_bpe(tiny_tok) -> None:
    ids = tiny_tok.encode(TEXT, add_special_tokens=False)
    pieces = [tiny_tok.token_bytes(i) for i in ids]
    assert b"".join(pieces) == TEXT.encode("utf-8")
    assert [b"\xe6", b"\x9d", b"\xb1"] == pieces[pieces.index(b"\xe6"):pieces.index(b"\xe6") + 3]
    end = tiny_tok.encode("<|im_end|>", add_special_tokens=False)[0]
    assert tiny_tok.token_bytes(end) == b"<|im_end|>"


def test_sentencepiece_with_byte_fallback() -> None:
    """A SentencePiece vocabulary (llama-style GGUF): pieces spell spaces as "▁", characters
    outside the vocabulary fall back to <0xNN> byte tokens."""
    words = ["\u2581", "h", "i", "\u2581h", "\u2581hi", "c", "a", "f", "é", "ca", "caf", "café",
             "\u2581caf", "\u2581café"]
    tokens = ["<unk>", "<s>", "</s>", *[f"<0x{b:02X}>" for b in range(256)], *words]
    types = [2, 3, 3] + [6] * 256 + [1] * len(words)
    tok = build_gguf_tokenizer({
        "tokenizer.ggml.model": "llama", "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.token_type": types, "tokenizer.ggml.scores": [0.0] * len(tokens),
        "tokenizer.ggml.bos_token_id": 1, "tokenizer.ggml.eos_token_id": 2,
        "tokenizer.ggml.unknown_token_id": 0, "tokenizer.ggml.add_bos_token": False})
    ids = tok.encode(TEXT, add_special_tokens=False)
    pieces = [tok.token_bytes(i) for i in ids]
    assert pieces[0] == b" hi" and b"\xe6" in pieces and pieces[-1] == " café".encode()
    # the decoder strips the leading space of the text; the token keeps it
    assert b"".join(pieces) == (" " + TEXT).encode("utf-8") == (" " + tok.decode(ids)).encode()
