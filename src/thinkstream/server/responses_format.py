"""Engine outputs -> Responses API bodies and their typed event stream.

``ItemBuilder`` turns the parser's deltas (``parsers.output``) into output items in the
order the model wrote them (``reasoning``, ``message``, ``function_call``) and returns the
events each delta makes. A non-streamed response runs the same builder over the whole
output, so its ``output`` equals the streamed items. A stream goes::

    response.created, response.in_progress,
      per item: response.output_item.added,
        text:   response.content_part.added, response.output_text.delta (or
                response.reasoning_text.delta) ..., response.output_text.done,
                response.content_part.done
        call:   response.function_call_arguments.delta ..., .._arguments.done
      response.output_item.done,
    response.completed (response.incomplete when max_output_tokens cut it, or when it was
    aborted: status ``cancelled``, for OpenAI has no cancelled event)
"""

from __future__ import annotations

import copy
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from thinkstream.engine.request import CompletionOutput, RequestOutput
from thinkstream.parsers.output import Delta, ParserSpec
from thinkstream.parsers.tool_calls import CallStart


def _id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


_TEXT_PART = {"message": ("output_text", "response.output_text"),
              "reasoning": ("reasoning_text", "response.reasoning_text")}


class ItemBuilder:
    def __init__(self) -> None:
        self.items: list[dict] = []
        self.open: dict | None = None  # the item receiving text or arguments
        self.calls: dict[int, dict] = {}  # parser call index -> function_call item
        self.seq = 0
        self.pending: list[dict] = []  # token logprobs not yet given to a message delta

    def add_logprobs(self, logprobs: list[dict]) -> None:
        """The logprobs of the tokens whose text the next ``feed`` brings: a message's text
        delta takes them (a call's or reasoning's text drops them: not the message's)."""
        self.pending += logprobs

    def event(self, kind: str, **fields) -> dict:
        ev = {"type": kind, "sequence_number": self.seq, **copy.deepcopy(fields)}
        self.seq += 1
        return ev

    def feed(self, delta: Delta) -> list[dict]:
        events: list[dict] = []
        if delta.reasoning:
            events += self._text("reasoning", delta.reasoning)
        if delta.content:
            events += self._text("message", delta.content)
        if delta.reasoning or delta.calls:
            self.pending = []
        for ev in delta.calls:
            if isinstance(ev, CallStart):
                events += self._close()
                item = {"type": "function_call", "id": _id("fc"), "call_id": ev.id,
                        "name": ev.name, "arguments": "", "status": "in_progress"}
                self.calls[ev.index] = item
                events += self._add(item)
            else:
                item = self.calls[ev.index]
                item["arguments"] += ev.text
                events.append(self.event("response.function_call_arguments.delta",
                                         item_id=item["id"], output_index=self._at(item),
                                         delta=ev.text))
        return events

    def finish(self, cut: bool = False) -> list[dict]:
        """Close what is open; an output with no item gets an empty message. ``cut``: the
        output ended at ``max_output_tokens`` (or was aborted), the item it ended in is
        ``incomplete`` (as OpenAI marks it: a function call's arguments are then partial)."""
        status = "incomplete" if cut else "completed"
        events = self._close(status)
        if not self.items:
            events += self._text("message", "") + self._close(status)
        return events

    def _at(self, item: dict) -> int:
        return next(i for i, it in enumerate(self.items) if it is item)

    def _add(self, item: dict) -> list[dict]:
        self.items.append(item)
        self.open = item
        return [self.event("response.output_item.added", output_index=len(self.items) - 1,
                           item=item)]

    def _text(self, kind: str, text: str) -> list[dict]:
        events: list[dict] = []
        part_type, prefix = _TEXT_PART[kind]
        if self.open is None or self.open["type"] != kind:
            events += self._close()
            item = ({"type": "message", "id": _id("msg"), "status": "in_progress",
                     "role": "assistant", "content": []} if kind == "message" else
                    {"type": "reasoning", "id": _id("rs"), "summary": [], "content": [],
                     "status": "in_progress"})
            events += self._add(item)
            part = {"type": part_type, "text": ""}
            if kind == "message":
                part.update(annotations=[], logprobs=[])
            events.append(self.event("response.content_part.added", item_id=item["id"],
                                     output_index=self._at(item), content_index=0, part=part))
            item["content"].append(part)
        item = self.open
        item["content"][0]["text"] += text
        if text:
            extra = {}
            if kind == "message":
                extra["logprobs"], self.pending = self.pending, []
                item["content"][0]["logprobs"] += extra["logprobs"]
            events.append(self.event(f"{prefix}.delta", item_id=item["id"],
                                     output_index=self._at(item), content_index=0,
                                     delta=text, **extra))
        return events

    def _close(self, status: str = "completed") -> list[dict]:
        item, self.open = self.open, None
        if item is None:
            return []
        at, events = self._at(item), []
        item["status"] = status
        if item["type"] == "function_call":
            events.append(self.event("response.function_call_arguments.done", item_id=item["id"],
                                     output_index=at, arguments=item["arguments"],
                                     name=item["name"]))
        else:
            part = item["content"][0]
            prefix = _TEXT_PART[item["type"]][1]
            extra = {"logprobs": part["logprobs"]} if item["type"] == "message" else {}
            events.append(self.event(f"{prefix}.done", item_id=item["id"], output_index=at,
                                     content_index=0, text=part["text"], **extra))
            events.append(self.event("response.content_part.done", item_id=item["id"],
                                     output_index=at, content_index=0, part=part))
        events.append(self.event("response.output_item.done", output_index=at, item=item))
        return events


@dataclass
class ResponsesView:
    """One response's id and echoed settings (``echo``: instructions, tools, text, ...)."""

    id: str
    model: str
    echo: dict
    parser: ParserSpec
    num_prompt_tokens: int = 0
    created_at: int = field(default_factory=lambda: int(time.time()))
    # include "message.output_text.logprobs": (entries, token ids) -> the output_text's
    # logprob items ({token, logprob, bytes, top_logprobs}, as chat's ``logprobs.content``)
    logprobs: Callable[[list, list[int]], list[dict]] | None = None

    def _token_logprobs(self, o: CompletionOutput, start: int = 0) -> list[dict]:
        """Logprob items of ``o``'s tokens from ``start`` on ([] unless asked for)."""
        if self.logprobs is None or len(o.token_ids) <= start:
            return []
        ids = list(o.token_ids[start:])
        return self.logprobs(list(o.logprobs or [])[start : start + len(ids)], ids)

    def body(self, status: str, items: list[dict], usage: dict | None,
             incomplete: str | None = None) -> dict:
        return {"id": self.id, "object": "response", "created_at": self.created_at,
                "status": status, "error": None,
                "incomplete_details": {"reason": incomplete} if incomplete else None,
                "model": self.model, "output": items, "usage": usage,
                "previous_response_id": None, "store": False, "truncation": "disabled",
                **self.echo}

    def _usage(self, out: RequestOutput) -> dict:
        completion = sum(len(o.token_ids) for o in out.outputs)
        return {"input_tokens": self.num_prompt_tokens,
                "input_tokens_details": {"cached_tokens": out.num_cached_tokens,
                                         "cache_write_tokens": 0},
                "output_tokens": completion, "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": self.num_prompt_tokens + completion}

    def _ending(self, out: RequestOutput) -> tuple[str, str | None]:
        """``(status, incomplete reason)``: cut at ``max_output_tokens`` is ``incomplete``;
        aborted (the cancel endpoint, a drain's end) is ``cancelled``, as vLLM marks it."""
        reason = out.outputs[0].finish_reason
        if reason == "length":
            return "incomplete", "max_output_tokens"
        if reason == "abort":
            return "cancelled", None
        return "completed", None

    def response(self, finals: list[RequestOutput]) -> dict:
        out = finals[0]
        builder, parser = ItemBuilder(), self.parser.make()
        builder.add_logprobs(self._token_logprobs(out.outputs[0]))
        builder.feed(parser.feed(out.outputs[0].text))
        builder.feed(parser.finish())
        status, incomplete = self._ending(out)
        builder.finish(cut=status != "completed")
        return self.body(status, builder.items, self._usage(out), incomplete)

    async def events(self, outputs: AsyncIterator[tuple[int, RequestOutput]]
                     ) -> AsyncIterator[dict]:
        builder, parser = ItemBuilder(), self.parser.make()
        start = self.body("in_progress", [], None)
        yield builder.event("response.created", response=start)
        yield builder.event("response.in_progress", response=start)
        sent = 0  # tokens whose logprobs went to the builder
        async for _, out in outputs:
            o = out.outputs[0]
            builder.add_logprobs(self._token_logprobs(o, sent))
            sent = len(o.token_ids)
            for ev in builder.feed(parser.feed(o.new_text)):
                yield ev
            if o.finish_reason is None:
                continue
            status, incomplete = self._ending(out)
            for ev in builder.feed(parser.finish()) + builder.finish(status != "completed"):
                yield ev
            kind = "response.completed" if status == "completed" else "response.incomplete"
            yield builder.event(kind, response=self.body(status, builder.items, self._usage(out),
                                                         incomplete))
            break
        async for _ in outputs:  # nothing more comes: the job ends its own way (timer, release)
            pass
