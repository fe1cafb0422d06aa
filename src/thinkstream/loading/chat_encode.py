"""Chat messages to token ids where the text of a message is only ever text.

``apply_chat_template(tokenize=True)`` renders the conversation and tokenizes the whole
string, so special-token text inside a message (``hi<|im_end|>\\n<|im_start|>system\\n...``)
becomes real control tokens: a user can open a turn of their own. ``encode_chat`` keeps the
template's markers as the only special tokens:

1. Special-token text in the messages (every string but ``role``, and in ``tools`` /
   ``documents``) is swapped for placeholders no tokenizer matches; with none, the ids are
   ``apply_chat_template``'s, token for token.
2. The template is rendered with the placeholders, so every special token it yields is the
   template's own. The text is tokenized once; its special tokens cut it into segments,
   each tokenized on its own (a tokenizer matches added tokens before anything else)::

       | segment | <|im_start|> | segment: "user\\n" + content + ... | <|im_end|> | ...

3. A segment holding a placeholder is tokenized again with the placeholders put back and
   special tokens read as plain text (``encode_special_tokens``). BPE merges between a
   message and the template text beside it are what they would be without the markers.
"""

from __future__ import annotations

import functools
import json
import uuid
from typing import Any

import tokenizers


def encode_chat(tokenizer, messages: list[dict], add_generation_prompt: bool = True,
                **template_kwargs: Any) -> list[int]:
    """Token ids of ``messages`` through ``tokenizer``'s chat template, message text as text."""
    mask = _Mask(tokenizer)
    masked = mask.swap(messages, keep=("role",))
    kwargs = {k: mask.swap(v) if k in ("tools", "documents") else v
              for k, v in template_kwargs.items()}
    if not mask.originals:
        return list(tokenizer.apply_chat_template(messages, add_generation_prompt, tokenize=True,
                                                  **template_kwargs))
    text = tokenizer.apply_chat_template(masked, add_generation_prompt, tokenize=False, **kwargs)
    enc = tokenizer.backend.encode(text, add_special_tokens=False)
    ids: list[int] = []
    start, pending = 0, []  # the current segment: its first character, its ids
    for tid, (s, e) in zip(enc.ids, enc.offsets, strict=True):
        if tokenizer.is_special(tid):
            ids += _segment(tokenizer, mask, text, start, s, pending)
            ids.append(tid)
            start, pending = e, []
        else:
            pending.append(tid)
    return ids + _segment(tokenizer, mask, text, start, len(text), pending)


def _segment(tokenizer, mask: _Mask, text: str, start: int, end: int,
             ids: list[int]) -> list[int]:
    piece = text[start:end]
    if not mask.found_in(piece):
        return ids
    first, rest = _plain_backends(tokenizer.backend)
    backend = first if start == 0 else rest
    return list(backend.encode(mask.restore(piece), add_special_tokens=False).ids)


class _Mask:
    """Swaps special-token text for placeholders (private-use characters and a nonce that
    occur in no message) and back. The tokenizer finds the special-token text (its own
    matcher, in one pass over the text)."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        self.first_chars = _first_chars(tokenizer.backend)
        self.nonce = uuid.uuid4().hex
        self.originals: list[str] = []

    def swap(self, value: Any, keep: tuple[str, ...] = ()) -> Any:
        if isinstance(value, str):
            return self._swap_text(value)
        if isinstance(value, dict):
            return {k: v if k in keep else self.swap(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self.swap(v, keep) for v in value]
        return value

    def _swap_text(self, text: str) -> str:
        if not any(c in text for c in self.first_chars):
            return text
        enc = self.tokenizer.backend.encode(text, add_special_tokens=False)
        spans = [(s, e) for tid, (s, e) in zip(enc.ids, enc.offsets, strict=True)
                 if self.tokenizer.is_special(tid)]
        out, i = [], 0
        for s, e in spans:
            self.originals.append(text[s:e])
            out += [text[i:s], f"\ue000{self.nonce}:{len(self.originals) - 1}\ue001"]
            i = e
        return "".join(out) + text[i:]

    def found_in(self, text: str) -> bool:
        return self.nonce in text

    def restore(self, text: str) -> str:
        for k, original in enumerate(self.originals):
            text = text.replace(f"\ue000{self.nonce}:{k}\ue001", original)
        return text


@functools.lru_cache(maxsize=8)
def _first_chars(backend: tokenizers.Tokenizer) -> frozenset[str]:
    """First characters of the special tokens' text: a text without any holds none."""
    return frozenset(tok.content[0] for tok in backend.get_added_tokens_decoder().values()
                     if tok.special and tok.content)


@functools.lru_cache(maxsize=8)
def _plain_backends(backend: tokenizers.Tokenizer) -> tuple[tokenizers.Tokenizer, tokenizers.Tokenizer]:
    """Copies of ``backend`` that read special-token text as plain text: one for text at
    the start of a string, one for text after a special token (a SentencePiece pre-tokenizer
    that prefixes "▁" to the *first* section only must not prefix a later segment)."""
    spec = json.loads(backend.to_str())
    first = tokenizers.Tokenizer.from_str(json.dumps(spec))
    first.encode_special_tokens = True
    if not _never_prefix(spec.get("pre_tokenizer")):
        return first, first
    rest = tokenizers.Tokenizer.from_str(json.dumps(spec))
    rest.encode_special_tokens = True
    return first, rest


def _never_prefix(pre: dict | None) -> bool:
    """Turn a Metaspace "first" prefix into "never", in place; True if there was one."""
    if not pre:
        return False
    if pre.get("type") == "Sequence":
        return any([_never_prefix(p) for p in pre.get("pretokenizers", [])])
    if pre.get("type") == "Metaspace" and pre.get("prepend_scheme") == "first":
        pre["prepend_scheme"] = "never"
        return True
    return False
