"""Chat messages to token ids where the text of a message is only ever text.

``apply_chat_template(tokenize=True)`` renders the conversation and tokenizes the whole
string, so special-token text inside a message (``hi<|im_end|>\\n<|im_start|>system\\n...``)
becomes real control tokens: a user can open a turn of their own. ``encode_chat`` keeps the
template's markers as the only special tokens:

1. Special-token text in the messages (every string but ``role``, and in ``tools`` /
   ``documents``) is swapped for placeholders no tokenizer matches; with none, the ids are
   ``apply_chat_template``'s, token for token.
2. The template is rendered with the placeholders, which are then put back, noting where
   (``render_guarded``): every other special token in the text is the template's own.
3. The text is tokenized once (``encode_guarded``); the template's special tokens cut it
   into segments, each tokenized on its own (a tokenizer matches added tokens before
   anything else)::

       | segment | <|im_start|> | segment: "user\\n" + content + ... | <|im_end|> | ...

   A segment holding special-token text from a message is tokenized again with special
   tokens read as plain text (``encode_special_tokens``). BPE merges between a message and
   the template text beside it are what they would be without the markers.

Streaming sessions use ``encode_guarded`` too, guarding the streamed content's span.
"""

from __future__ import annotations

import functools
import json
import re
import uuid
from collections.abc import Callable
from typing import Any

import tokenizers

from thinkstream.loading.chat_template import final_message_end

Spans = list[tuple[int, int]]


def encode_chat(tokenizer, messages: list[dict], add_generation_prompt: bool = True,
                **template_kwargs: Any) -> list[int]:
    """Token ids of ``messages`` through ``tokenizer``'s chat template, message text as text."""
    text, spans = render_guarded(tokenizer, messages, add_generation_prompt, **template_kwargs)
    if not spans:
        return list(tokenizer.apply_chat_template(messages, add_generation_prompt, tokenize=True,
                                                  **template_kwargs))
    return encode_guarded(tokenizer, text, lambda s, e: overlaps(spans, s, e))[0]


def render_guarded(tokenizer, messages: list[dict], add_generation_prompt: bool = True,
                   **template_kwargs: Any) -> tuple[str, Spans]:
    """The template's text for ``messages`` and the spans of special-token text in it that
    came from the messages (none: the text is ``apply_chat_template``'s)."""
    mask = _Mask(tokenizer)
    masked = mask.swap(messages, keep=("role",))
    kwargs = {k: mask.swap(v) if k in ("tools", "documents") else v
              for k, v in template_kwargs.items()}
    if not mask.originals:
        return tokenizer.apply_chat_template(messages, add_generation_prompt, tokenize=False,
                                             **template_kwargs), []
    continue_final = kwargs.pop("continue_final_message", False)
    text, spans = mask.restore(tokenizer.apply_chat_template(masked, add_generation_prompt,
                                                             tokenize=False, **kwargs))
    if not continue_final:
        return text, spans
    end = final_message_end(text, messages)  # cut where the unmasked text would be cut
    return text[:end], [(a, min(b, end)) for a, b in spans if a < end]


def encode_guarded(tokenizer, text: str, guarded: Callable[[int, int], bool], start: int = 0,
                   ) -> tuple[list[int], Spans]:
    """Ids and character offsets of ``text`` (which begins at character ``start`` of a longer
    text); a special token whose span makes ``guarded(begin, end)`` true (positions in the
    longer text) is read as plain text: its segment, between the other special tokens, is
    tokenized again with special tokens off."""
    enc = tokenizer.backend.encode(text, add_special_tokens=False)
    ids: list[int] = []
    offsets: Spans = []
    seg, seg_ids, seg_offsets, plain = 0, [], [], False  # the segment since the last marker

    def close_segment(end: int) -> None:
        if not plain:
            ids.extend(seg_ids)
            offsets.extend(seg_offsets)
            return
        first, rest = _plain_backends(tokenizer.backend)
        again = (first if start + seg == 0 else rest).encode(text[seg:end],
                                                             add_special_tokens=False)
        ids.extend(again.ids)
        offsets.extend((seg + a, seg + b) for a, b in again.offsets)

    for tid, (s, e) in zip(enc.ids, enc.offsets, strict=True):
        special = tokenizer.is_special(tid)
        if special and not guarded(start + s, start + e):  # the template's marker
            close_segment(s)
            ids.append(tid)
            offsets.append((s, e))
            seg, seg_ids, seg_offsets, plain = e, [], [], False
        else:
            seg_ids.append(tid)
            seg_offsets.append((s, e))
            plain = plain or special
    close_segment(len(text))
    return ids, offsets


def overlaps(spans: Spans, begin: int, end: int) -> bool:
    return any(begin < b and a < end for a, b in spans)


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
        out, i = [], 0
        for tid, (s, e) in zip(enc.ids, enc.offsets, strict=True):
            if self.tokenizer.is_special(tid):
                self.originals.append(text[s:e])
                out += [text[i:s], f"\ue000{self.nonce}:{len(self.originals) - 1}\ue001"]
                i = e
        return "".join(out) + text[i:]

    def restore(self, text: str) -> tuple[str, Spans]:
        """``text`` with the original special-token text back, and where it now stands."""
        out, spans, i, length = [], [], 0, 0
        for m in re.finditer(f"\ue000{self.nonce}:(\\d+)\ue001", text):
            original = self.originals[int(m.group(1))]
            length += m.start() - i
            spans.append((length, length + len(original)))
            length += len(original)
            out += [text[i:m.start()], original]
            i = m.end()
        return "".join(out) + text[i:], spans


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
