"""The ``Tokenizer`` every other module uses: a ``tokenizers.Tokenizer`` plus the special ids
and chat template of the model. Built from ``tokenizer.json`` (``load_hf_tokenizer``) or from
GGUF metadata (``gguf_tokenizer.build_gguf_tokenizer``).
"""

from __future__ import annotations

import functools
import json
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import tokenizers

from thinkstream.loading.chat_encode import encode_chat
from thinkstream.loading.chat_template import NoChatTemplateError, checked_template, render_chat
from thinkstream.loading.errors import CorruptModelError

# One text at a time is tokenized on the calling thread (the engine overlaps it with the
# forward pass itself); the library's own thread pool would only compete for the cores.
# A value the user set is kept.
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def byte_alphabet() -> dict[int, str]:
    """GPT-2's printable spelling of each byte (byte-level BPE vocabularies): printable
    latin-1 as itself, the rest from U+0100 on."""
    keep = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    spelling, extra = {}, 0
    for b in range(256):
        if b in keep:
            spelling[b] = chr(b)
        else:
            spelling[b] = chr(256 + extra)
            extra += 1
    return spelling


_UNBYTE = {c: b for b, c in byte_alphabet().items()}
_BYTE_PIECE = re.compile(r"<0x([0-9A-Fa-f]{2})>")


class Tokenizer:
    """Text <-> token ids, special ids and chat-template rendering for one model."""

    def __init__(
        self,
        backend: tokenizers.Tokenizer,
        *,
        bos_token_id: int | None,
        eos_token_ids: Sequence[int],
        chat_template: str | None,
        special_tokens: dict[str, str] | None = None,
    ) -> None:
        self.backend = backend
        self.vocab_size: int = backend.get_vocab_size(with_added_tokens=True)
        self.bos_token_id = bos_token_id
        self.eos_token_ids: tuple[int, ...] = tuple(dict.fromkeys(eos_token_ids))
        self.chat_template = chat_template
        # Named special tokens as text ("bos_token": "<s>", ...), the variables templates see.
        self.special_tokens: dict[str, str] = dict(special_tokens or {})
        self._special_ids = frozenset(
            i for i, tok in backend.get_added_tokens_decoder().items() if tok.special
        )
        self._bytes: dict[int, bytes] = {}  # token_bytes, filled on use

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        # encode_batch_fast releases the GIL (encode does not) and skips the offsets nobody
        # reads here (4,096 tokens: 3.6 against encode_batch's 4.8 CPU ms, Zen 4): a long
        # text tokenized on one thread never stalls the engine's forward pass on another. With
        # TOKENIZERS_PARALLELISM unset it would hand the text to a pool of spinning threads
        # that take the forward pass's core (a 60 ms step measured 80-260 ms): see the module top.
        return self.backend.encode_batch_fast([text], add_special_tokens=add_special_tokens)[0].ids

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        return self.backend.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def convert_ids_to_tokens(self, ids: Sequence[int]) -> list[str]:
        return [self.backend.id_to_token(int(i)) for i in ids]

    def is_special(self, token_id: int) -> bool:
        return token_id in self._special_ids

    def token_bytes(self, token_id: int) -> bytes:
        """The bytes token ``token_id`` stands for, as the vocabulary spells them: a byte
        token's single byte (part of a UTF-8 character), a word piece with its leading space.
        Concatenated over a sequence they are the bytes of its text (special tokens as their
        text). Vocabularies whose decoder this does not know give the token's decoded text."""
        token_id = int(token_id)
        raw = self._bytes.get(token_id)
        if raw is None:
            raw = self._bytes[token_id] = self._spell(token_id)
        return raw

    def _spell(self, token_id: int) -> bytes:
        added = self._added.get(token_id)
        if added is not None:
            return added.encode("utf-8")
        piece = self.backend.id_to_token(token_id)
        if piece is None:
            return b""
        kinds, replaces = self._decoder_steps
        if "ByteLevel" in kinds and all(c in _UNBYTE for c in piece):
            return bytes(_UNBYTE[c] for c in piece)
        if "ByteFallback" in kinds and (m := _BYTE_PIECE.fullmatch(piece)):
            return bytes([int(m.group(1), 16)])
        if kinds <= {"Replace", "ByteFallback", "Fuse", "Strip"} and kinds:
            for pattern, content in replaces:
                piece = piece.replace(pattern, content)
            return piece.encode("utf-8")
        return self.decode([token_id]).encode("utf-8")

    @functools.cached_property
    def _added(self) -> dict[int, str]:
        return {i: tok.content for i, tok in self.backend.get_added_tokens_decoder().items()}

    @functools.cached_property
    def _decoder_steps(self) -> tuple[frozenset[str], list[tuple[str, str]]]:
        """The decoder's step types and its literal replacements (SentencePiece's "▁" -> " ")."""
        decoder = self.backend.decoder
        if decoder is None:
            return frozenset(), []
        spec = json.loads(decoder.__getstate__())
        steps = spec.get("decoders", [spec]) if spec.get("type") == "Sequence" else [spec]
        replaces = [(d["pattern"]["String"], d["content"]) for d in steps
                    if d.get("type") == "Replace" and "String" in d.get("pattern", {})]
        return frozenset(d.get("type") for d in steps), replaces

    def apply_chat_template(
        self,
        messages: list[dict],
        add_generation_prompt: bool = True,
        tokenize: bool = False,
        *,
        chat_template: str | None = None,
        **template_kwargs: Any,
    ) -> str | list[int]:
        """Render ``messages`` with the model's template, or ``chat_template`` in its place
        (as transformers does); ids if ``tokenize``."""
        source = chat_template if chat_template is not None else self.chat_template
        if source is None:
            raise NoChatTemplateError(
                "this model has no chat template; pass a plain-text prompt instead"
            )
        text = render_chat(
            source, messages, add_generation_prompt, self.special_tokens, **template_kwargs,
        )
        return self.encode(text, add_special_tokens=False) if tokenize else text

    def encode_chat(
        self,
        messages: list[dict],
        add_generation_prompt: bool = True,
        *,
        allow_special_tokens_in_content: bool = False,
        chat_template: str | None = None,
        **template_kwargs: Any,
    ) -> list[int]:
        """The ids a server should feed the model for ``messages``: those of
        ``apply_chat_template(tokenize=True)`` (``chat_template``: in place of the model's),
        except that special-token text inside a message is tokenized as plain text (see
        ``chat_encode``) unless ``allow_special_tokens_in_content``."""
        if chat_template is not None:
            template_kwargs["chat_template"] = chat_template
        if allow_special_tokens_in_content:
            return list(self.apply_chat_template(messages, add_generation_prompt, tokenize=True,
                                                 **template_kwargs))
        if self.chat_template is None and chat_template is None:
            raise NoChatTemplateError(
                "this model has no chat template; pass a plain-text prompt instead"
            )
        return encode_chat(self, list(messages), add_generation_prompt, **template_kwargs)

    def __repr__(self) -> str:
        return (f"Tokenizer(vocab_size={self.vocab_size}, bos={self.bos_token_id}, "
                f"eos={self.eos_token_ids}, chat_template={self.chat_template is not None})")


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise CorruptModelError(f"{path}: cannot read JSON ({err})") from err


def _token_text(value: Any) -> str | None:
    """tokenizer_config.json spells a special token as a string or as {"content": ...}."""
    if isinstance(value, dict):
        return value.get("content")
    return value if isinstance(value, str) else None


def _ids(value: Any) -> list[int]:
    if value is None:
        return []
    return [int(v) for v in value] if isinstance(value, list) else [int(value)]


def _chat_template(directory: Path, tok_config: dict) -> str | None:
    jinja_file = directory / "chat_template.jinja"
    if jinja_file.is_file():
        return checked_template(jinja_file.read_text(encoding="utf-8"), str(jinja_file))
    template = tok_config.get("chat_template")
    if isinstance(template, list):  # named templates: [{"name": "default", "template": ...}, ...]
        named = {t.get("name"): t.get("template") for t in template}
        template = named.get("default")
    return checked_template(template, str(directory / "tokenizer_config.json"))


def load_hf_tokenizer(directory: Path) -> Tokenizer:
    """Tokenizer of a Hugging Face model directory (tokenizer.json + tokenizer_config.json)."""
    tok_file = directory / "tokenizer.json"
    if not tok_file.is_file():
        raise CorruptModelError(f"{directory}: missing tokenizer.json")
    try:
        backend = tokenizers.Tokenizer.from_file(str(tok_file))
    except Exception as err:  # tokenizers raises a bare Exception on malformed files
        raise CorruptModelError(f"{tok_file}: cannot parse tokenizer ({err})") from err
    cfg_file = directory / "tokenizer_config.json"
    tok_config = _read_json(cfg_file) if cfg_file.is_file() else {}
    model_config = _read_json(directory / "config.json") if (directory / "config.json").is_file() else {}
    gen_file = directory / "generation_config.json"
    gen_config = _read_json(gen_file) if gen_file.is_file() else {}

    special = {name: text for name in ("bos_token", "eos_token", "unk_token", "pad_token")
               if (text := _token_text(tok_config.get(name))) is not None}
    bos_text = special.get("bos_token")
    bos = backend.token_to_id(bos_text) if bos_text else None
    if bos is None:
        bos = next(iter(_ids(model_config.get("bos_token_id"))), None)
    eos = _ids(model_config.get("eos_token_id")) + _ids(gen_config.get("eos_token_id"))
    eos_text = special.get("eos_token")
    if eos_text and backend.token_to_id(eos_text) is not None:
        eos.append(backend.token_to_id(eos_text))
    return Tokenizer(backend, bos_token_id=bos, eos_token_ids=eos,
                     chat_template=_chat_template(directory, tok_config), special_tokens=special)
