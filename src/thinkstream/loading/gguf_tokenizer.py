"""Build a ``Tokenizer`` from the ``tokenizer.ggml.*`` metadata of a GGUF file.

Two vocabularies occur:

* ``gpt2``: byte-level BPE with explicit merges; text is split by a regex chosen by
  ``tokenizer.ggml.pre`` (SmolLM2's ``smollm`` also splits every digit, as its tokenizer.json does).
* ``llama``: SentencePiece BPE with byte fallback. The file has no merges, so they are derived:
  every split of a piece into two pieces of the vocabulary is a merge, ranked by the priority of
  the merged piece (its score; for Gemma the file order, see ``_merge_priority``).

Token types: control (3) become special added tokens, user-defined (4) plain added tokens, both
matched whole before BPE runs, as llama.cpp does.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from tokenizers import AddedToken, Regex, decoders, normalizers, pre_tokenizers, processors
from tokenizers import Tokenizer as Backend
from tokenizers.models import BPE

from thinkstream.loading.chat_template import checked_template
from thinkstream.loading.errors import UnsupportedArchitectureError
from thinkstream.loading.tokenizer import Tokenizer, byte_alphabet

log = logging.getLogger(__name__)

NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

# Pre-tokenizer regexes of the byte-level vocabularies we know (llama.cpp's `tokenizer.ggml.pre`).
_GPT2_SPLIT = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                 r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2_SPLIT = _LLAMA3_SPLIT.replace(r"\p{N}{1,3}", r"\p{N}")
_SPLITS = {"llama-bpe": _LLAMA3_SPLIT, "llama3": _LLAMA3_SPLIT, "llama-v3": _LLAMA3_SPLIT,
           "qwen2": _QWEN2_SPLIT, "deepseek-r1-qwen": _QWEN2_SPLIT}

# Control tokens that end a turn in chat formats: generation stops there too (llama.cpp's rule,
# less `<|endoftext|>`, which separates documents and is the eos only when the file says so).
_END_OF_TURN = ("<end_of_turn>", "<|eot_id|>", "<|eom_id|>", "<|im_end|>", "<|end|>")


def _byte_level_model(tokens: Sequence[str], merges: Sequence[str], pre: str) -> Backend:
    alphabet = byte_alphabet()
    letters = set(alphabet.values())
    vocab = {(t if set(t) <= letters else "".join(alphabet[b] for b in t.encode())): i
             for i, t in enumerate(tokens)}
    pairs = [tuple(m.split(" ", 1)) for m in merges]
    backend = Backend(BPE(vocab, pairs))
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    split = _SPLITS.get(pre)
    if split is None and pre not in ("default", "gpt2", "smollm", ""):
        log.warning("unknown tokenizer.ggml.pre %r: using GPT-2's split", pre)
    steps = [pre_tokenizers.Digits(individual_digits=True)] if pre == "smollm" else []
    steps += [pre_tokenizers.Split(Regex(split or _GPT2_SPLIT), behavior="isolated"), byte_level]
    backend.pre_tokenizer = pre_tokenizers.Sequence(steps)
    backend.decoder = decoders.ByteLevel()
    return backend


def _merge_priority(tokens: Sequence[str], scores: Sequence[float] | None, arch: str) -> list[float]:
    """Higher merges first. Gemma's normal pieces score exactly -(index - k), but its user-defined
    pieces (space runs) carry a flat -1000 although they merge first: its file order is the truth."""
    if scores is None or arch.startswith("gemma"):
        return [-float(i) for i in range(len(tokens))]
    return [float(s) for s in scores]


def _derive_merges(tokens: Sequence[str], types: Sequence[int], priority: Sequence[float]) -> list[tuple[str, str]]:
    index = {t: i for i, t in enumerate(tokens)}
    ranked = []
    for i, piece in enumerate(tokens):
        if types[i] in (CONTROL, BYTE, UNUSED):
            continue
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in index and right in index:
                # best piece first; for one piece, the longer left half first
                ranked.append((-priority[i], -cut, i, left, right))
    ranked.sort()
    return [(left, right) for *_, left, right in ranked]


def _sentencepiece_model(md: dict[str, Any], tokens: list[str], types: Sequence[int], arch: str) -> Backend:
    # A piece of two or more spaces is stored with real spaces; the model sees "▁" for a space.
    tokens = ["\u2581" * len(t) if len(t) > 1 and not t.strip(" ") else t for t in tokens]
    priority = _merge_priority(tokens, md.get("tokenizer.ggml.scores"), arch)
    unk_id = md.get("tokenizer.ggml.unknown_token_id")
    backend = Backend(BPE({t: i for i, t in enumerate(tokens)}, _derive_merges(tokens, types, priority),
                          unk_token=tokens[unk_id] if unk_id is not None else None,
                          fuse_unk=True, byte_fallback=True))
    decode_steps = [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()]
    if md.get("tokenizer.ggml.add_space_prefix", True):
        backend.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="first", split=False)
        decode_steps.append(decoders.Strip(" ", 1, 0))
    else:
        backend.normalizer = normalizers.Replace(" ", "\u2581")
    backend.decoder = decoders.Sequence(decode_steps)
    return backend


def _add_tokens(backend: Backend, tokens: Sequence[str], types: Sequence[int]) -> None:
    vocab = backend.get_vocab()
    control = [AddedToken(t, special=True, normalized=False)
               for t, ty in zip(tokens, types, strict=True) if ty == CONTROL and vocab.get(t) is not None]
    user = [AddedToken(t, special=False, normalized=False)
            for t, ty in zip(tokens, types, strict=True) if ty == USER_DEFINED and vocab.get(t) is not None]
    backend.add_special_tokens(control)
    backend.add_tokens(user)


def _post_processor(tokens: Sequence[str], bos: int | None, eos: int | None, md: dict) -> Any:
    """Adds bos/eos around the text when the file says so (SentencePiece vocabularies default to bos)."""
    default_bos = md.get("tokenizer.ggml.model") == "llama"
    add = []
    if md.get("tokenizer.ggml.add_bos_token", default_bos) and bos is not None:
        add.append(("bos", bos))
    if md.get("tokenizer.ggml.add_eos_token", False) and eos is not None:
        add.append(("eos", eos))
    if not add:
        return None
    head = [tokens[i] for kind, i in add if kind == "bos"]
    tail = [tokens[i] for kind, i in add if kind == "eos"]
    return processors.TemplateProcessing(
        single=[*head, "$A", *tail], pair=[*head, "$A", *tail, "$B", *tail],
        special_tokens=[(tokens[i], i) for _, i in add])


def eos_token_ids(md: dict[str, Any]) -> tuple[int, ...]:
    """``eos_token_id``, then ``eot``/``eom`` ids, then control tokens that end a chat turn."""
    tokens, types = md["tokenizer.ggml.tokens"], md.get("tokenizer.ggml.token_type")
    ids = [md.get(f"tokenizer.ggml.{k}_token_id") for k in ("eos", "eot", "eom")]
    if types is not None:
        ids += [i for i, t in enumerate(tokens) if t in _END_OF_TURN and types[i] == CONTROL]
    return tuple(dict.fromkeys(int(i) for i in ids if i is not None))


def build_gguf_tokenizer(md: dict[str, Any], source: str = "GGUF") -> Tokenizer:
    """The tokenizer in a GGUF file's metadata; ``source`` (the file) names it in errors."""
    kind = md.get("tokenizer.ggml.model")
    tokens: list[str] = md["tokenizer.ggml.tokens"]
    types = md.get("tokenizer.ggml.token_type")
    types = [int(t) for t in types] if types is not None else [NORMAL] * len(tokens)
    arch = md.get("general.architecture", "")
    if kind == "gpt2":
        backend = _byte_level_model(tokens, md.get("tokenizer.ggml.merges", []), md.get("tokenizer.ggml.pre", "default"))
    elif kind == "llama":
        backend = _sentencepiece_model(md, tokens, types, arch)
    else:
        raise UnsupportedArchitectureError(f"unsupported GGUF tokenizer model {kind!r}")
    _add_tokens(backend, tokens, types)
    bos, eos = md.get("tokenizer.ggml.bos_token_id"), md.get("tokenizer.ggml.eos_token_id")
    post = _post_processor(tokens, bos, eos, md)
    if post is not None:
        backend.post_processor = post
    names = {"bos_token": bos, "eos_token": eos, "unk_token": md.get("tokenizer.ggml.unknown_token_id"),
             "pad_token": md.get("tokenizer.ggml.padding_token_id")}
    special = {name: tokens[i] for name, i in names.items() if i is not None and 0 <= i < len(tokens)}
    return Tokenizer(backend, bos_token_id=bos, eos_token_ids=eos_token_ids(md),
                     chat_template=checked_template(md.get("tokenizer.chat_template"),
                                                    f"{source}: tokenizer.chat_template"),
                     special_tokens=special)
