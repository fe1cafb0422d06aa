"""OpenAI's legacy chat function calling, run on the tool machinery (``chat_tools``).

``functions`` / ``function_call`` are the deprecated forms of ``tools`` / ``tool_choice``
that OpenAI still accepts (LangChain's ``bind_functions`` and older SDK code send them).
A request that uses them is answered as OpenAI answers it:

    request   functions[i]                 -> tools[i] = {"type": "function", "function": ...}
              function_call "none" | "auto" -> tool_choice "none" | "auto"
              function_call {"name": n}     -> tool_choice {"type": "function", ...n}
              (a legacy answer holds one call: ``parallel_tool_calls`` false)
    history   assistant ``function_call``   -> one tool call (id ``call_fn_<message index>``)
              ``function`` message (name)   -> a ``tool`` message answering the latest call
                                               of that name
    answer    message.function_call {name, arguments} instead of ``tool_calls``,
              finish_reason ``function_call`` instead of ``tool_calls``; streamed,
              delta.function_call {name, arguments: ""}, then {arguments: fragment}

``functions`` with ``tools``, ``function_call`` with ``tool_choice``, and ``function_call``
without ``functions`` are 400s naming the legacy field (vLLM ignores both fields).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from thinkstream.server import protocol as P
from thinkstream.server.errors import APIError


def uses_functions(body: P.ChatCompletionRequest) -> bool:
    return body.functions is not None or body.function_call is not None


def as_tools(body: P.ChatCompletionRequest) -> P.ChatCompletionRequest:
    """The request with ``functions`` / ``function_call`` turned into tools (module doc)."""
    if body.functions is None:
        raise APIError(400, "function_call: only allowed when functions are given",
                       "function_call", "invalid_value")
    if body.tools is not None:
        raise APIError(400, "functions: send either tools or functions (the deprecated form "
                       "of tools), not both", "functions", "invalid_value")
    if body.function_call is not None and body.tool_choice is not None:
        raise APIError(400, "function_call: send either tool_choice or function_call (the "
                       "deprecated form of tool_choice), not both", "function_call",
                       "invalid_value")
    tools = [P.ToolDef(type="function", function=f) for f in body.functions]
    choice = body.function_call
    if isinstance(choice, P.NamedFunction):
        choice = P.ToolChoiceFunction(type="function", function=choice)
    return body.model_copy(update={"tools": tools, "tool_choice": choice,
                                   "parallel_tool_calls": False})


def renamed_fields(body: P.ChatCompletionRequest) -> dict[str, str]:
    """Tool-pipeline names -> the legacy names the client sent (``errors.field_names``)."""
    names = {"tools": "functions", "tool_choice": "function_call"}
    for i in range(len(body.functions or [])):
        names[f"tools[{i}].function.parameters"] = f"functions[{i}].parameters"
    return names


def tool_turns(messages: list[P.ChatMessage]) -> list[P.ChatMessage]:
    """Legacy turns as tool turns: an assistant ``function_call`` becomes a tool call, a
    ``function`` message the ``tool`` message answering it (module doc)."""
    out: list[P.ChatMessage] = []
    latest: dict[str, str] = {}  # function name -> id of its latest call
    for i, m in enumerate(messages):
        if m.role == "assistant" and m.function_call is not None:
            latest[m.function_call.name] = call_id = f"call_fn_{i}"
            calls = [*(m.tool_calls or []),
                     P.ToolCallIn(id=call_id, type="function", function=m.function_call)]
            m = m.model_copy(update={"tool_calls": calls, "function_call": None})
        elif m.role == "function":
            if not m.name:
                raise APIError(400, f"messages[{i}].name: required for a function message "
                               "(the function whose result it holds)", f"messages[{i}].name",
                               "invalid_value")
            m = m.model_copy(update={"role": "tool", "name": None,
                                     "tool_call_id": latest.get(m.name, f"call_fn_{m.name}")})
        out.append(m)
    return out


def legacy_response(body: dict) -> dict:
    """A chat response body in the legacy shape: each message's (single) tool call as
    ``function_call``, finish reason ``function_call``."""
    for choice in body["choices"]:
        message = choice["message"]
        calls = message.pop("tool_calls", None)
        if calls:
            message["function_call"] = dict(calls[0]["function"])
        if choice["finish_reason"] == "tool_calls":
            choice["finish_reason"] = "function_call"
    return body


async def legacy_chunks(chunks: AsyncIterator[dict]) -> AsyncIterator[dict]:
    """Chat stream chunks in the legacy shape: a tool-call delta becomes ``function_call``
    (the name with empty arguments first, then argument fragments)."""
    async for chunk in chunks:
        for choice in chunk["choices"]:
            delta = choice["delta"]
            for call in delta.pop("tool_calls", None) or []:
                fn = call["function"]
                delta["function_call"] = ({"name": fn["name"], "arguments": fn["arguments"]}
                                          if "name" in fn else {"arguments": fn["arguments"]})
            if choice.get("finish_reason") == "tool_calls":
                choice["finish_reason"] = "function_call"
        yield chunk
