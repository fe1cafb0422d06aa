"""Tools on the chat route: what the template sees, how the output is parsed, and the
constraint a required or named call will get from the sampler.

Messages go to the template as transformers takes them: an assistant turn's ``tool_calls``
with ``function.arguments`` parsed to an object (templates write it with ``tojson``), a
``tool`` turn with its ``tool_call_id``, and ``tools=`` the request's tool list.

A template that never mentions ``tools`` (SmolLM2's) gets the tool prompt instead
(``ServerConfig.tool_prompt``; ``--no-tool-prompt`` makes such a request a 400): the
function signatures as JSON and the Hermes ``<tool_call>`` format, appended to the first
system message (or as one); earlier calls are written into the assistant turns
in that format and tool results become user turns wrapped in ``<tool_response>`` tags.

Every tool's ``parameters`` must be a valid JSON Schema (checked against its meta-schema
with ``jsonschema``, whatever ``tool_choice`` is): a bad one is a 400 naming
``tools[i].function.parameters``, as OpenAI answers. A valid schema the grammar library
cannot compile is refused only where a call is forced (``required`` or named).

``tool_choice``: ``none`` gives the template no tools and parses no calls; ``auto`` parses
calls when the model makes them; ``required`` and a named function also set
``SamplingParams.structured_outputs`` to the call's JSON schema (``call_constraint``), which
the sampler's token mask enforces (``thinkstream.structured``): the output is that JSON, so
its arguments always parse.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from jsonschema.exceptions import SchemaError
from jsonschema.validators import Draft202012Validator, validator_for

from thinkstream.parsers.output import ParserSpec
from thinkstream.sampling_params import StructuredOutputsParams
from thinkstream.server import protocol as P
from thinkstream.server.errors import APIError
from thinkstream.server.legacy_functions import tool_turns
from thinkstream.structured.compiler import JSON_OPTIONS

TOOL_PROMPT = """# Tools

You can call functions to help with the user's request. Their signatures, one JSON object \
per line, are inside <tools></tools> tags:
<tools>
{signatures}
</tools>

To call a function, answer with a JSON object holding its name and its arguments inside \
<tool_call></tool_call> tags, one block per call:
<tool_call>
{{"name": <function-name>, "arguments": <arguments-as-a-JSON-object>}}
</tool_call>
The results come back inside <tool_response></tool_response> tags."""

_USES_TOOLS = re.compile(r"\btools\b")
NO_PARAMETERS = {"type": "object", "properties": {}, "additionalProperties": False}


def template_supports_tools(template: str | None) -> bool:
    """Whether a chat template reads the ``tools`` variable (else it needs the tool prompt)."""
    return template is not None and _USES_TOOLS.search(template) is not None


@dataclass(frozen=True)
class ToolPlan:
    """What a chat request's tools turn into."""

    template_tools: list[dict] | None  # given to the template as ``tools=``
    prompt_tools: list[dict] | None  # written into the tool prompt instead
    choice: str  # "none", "auto", "required" or a function's name
    constraint: StructuredOutputsParams | None
    parallel: bool = True  # False: only the first call is kept

    def constrained_schemas(self) -> list[tuple[int, dict]]:
        """``(index in tools, parameters schema)`` of the tools a required or named call's
        constraint holds (to name the one whose schema does not compile)."""
        tools = self.template_tools or self.prompt_tools or []
        return [(i, _parameters(t)) for i, t in enumerate(tools)
                if self.choice in ("auto", "required") or t["function"]["name"] == self.choice]

    @property
    def parses_calls(self) -> bool:
        return self.choice != "none" and bool(self.template_tools or self.prompt_tools)

    def parser_spec(self, tool_parser: str, reasoning_parser: str | None,
                    in_reasoning: bool) -> ParserSpec:
        names = tuple(t["function"]["name"] for t in self.template_tools or self.prompt_tools or [])
        return ParserSpec(reasoning_parser, tool_parser if self.parses_calls else None,
                          self.choice if self.parses_calls else "auto", in_reasoning,
                          None if self.parallel else 1, names)


def plan_tools(body: P.ChatCompletionRequest, template: str | None,
               tool_prompt: bool) -> ToolPlan:
    tools = [t.model_dump(exclude_none=True) for t in body.tools or []]
    check_tool_schemas(tools)
    choice = _choice_name(body.tool_choice, tools)
    if not tools or choice == "none":
        return ToolPlan(None, None, "none" if tools else "auto", None)
    constraint = call_constraint(tools, choice, body.parallel_tool_calls)
    parallel = body.parallel_tool_calls
    if template_supports_tools(template):
        return ToolPlan(tools, None, choice, constraint, parallel)
    if not tool_prompt:
        raise APIError(400, "tools: this model's chat template has no tool support and the "
                       "server runs with --no-tool-prompt", "tools", "tools_unsupported")
    return ToolPlan(None, tools, choice, constraint, parallel)


def check_tool_schemas(tools: list[dict]) -> None:
    """A 400 naming ``tools[i].function.parameters`` for the first tool whose ``parameters``
    is not a valid JSON Schema under its ``$schema``'s meta-schema (draft 2020-12 when it
    names none); the check needs no network (the meta-schemas ship with ``jsonschema``)."""
    for i, tool in enumerate(tools):
        schema = tool["function"].get("parameters")
        if schema is None:
            continue
        param = f"tools[{i}].function.parameters"
        try:
            validator_for(schema, default=Draft202012Validator).check_schema(schema)
        except SchemaError as exc:
            where = "/".join(map(str, exc.path))
            raise APIError(400, f"{param}: not a valid JSON Schema: {exc.message}"
                           + (f" (at {where})" if where else ""), param,
                           "invalid_value") from None
        except RecursionError:
            raise APIError(400, f"{param}: nested too deeply", param, "invalid_value") from None


def _choice_name(choice: str | P.ToolChoiceFunction | None, tools: list[dict]) -> str:
    names = [t["function"]["name"] for t in tools]
    if len(set(names)) != len(names):
        raise APIError(400, "tools: function names must be unique", "tools", "invalid_value")
    if choice is None:
        return "auto"
    if isinstance(choice, str):
        if choice == "required" and not tools:
            raise APIError(400, "tool_choice: 'required' needs tools", "tool_choice",
                           "invalid_value")
        return choice
    if choice.function.name not in names:
        raise APIError(400, f"tool_choice: no tool named {choice.function.name!r} in tools",
                       "tool_choice", "invalid_value")
    return choice.function.name


def call_constraint(tools: list[dict], choice: str,
                    parallel: bool) -> StructuredOutputsParams | None:
    """The JSON a required or named call must be (None for ``auto`` / ``none``): named, the
    function's arguments object; required, an array of ``{"name", "arguments"}`` with one
    call (``parallel_tool_calls: false``) or more."""
    params = {t["function"]["name"]: _parameters(t) for t in tools}
    if choice in ("auto", "none"):
        return None
    if choice != "required":
        return StructuredOutputsParams(json=params[choice])
    call = {"anyOf": [_call_object(name, schema) for name, schema in params.items()]}
    array = {"type": "array", "items": call, "minItems": 1}
    if not parallel:
        array["maxItems"] = 1
    return StructuredOutputsParams(json=array)


def _parameters(tool: dict) -> dict:
    """A function's ``parameters`` schema; without one (or ``{}``) it takes no arguments,
    as OpenAI reads an omitted ``parameters`` ("an empty parameter list"): the arguments
    are ``{}`` (any object would leave a small model writing keys until ``max_tokens``)."""
    return tool["function"].get("parameters") or NO_PARAMETERS


def _call_object(name: str, parameters: dict) -> dict:
    """The schema of one call: ``{"name": name, "arguments": <parameters>}`` and nothing
    else (a key past these two would be dropped by the parser, and a small model left free
    to add keys writes them until ``max_tokens``)."""
    return {"type": "object", "properties": {"name": {"const": name}, "arguments": parameters},
            "required": ["name", "arguments"], "additionalProperties": False}


def call_or_answer(tools: list[dict], answer: StructuredOutputsParams,
                   parallel: bool) -> StructuredOutputsParams | None:
    """``tool_choice: auto`` with a JSON answer format (``response_format``, the Responses
    API's ``text.format``, an agent's ``output_type``): the output is either Hermes tool
    calls (``<tool_call>`` + a ``{"name", "arguments"}`` object valid for one of the tools)
    or the answer in its schema, as one grammar, so a constrained model can still call a
    tool. None when the answer is not JSON (it is then constrained as given)."""
    if answer.json is not None:
        schema = answer.json_schema
    elif answer.json_object:
        schema = {"type": "object"}
    else:
        return None
    calls = {"anyOf": [_call_object(t["function"]["name"], _parameters(t)) for t in tools]}
    repeat = "+" if parallel else ""
    lark = (f"start: call{repeat} | answer\n"
            f'call: "<tool_call>\\n" %json {_compact(calls)} "\\n</tool_call>" "\\n"?\n'
            f"answer: %json {_compact(schema)}\n")
    return StructuredOutputsParams(grammar=lark)


def _compact(schema: object) -> str:
    """A schema for Lark's ``%json`` with the JSON layout every other constraint has
    (``JSON_OPTIONS``: ``", "`` / ``": "``, no free whitespace, which small models loop on),
    given as llguidance's ``x-guidance`` options."""
    if isinstance(schema, dict):
        schema = {**schema, "x-guidance": JSON_OPTIONS}
    return json.dumps(schema)


# ------------------------------------------------------------------ messages
def template_messages(messages: list[P.ChatMessage], plan: ToolPlan) -> list[dict]:
    """The messages as the template takes them (see the module doc)."""
    inline = plan.template_tools is None  # calls and results written as text
    out: list[dict] = []
    for m in tool_turns(messages):  # legacy function turns as tool turns
        msg: dict = {"role": m.role, "content": m.text()}
        if m.name:
            msg["name"] = m.name
        reasoning = m.reasoning_content if m.reasoning_content is not None else m.reasoning
        if reasoning is not None:
            msg["reasoning_content"] = reasoning
        if m.role == "assistant" and m.tool_calls:
            if inline:
                blocks = [_call_block(c.function.name, c.function.arguments) for c in m.tool_calls]
                msg["content"] = "\n".join(([msg["content"]] if msg["content"] else []) + blocks)
            else:
                msg["tool_calls"] = [{"id": c.id, "type": "function", "function": {
                    "name": c.function.name, "arguments": _arguments(c.function.arguments)}}
                    for c in m.tool_calls]
        if m.role == "tool":
            if inline:
                body = f"<tool_response>\n{msg['content']}\n</tool_response>"
                if out and out[-1].get("tool_result"):  # one user turn for a run of results
                    out[-1]["content"] += "\n" + body
                    continue
                msg = {"role": "user", "content": body, "tool_result": True}
            elif m.tool_call_id is not None:
                msg["tool_call_id"] = m.tool_call_id
        out.append(msg)
    for msg in out:
        msg.pop("tool_result", None)
    if plan.prompt_tools:
        _insert_tool_prompt(out, plan.prompt_tools)
    return out


def _arguments(text: str) -> dict | str:
    try:
        value = json.loads(text)
    except ValueError:
        return text
    return value if isinstance(value, dict) else text


def _call_block(name: str, arguments: str) -> str:
    args = _arguments(arguments)
    raw = json.dumps(args, ensure_ascii=False) if isinstance(args, dict) else json.dumps(arguments)
    return f'<tool_call>\n{{"name": {json.dumps(name, ensure_ascii=False)}, "arguments": {raw}}}' \
           "\n</tool_call>"


def _insert_tool_prompt(messages: list[dict], tools: list[dict]) -> None:
    prompt = TOOL_PROMPT.format(signatures="\n".join(json.dumps(t, ensure_ascii=False)
                                                     for t in tools))
    if messages and messages[0]["role"] in ("system", "developer"):
        messages[0] = {**messages[0], "content": messages[0]["content"] + "\n\n" + prompt}
    else:
        messages.insert(0, {"role": "system", "content": prompt})


def opens_reasoning(tokenizer, ids: list[int]) -> bool:
    """The prompt ends inside a reasoning block (a template that writes ``<think>`` itself),
    so the output starts as reasoning."""
    return tokenizer.decode(ids[-8:]).rstrip().endswith("<think>")
