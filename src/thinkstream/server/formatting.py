"""Engine outputs -> OpenAI response bodies and stream chunks.

``CompletionView`` and ``ChatView`` know one request's id, model name and options; each
turns the final ``RequestOutput``s into a response body, or an output stream into chunks
shaped exactly like OpenAI's (the ``openai`` client parses them). Choice ``index`` is
``prompt_index * n + sequence_index``. Log-probabilities that are not finite become
-9999.0, since JSON has no infinity.

Token fields follow OpenAI's schema when a token holds only part of a UTF-8 character (an
emoji or CJK character split by byte-level BPE): ``bytes`` is the token's own bytes, so the
bytes of consecutive tokens concatenate to the text's; ``token`` is its text, or, when its
bytes are not whole characters, the bytes escaped as ``\\xNN`` (chat) or ``bytes:\\xNN``
(completions), as OpenAI writes them. ``text_offset`` counts characters of the response
text: a token starts at the number of whole characters before its first byte, so the tokens
of one split character share an offset, and a stream continues where its last chunk ended.

vLLM's output options (``prompt_logprobs``, ``return_tokens_as_token_ids``,
``return_token_ids``, chat ``echo``, ``continuous_usage_stats``) are the views' keyword
fields, shaped in ``vllm_fields``.
"""

from __future__ import annotations

import codecs
import dataclasses
import math
import time
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

from thinkstream.engine.request import CompletionOutput, Logprob, RequestOutput
from thinkstream.parallel.config import reasoning_text
from thinkstream.parsers.output import Delta, OutputParser, ParserSpec, parse_output
from thinkstream.parsers.tool_calls import CallStart
from thinkstream.server.vllm_fields import prompt_logprobs_body, running_usage, token_id_name


def _lp(x: float) -> float:
    return x if math.isfinite(x) else -9999.0


def _top(entry: dict[int, Logprob], k: int | None) -> list[tuple[int, float]]:
    """The ``k`` most likely tokens of a position (ids and log-probs), best first."""
    ranked = sorted((lp.rank, tid, lp.logprob) for tid, lp in entry.items()
                    if lp.rank is not None and lp.rank <= (k or 0))
    return [(tid, logprob) for _, tid, logprob in ranked]


def _reasoned(o: CompletionOutput) -> int:
    """Tokens an output sampled besides its answer: parallel paths, think-while-reading
    notes and passes (OpenAI's reasoning tokens, counted in ``completion_tokens``)."""
    return o.num_path_tokens + o.num_reasoning_tokens


def _usage(prompt_tokens: int, completion_tokens: int, path_tokens: int = 0,
           cached_tokens: int = 0) -> dict:
    """OpenAI's usage; reasoning tokens (``_reasoned``) count as completion tokens;
    ``cached_tokens``: prompt tokens served from the prefix cache (``prompt_tokens_details``,
    as OpenAI reports it)."""
    usage = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
             "total_tokens": prompt_tokens + completion_tokens,
             "prompt_tokens_details": {"cached_tokens": cached_tokens}}
    if path_tokens:
        usage["completion_tokens_details"] = {"reasoning_tokens": path_tokens}
    return usage


@dataclass
class _View(ABC):
    id: str
    model: str
    tokenizer: object
    created: int = field(default_factory=lambda: int(time.time()), init=False)
    tokens_as_ids: bool = field(default=False, kw_only=True)  # logprobs name "token_id:N"
    prompt_logprobs: int | None = field(default=None, kw_only=True)  # vLLM's top k
    continuous_usage: bool = field(default=False, kw_only=True)  # usage on every chunk
    return_token_ids: bool = field(default=False, kw_only=True)  # vLLM's token_ids fields
    _sent: dict[int, int] = field(default_factory=dict, init=False, repr=False)  # idx -> tokens

    def token_bytes(self, token_id: int) -> bytes:
        return self.tokenizer.token_bytes(token_id)

    def text_of(self, token_id: int) -> str:
        """The token's text; bytes that are not whole UTF-8 characters escaped (``\\xNN``)."""
        return self.token_bytes(token_id).decode("utf-8", "backslashreplace")

    def token_str(self, token_id: int) -> str:
        """A token as logprobs name it: its text, or ``token_id:N``."""
        return token_id_name(token_id) if self.tokens_as_ids else self.text_of(token_id)

    @abstractmethod
    def prompt_tokens_of(self, idx: int) -> int:
        """Prompt tokens of choice ``idx`` (for ``continuous_usage_stats``)."""

    def prompt_logprobs_of(self, out: RequestOutput) -> list[dict | None]:
        return prompt_logprobs_body(out.prompt_logprobs, list(out.prompt_token_ids),
                                    self.prompt_logprobs or 0, self.text_of)

    def ids_of(self, choice: dict, ids: Sequence[int],
               prompt: Sequence[int] | None = None) -> dict:
        """``choice`` with vLLM's ``token_ids`` (and ``prompt_token_ids``) when asked for."""
        if self.return_token_ids:
            choice["token_ids"] = list(ids)
            if prompt is not None:
                choice["prompt_token_ids"] = list(prompt)
        return choice

    def with_usage(self, body: dict) -> dict:
        """``body`` (a chunk of one choice) with its running usage (continuous_usage_stats)."""
        if self.continuous_usage and body["choices"] and "usage" not in body:
            idx = body["choices"][0]["index"]
            body["usage"] = running_usage(self.prompt_tokens_of(idx), self._sent.get(idx, 0))
        return body


class _Offsets:
    """Character offsets of consecutive tokens in a text, from their bytes: a token starts
    at the number of whole characters decoded before it (a character split over tokens
    counts once it is complete). Special tokens count as their text unless skipped; with
    ``text`` (an echoed prompt as the client sent it), a special token counts only where
    its text stands in ``text``: the BOS the tokenizer added is in no text."""

    def __init__(self, view: _View, start: int = 0, skip_special: bool = False,
                 text: str | None = None) -> None:
        self.view, self.chars, self.skip_special, self.text = view, start, skip_special, text
        self._utf8 = codecs.getincrementaldecoder("utf-8")("replace")

    def take(self, ids: list[int]) -> list[int]:
        offsets = []
        for tid in ids:
            offsets.append(self.chars)
            special = self.view.tokenizer.is_special(tid)
            if special and self.skip_special:
                continue
            piece = self._utf8.decode(self.view.token_bytes(tid))
            if special and self.text is not None and not self.text.startswith(piece, self.chars):
                continue
            self.chars += len(piece)
        return offsets


@dataclass
class CompletionView(_View):
    prompts: list = field(default_factory=list)
    prompt_ids: list[list[int]] = field(default_factory=list)
    echo: bool = False
    logprobs: int | None = None
    n: int = 1
    skip_special_tokens: bool = True  # as the output text was detokenized
    score_only: bool = False  # max_tokens=0 with echo: the prompt is the whole answer

    def prompt_text(self, i: int) -> str:
        p = self.prompts[i]
        return p if isinstance(p, str) else self.tokenizer.decode(p)

    def prompt_tokens_of(self, idx: int) -> int:
        return len(self.prompt_ids[idx // self.n])

    def token_str(self, token_id: int) -> str:
        if self.tokens_as_ids:
            return token_id_name(token_id)
        raw = self.token_bytes(token_id)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:  # part of a character: OpenAI's "bytes:\\xNN" form
            return "bytes:" + raw.decode("utf-8", "backslashreplace")

    def _output_offsets(self, i: int) -> _Offsets:
        """Offsets of prompt ``i``'s output tokens: after the prompt text when it is echoed
        (the echoed prompt's own tokens count from 0)."""
        return _Offsets(self, len(self.prompt_text(i)) if self.echo else 0,
                        self.skip_special_tokens)

    def _logprobs(self, entries: list[dict[int, Logprob] | None], ids: list[int],
                  offsets: list[int]) -> dict:
        tokens, lps, tops = [], [], []
        for tid, e in zip(ids, entries, strict=True):
            s = self.token_str(tid)
            tokens.append(s)
            if e is None:
                lps.append(None)
                tops.append(None)
                continue
            lps.append(_lp(e[tid].logprob))
            top = {self.token_str(t): _lp(lp) for t, lp in _top(e, self.logprobs)}
            top.setdefault(s, _lp(e[tid].logprob))
            tops.append(top)
        return {"tokens": tokens, "token_logprobs": lps, "top_logprobs": tops,
                "text_offset": offsets}

    def _choice(self, i: int, out: RequestOutput, o: CompletionOutput) -> dict:
        o = self._scored(o)
        text, ids, entries = o.text, list(o.token_ids), list(o.logprobs or [])[: len(o.token_ids)]
        num_prompt = 0
        if self.echo:
            text = self.prompt_text(i) + text
            plp = out.prompt_logprobs or [None] * len(self.prompt_ids[i])
            ids, entries = self.prompt_ids[i] + ids, list(plp) + entries
            num_prompt = len(self.prompt_ids[i])
        logprobs = None
        if self.logprobs is not None:
            prompt_offsets = _Offsets(self, text=self.prompt_text(i)).take(ids[:num_prompt])
            offsets = prompt_offsets + self._output_offsets(i).take(ids[num_prompt:])
            logprobs = self._logprobs(entries, ids, offsets)
        choice = {"index": i * self.n + o.index, "text": text, "logprobs": logprobs,
                  "finish_reason": o.finish_reason, "stop_reason": o.stop_reason}
        if o.paths:  # parallel paths: as a chat message carries them
            choice.update(reasoning_content=reasoning_text(o.paths), paths=list(o.paths))
        if self.prompt_logprobs is not None:  # vLLM's, on each choice
            choice["prompt_logprobs"] = self.prompt_logprobs_of(out)
        return self.ids_of(choice, o.token_ids, self.prompt_ids[i])

    def response(self, finals: list[RequestOutput]) -> dict:
        choices = [self._choice(i, out, o) for i, out in enumerate(finals) for o in out.outputs]
        paths = sum(_reasoned(o) for out in finals for o in out.outputs)
        completion = paths + sum(len(self._scored(o).token_ids) for out in finals for o in out.outputs)
        return {"id": self.id, "object": "text_completion", "created": self.created,
                "model": self.model, "choices": choices,
                "usage": _usage(sum(map(len, self.prompt_ids)), completion, paths,
                                cached_tokens=sum(out.num_cached_tokens for out in finals))}

    def chunk(self, choices: list[dict], usage: dict | None = None) -> dict:
        return self.with_usage(_envelope(self, "text_completion", choices, usage))

    def _scored(self, o: CompletionOutput) -> CompletionOutput:
        """Prompt scoring (``max_tokens: 0``): the engine sampled one token to finish the
        prompt's pass; the answer holds none of it and ends with ``length``."""
        if not self.score_only:
            return o
        return dataclasses.replace(o, text="", token_ids=[], logprobs=[], new_text="",
                                   new_token_ids=[], stop_reason=None,
                                   finish_reason="length" if o.finish_reason else None)

    async def chunks(self, outputs: AsyncIterator[tuple[int, RequestOutput]],
                     include_usage: bool) -> AsyncIterator[dict]:
        sent = self._sent  # choice index -> tokens sent
        counters: dict[int, _Offsets] = {}  # choice index -> text offsets so far
        done: set[int] = set()
        completion = paths = 0
        cached: dict[int, int] = {}  # prompt index -> its prefix-cache hit
        async for i, out in outputs:
            cached[i] = out.num_cached_tokens
            for o in map(self._scored, out.outputs):
                idx = i * self.n + o.index
                if idx in done:
                    continue
                for path, delta in o.new_paths:  # parallel paths: tagged, before the text
                    yield self.chunk([{"index": idx, "text": "", "reasoning_content": delta,
                                       "path": path, "logprobs": None, "finish_reason": None}])
                first = idx not in sent
                start = sent.get(idx, 0)
                new_ids = list(o.token_ids[start:])
                sent[idx] = len(o.token_ids)
                text = o.new_text
                ids, entries = new_ids, list(o.logprobs or [])[start: start + len(new_ids)]
                prompt_offsets: list[int] = []
                if first:
                    counters[idx] = self._output_offsets(i)
                    if self.echo:
                        text = self.prompt_text(i) + text
                        plp = out.prompt_logprobs or [None] * len(self.prompt_ids[i])
                        ids, entries = self.prompt_ids[i] + ids, list(plp) + entries
                        prompt_offsets = _Offsets(self, text=self.prompt_text(i)).take(
                            self.prompt_ids[i])
                if not (text or ids or o.finish_reason):
                    continue
                if o.finish_reason:
                    completion += len(o.token_ids) + _reasoned(o)
                    paths += _reasoned(o)
                    done.add(idx)
                logprobs = None
                if self.logprobs is not None:
                    offsets = prompt_offsets + counters[idx].take(new_ids)
                    logprobs = self._logprobs(entries, ids, offsets)
                yield self.chunk([self.ids_of(
                    {"index": idx, "text": text, "logprobs": logprobs,
                     "finish_reason": o.finish_reason, "stop_reason": o.stop_reason},
                    new_ids, self.prompt_ids[i] if first else None)])
        if include_usage:
            yield self.chunk([], _usage(sum(map(len, self.prompt_ids)), completion, paths,
                                        cached_tokens=sum(cached.values())))


@dataclass
class ChatView(_View):
    num_prompt_tokens: int = 0
    logprobs: int | None = None
    n: int = 1
    parser: ParserSpec = field(default_factory=ParserSpec)  # reasoning and tool calls
    echo: str = field(default="", kw_only=True)  # vLLM's chat echo (``vllm_fields.chat_echo``)
    prompt_token_ids: list[int] = field(default_factory=list, kw_only=True)  # return_token_ids
    role: str = field(default="assistant", kw_only=True)  # ``vllm_fields.response_role``

    def prompt_tokens_of(self, idx: int) -> int:
        return self.num_prompt_tokens

    def _logprobs(self, entries: list[dict[int, Logprob]], ids: list[int]) -> dict:
        content = []
        for tid, e in zip(ids, entries, strict=True):
            top = [{"token": self.token_str(k), "logprob": _lp(lp),
                    "bytes": list(self.token_bytes(k))} for k, lp in _top(e, self.logprobs)]
            content.append({"token": self.token_str(tid), "logprob": _lp(e[tid].logprob),
                            "bytes": list(self.token_bytes(tid)), "top_logprobs": top})
        return {"content": content}

    def message(self, o: CompletionOutput) -> tuple[dict, str | None]:
        """The assistant message of a finished choice and its finish reason."""
        message: dict = {"role": self.role, "content": o.text}
        reason = o.finish_reason
        if self.parser.active:
            parsed = parse_output(self.parser.make(), o.text)
            message["content"] = parsed.content or (None if parsed.calls else "")
            if parsed.reasoning:
                message["reasoning_content"] = parsed.reasoning
            if parsed.calls:
                message["tool_calls"] = [{"id": c.id, "type": "function", "function": {
                    "name": c.name, "arguments": c.arguments}} for c in parsed.calls]
                reason = call_finish_reason(reason)
        if o.reasoning_content:  # think while reading: the reasoning, apart from the answer
            message["reasoning_content"] = o.reasoning_content
        if o.paths:  # parallel paths: each path's text, and all of them as the reasoning
            message["reasoning_content"] = reasoning_text(o.paths)
            message["paths"] = list(o.paths)
        return message, reason

    def response(self, finals: list[RequestOutput]) -> dict:
        out = finals[0]
        choices = []
        for o in out.outputs:
            lps = None
            if self.logprobs is not None:
                lps = self._logprobs(list(o.logprobs or [])[: len(o.token_ids)], o.token_ids)
            message, reason = self.message(o)
            if self.echo:
                message["content"] = self.echo + (message["content"] or "")
            choices.append(self.ids_of({"index": o.index, "message": message,
                                        "logprobs": lps, "finish_reason": reason,
                                        "stop_reason": o.stop_reason}, o.token_ids))
        paths = sum(_reasoned(o) for o in out.outputs)
        completion = sum(len(o.token_ids) for o in out.outputs) + paths
        body = {"id": self.id, "object": "chat.completion", "created": self.created,
                "model": self.model, "choices": choices,
                "usage": _usage(self.num_prompt_tokens, completion, paths, out.num_cached_tokens)}
        if self.prompt_logprobs is not None:  # vLLM's, top-level
            body["prompt_logprobs"] = self.prompt_logprobs_of(out)
        if self.return_token_ids:
            body["prompt_token_ids"] = list(out.prompt_token_ids)
        return body

    def chunk(self, choices: list[dict], usage: dict | None = None) -> dict:
        return self.with_usage(_envelope(self, "chat.completion.chunk", choices, usage))

    def _deltas(self, parsers: dict[int, OutputParser], o: CompletionOutput) -> list[dict]:
        """The delta bodies of a step's new text: content (and reasoning) first, then one
        per tool-call event: a call's id, type and name, then its argument fragments."""
        if not self.parser.active:
            return [{"content": o.new_text}] if o.new_text else []
        parser = parsers.setdefault(o.index, self.parser.make())
        delta = parser.feed(o.new_text)
        if o.finish_reason:
            delta = _merge(delta, parser.finish())
        bodies: list[dict] = []
        text: dict = {}
        if delta.reasoning:
            text["reasoning_content"] = delta.reasoning
        if delta.content:
            text["content"] = delta.content
        if text:
            bodies.append(text)
        for ev in delta.calls:
            if isinstance(ev, CallStart):
                entry = {"index": ev.index, "id": ev.id, "type": "function",
                         "function": {"name": ev.name, "arguments": ""}}
            else:
                entry = {"index": ev.index, "function": {"arguments": ev.text}}
            bodies.append({"tool_calls": [entry]})
        return bodies

    async def chunks(self, outputs: AsyncIterator[tuple[int, RequestOutput]],
                     include_usage: bool) -> AsyncIterator[dict]:
        sent = self._sent
        for idx in range(self.n):  # the role comes first, as OpenAI sends it
            role = self.chunk([{"index": idx, "delta": {"role": self.role, "content": ""},
                                "logprobs": None, "finish_reason": None}])
            yield {**role, "prompt_token_ids": self.prompt_token_ids} \
                if self.return_token_ids else role
        for idx in range(self.n) if self.echo else ():  # then the echo, as vLLM sends it
            yield self.chunk([{"index": idx, "delta": {"content": self.echo},
                                "logprobs": None, "finish_reason": None}])
        completion = paths = 0
        done: set[int] = set()
        reasoned: dict[int, int] = {}  # reasoning characters sent (think while reading)
        parsers: dict[int, OutputParser] = {}
        cached = 0
        async for _, out in outputs:
            cached = out.num_cached_tokens
            for o in out.outputs:
                if o.index in done:
                    continue
                for path, text in o.new_paths:  # parallel paths: deltas tagged with the path
                    yield self.chunk([{"index": o.index, "delta": {"reasoning_content": text,
                                                                   "path": path},
                                       "logprobs": None, "finish_reason": None}])
                start = sent.get(o.index, 0)
                new_ids = list(o.token_ids[start:])
                sent[o.index] = len(o.token_ids)
                lps = None
                if self.logprobs is not None and new_ids:
                    entries = list(o.logprobs or [])[start: start + len(new_ids)]
                    lps = self._logprobs(entries, new_ids)
                if o.reasoning_content and len(o.reasoning_content) > reasoned.get(o.index, 0):
                    delta = o.reasoning_content[reasoned.get(o.index, 0):]
                    reasoned[o.index] = len(o.reasoning_content)
                    yield self.chunk([{"index": o.index, "delta": {"reasoning_content": delta},
                                        "logprobs": None, "finish_reason": None}])
                bodies = self._deltas(parsers, o)
                if (lps or self.return_token_ids and new_ids) and not bodies:
                    bodies = [{"content": ""}]
                for k, body in enumerate(bodies):
                    yield self.chunk([self.ids_of({"index": o.index, "delta": body,
                                                   "logprobs": lps if k == 0 else None,
                                                   "finish_reason": None},
                                                  new_ids if k == 0 else [])])
                if o.finish_reason:
                    completion += len(o.token_ids) + _reasoned(o)
                    paths += _reasoned(o)
                    done.add(o.index)
                    reason = o.finish_reason
                    if o.index in parsers and parsers[o.index].num_calls:
                        reason = call_finish_reason(reason)
                    yield self.chunk([self.ids_of({"index": o.index, "delta": {},
                                                   "logprobs": None, "finish_reason": reason,
                                                   "stop_reason": o.stop_reason}, [])])
        if include_usage:
            yield self.chunk([], _usage(self.num_prompt_tokens, completion, paths, cached))


def call_finish_reason(reason: str | None) -> str | None:
    """A choice that made tool calls and stopped by itself finishes with ``tool_calls``."""
    return "tool_calls" if reason == "stop" else reason


def _merge(a: Delta, b: Delta) -> Delta:
    return Delta(a.reasoning + b.reasoning, a.content + b.content, a.calls + b.calls)


def _envelope(job, obj: str, choices: list[dict], usage: dict | None = None) -> dict:
    """The fields every completion body and stream chunk carries."""
    body = {"id": job.id, "object": obj, "created": job.created, "model": job.model,
            "choices": choices}
    if usage is not None:
        body["usage"] = usage
    return body
