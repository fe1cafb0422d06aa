"""``POST /v1/responses`` request bodies, turned into the chat request they stand for.

The subset the ``openai`` SDK's ``responses.create`` and openai-agents send: ``input`` as
text or items (messages with ``input_text`` / ``output_text`` parts, ``function_call``,
``function_call_output``; ``reasoning`` items are accepted and dropped, as templates drop
earlier turns' reasoning), ``instructions`` (a system message first), ``max_output_tokens``,
the sampling fields, ``text.format`` (``json_schema`` / ``json_object``: the structured-
outputs seam), function ``tools`` (flat: ``{"type": "function", "name", "parameters"}``) and
``tool_choice``. With the response store on (``responses_store``), ``store`` (default true),
``previous_response_id`` (``with_context``: the previous response's items before ``input``)
and ``background`` work as OpenAI's; with it off they are 400s (send the whole conversation
in ``input``), as are ``item_reference`` items (``resolve_references``: a stored item by
its id). ``input_items`` gives ``input`` as the items OpenAI lists (each with an id).

``truncation: "auto"`` (OpenAI's rule): an input over the context drops items from the
beginning of the conversation until it fits; system and developer messages (and
``instructions``) stay, and a cut never leaves a function call's output without its call
(``chat_request(body, cut)``). ``"disabled"``, the default, answers the 400.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any, Literal

from pydantic import Field, ValidationError

from thinkstream.sampling_params import StructuredOutputsParams
from thinkstream.server import protocol as P
from thinkstream.server.errors import APIError


class ResponseTextFormat(P.StrictBody):
    type: Literal["text", "json_object", "json_schema"] = "text"
    name: P.Text | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None
    description: P.Text | None = None

    def dump(self) -> dict:
        out: dict = {"type": self.type}
        if self.type == "json_schema":
            out.update(name=self.name, schema=self.schema_, strict=self.strict)
        return out


class ResponseText(P.StrictBody):
    format: ResponseTextFormat | None = None


class ResponsesRequest(P.SamplingRequest):
    input: P.Text | list[dict[str, Any]]
    instructions: P.Text | None = None
    max_output_tokens: int | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: Literal["none", "auto", "required"] | dict[str, Any] | None = None
    parallel_tool_calls: bool = True
    text: ResponseText | None = None
    store: bool | None = None
    background: bool | None = None
    previous_response_id: P.Text | None = None
    conversation: P.Text | dict[str, Any] | None = None  # server-side state: refused
    prompt: dict[str, Any] | None = None  # a stored prompt template: refused
    metadata: dict[str, Any] | None = None
    reasoning: dict[str, Any] | None = None
    top_logprobs: int | None = None
    include: list[str] | None = None  # "message.output_text.logprobs" is the one acted on
    truncation: Literal["auto", "disabled"] | None = None  # None: "disabled"

    def wants_logprobs(self) -> bool:
        """The output text's logprobs, as OpenAI gives them: only with ``include``
        (``top_logprobs`` alone sets how many alternatives, and returns none)."""
        return "message.output_text.logprobs" in (self.include or [])


def check_state(body: ResponsesRequest, store: bool) -> None:
    """400s for what needs server-side state the server does not keep (``store``: whether
    the response store is on)."""
    if not store:
        _check_stateless(body)
    elif body.background and body.store is False:
        raise APIError(400, "background: a background response is fetched later by id: it "
                       "needs store (leave store unset or true)", "background", "invalid_value")
    if body.conversation is not None:  # its items would be prepended: ignoring it drops them
        raise APIError(400, "conversation: this server keeps no conversations; send the "
                       "whole conversation in input, or use previous_response_id",
                       "conversation", "unsupported")
    if body.prompt is not None:
        raise APIError(400, "prompt: this server keeps no stored prompts; send the text in "
                       "instructions and input", "prompt", "unsupported")
    if body.n != 1:
        raise APIError(400, "n: the Responses API makes one output", "n", "unsupported")


def _check_stateless(body: ResponsesRequest) -> None:
    if body.previous_response_id is not None:
        raise APIError(400, "previous_response_id: this server keeps no responses; send the "
                       "whole conversation in input", "previous_response_id", "unsupported")
    if body.store:
        raise APIError(400, "store: this server keeps no responses; leave store unset or "
                       "false", "store", "unsupported")
    if body.background:  # a background response is fetched later by id: it needs a store
        raise APIError(400, "background: this server keeps no responses to fetch later; "
                       "leave background unset or false", "background", "unsupported")


def resolve_references(body: ResponsesRequest,
                       find: Callable[[str], dict | None]) -> ResponsesRequest:
    """``body`` with each ``{"type": "item_reference", "id"}`` input item replaced by the
    stored item ``find`` gives for its id (a 404 naming ``input[i].id`` if none)."""
    if isinstance(body.input, str) or all(i.get("type") != "item_reference" for i in body.input):
        return body
    items = []
    for i, item in enumerate(body.input):
        if item.get("type") == "item_reference":
            ref = item.get("id")
            found = find(ref) if isinstance(ref, str) else None
            if found is None:
                raise APIError(404, f"Item with id {ref!r} not found.", f"input[{i}].id",
                               "item_not_found", type="invalid_request_error")
            item = found
        items.append(item)
    return body.model_copy(update={"input": items})


def with_context(body: ResponsesRequest, context: list[dict],
                 items: list[dict]) -> ResponsesRequest:
    """``body`` continuing a stored conversation: ``context`` (the previous response's
    conversation and output) then ``items`` (its own ``input_items``) as its input."""
    return body.model_copy(update={"input": context + items})


def cut_points(body: ResponsesRequest) -> list[int]:
    """Where ``truncation: "auto"`` may start the conversation, fewest items dropped first:
    0, then the index of each later message that is not a system / developer message or a
    function call's output (one that would lose its call)."""
    messages = input_messages(body)
    talk = [i for i, m in enumerate(messages) if m["role"] not in ("system", "developer")]
    return [0] + [i for i in talk[1:] if messages[i]["role"] != "tool"]


def chat_request(body: ResponsesRequest, cut: int = 0) -> P.ChatCompletionRequest:
    """The chat request a Responses request stands for (validated like one); ``cut``: the
    conversation starts at message ``cut`` (system and developer messages before it stay)."""
    fields = body.model_dump(include=set(P.SamplingRequest.model_fields), exclude_none=True)
    messages = [m for i, m in enumerate(input_messages(body))
                if i >= cut or m["role"] in ("system", "developer")]
    fields.update(messages=messages, max_tokens=body.max_output_tokens,
                  parallel_tool_calls=body.parallel_tool_calls)
    if body.tools:
        fields["tools"] = [_chat_tool(i, t) for i, t in enumerate(body.tools)]
    if body.tool_choice is not None:
        fields["tool_choice"] = _chat_tool_choice(body.tool_choice)
    if body.top_logprobs is not None or body.wants_logprobs():
        fields.update(logprobs=True, top_logprobs=body.top_logprobs or 0)
    try:
        return P.ChatCompletionRequest.model_validate(fields)
    except ValidationError as exc:
        param, message = P.describe_error(exc)
        raise APIError(400, message, param, "invalid_value") from None


def text_constraint(body: ResponsesRequest) -> StructuredOutputsParams | None:
    """``text.format`` as a structured-outputs constraint (None for plain text)."""
    fmt = body.text.format if body.text is not None else None
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "json_object":
        return StructuredOutputsParams(json_object=True)
    if fmt.schema_ is None:
        raise APIError(400, "text.format.schema: is required for json_schema", "text.format.schema",
                       "invalid_value")
    return StructuredOutputsParams(json=fmt.schema_)


def _chat_tool(i: int, tool: dict) -> dict:
    if tool.get("type") != "function":
        raise APIError(400, f"tools[{i}].type: only function tools are supported, got "
                       f"{tool.get('type')!r}", f"tools[{i}].type", "unsupported")
    fn = {k: tool[k] for k in ("name", "description", "parameters", "strict")
          if tool.get(k) is not None}
    return {"type": "function", "function": fn}


def _chat_tool_choice(choice: str | dict) -> str | dict:
    if isinstance(choice, str):
        return choice
    if choice.get("type") != "function" or not isinstance(choice.get("name"), str):
        raise APIError(400, "tool_choice: must be 'none', 'auto', 'required' or "
                       '{"type": "function", "name": ...}', "tool_choice", "invalid_value")
    return {"type": "function", "function": {"name": choice["name"]}}


# ------------------------------------------------------------------ input items
def input_messages(body: ResponsesRequest) -> list[dict]:
    """Chat messages of ``instructions`` and ``input``."""
    messages: list[dict] = []
    if body.instructions:
        messages.append({"role": "system", "content": body.instructions})
    if isinstance(body.input, str):
        return messages + [{"role": "user", "content": body.input}]
    for i, item in enumerate(body.input):
        kind = item.get("type", "message")
        where = f"input[{i}]"
        if kind == "message":
            messages.append(_message(where, item))
        elif kind == "function_call":
            _add_call(messages, where, item)
        elif kind == "function_call_output":
            messages.append({"role": "tool", "tool_call_id": _str(where, item, "call_id"),
                             "content": _text(f"{where}.output", item.get("output"))})
        elif kind == "reasoning":
            continue
        elif kind == "item_reference":  # resolved before, with the store on
            raise APIError(400, f"{where}: item references need the response store, which "
                           "is off; send the item itself", where, "unsupported")
        else:
            raise APIError(400, f"{where}.type: {kind!r} items are not supported", where,
                           "unsupported")
    return messages


def input_items(body: ResponsesRequest) -> list[dict]:
    """``input`` as the items OpenAI stores and lists (checked by ``input_messages`` first):
    text is one user message, a message's text content becomes ``input_text`` (an
    assistant's: ``output_text``) parts, every item gets an ``id`` and a ``status``."""
    input_messages(body)
    raw = [{"role": "user", "content": body.input}] if isinstance(body.input, str) else body.input
    return [_stored_item(item) for item in raw]


def _stored_item(item: dict) -> dict:
    kind = item.get("type", "message")
    out = {**item, "type": kind, "id": item.get("id") or _new_id(_ID_PREFIX.get(kind, "item"))}
    if kind in ("message", "function_call", "function_call_output"):
        out.setdefault("status", "completed")
    if kind == "message" and isinstance(item.get("content"), str):
        part = {"type": "output_text", "text": item["content"], "annotations": []} \
            if item.get("role") == "assistant" else {"type": "input_text", "text": item["content"]}
        out["content"] = [part]
    return out


_ID_PREFIX = {"message": "msg", "function_call": "fc", "function_call_output": "fco",
              "reasoning": "rs"}


def _new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


def _message(where: str, item: dict) -> dict:
    role = item.get("role")
    if role not in ("user", "system", "developer", "assistant"):
        raise APIError(400, f"{where}.role: must be user, system, developer or assistant",
                       f"{where}.role", "invalid_value")
    return {"role": role, "content": _text(f"{where}.content", item.get("content"))}


def _add_call(messages: list[dict], where: str, item: dict) -> None:
    """A function call joins the assistant turn just before it (or starts one)."""
    call = {"id": _str(where, item, "call_id"), "type": "function",
            "function": {"name": _str(where, item, "name"),
                         "arguments": item.get("arguments") or "{}"}}
    if not isinstance(call["function"]["arguments"], str):
        raise APIError(400, f"{where}.arguments: must be a string (JSON text)",
                       f"{where}.arguments", "invalid_value")
    if messages and messages[-1]["role"] == "assistant":
        messages[-1].setdefault("tool_calls", []).append(call)
    else:
        messages.append({"role": "assistant", "content": None, "tool_calls": [call]})


def _str(where: str, item: dict, key: str) -> str:
    value = item.get(key)
    if not isinstance(value, str) or not value:
        raise APIError(400, f"{where}.{key}: must be a non-empty string", f"{where}.{key}",
                       "invalid_value")
    return value


def _text(where: str, content: Any) -> str:
    """Text of a message's content: a string or text parts; other parts are a 400."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise APIError(400, f"{where}: must be a string or a list of content parts", where,
                       "invalid_value")
    texts = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind not in ("input_text", "output_text", "text", "refusal"):
            raise APIError(400, f"{where}[{j}]: content parts of type {kind!r} are not "
                           "supported: this model takes text only", f"{where}[{j}]",
                           "unsupported_content")
        text = part.get("text", part.get("refusal"))
        if not isinstance(text, str):
            raise APIError(400, f"{where}[{j}].text: must be a string", f"{where}[{j}].text",
                           "invalid_value")
        texts.append(text)
    return "".join(texts)
