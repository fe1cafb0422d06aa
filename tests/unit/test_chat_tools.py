"""Tools in chat rendering: templates that read ``tools`` render exactly as transformers'
``apply_chat_template(tools=...)``, the tool prompt for templates that do not, tool choices
and the structured-outputs schema of required / named calls, and ``continue_final_message``
as transformers cuts it."""

from __future__ import annotations

import json

import pytest
from helpers.tiny import CHATML, tiny_tokenizer

from thinkstream.sampling_params import StructuredOutputsParams
from thinkstream.server import protocol as P
from thinkstream.server.chat_tools import (
    TOOL_PROMPT,
    call_constraint,
    call_or_answer,
    plan_tools,
    template_messages,
    template_supports_tools,
)
from thinkstream.server.errors import APIError
from thinkstream.structured.compiler import GrammarCompiler

# A Hermes-style template that reads tools, tool_calls and tool results (written for these tests).
TOOLS_TEMPLATE = (
    "{% if tools %}<|im_start|>system\n{% if messages[0].role == 'system' %}"
    "{{ messages[0].content }}\n\n{% endif %}Tools:\n{% for t in tools %}{{ t | tojson }}\n"
    "{% endfor %}<|im_end|>\n{% endif %}"
    "{% for m in messages %}{% if m.role == 'system' and tools %}{% continue %}{% endif %}"
    "{% if m.role == 'tool' %}<|im_start|>user\n<tool_response>\n{{ m.content }}\n"
    "</tool_response><|im_end|>\n"
    "{% else %}<|im_start|>{{ m.role }}\n{{ m.content }}"
    "{% for c in m.tool_calls or [] %}<tool_call>\n{\"name\": \"{{ c.function.name }}\", "
    "\"arguments\": {{ c.function.arguments | tojson }}}\n</tool_call>{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]}}}]
HISTORY = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Weather in Paris?"},
    {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function",
         "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
    {"role": "tool", "tool_call_id": "call_1", "content": "22 C, sunny"},
]


def chat_body(**fields) -> P.ChatCompletionRequest:
    return P.ChatCompletionRequest.model_validate({"messages": HISTORY, "tools": TOOLS, **fields})


def hf_tokenizer(template: str):
    transformers = pytest.importorskip("transformers")
    hf = transformers.PreTrainedTokenizerFast(tokenizer_object=tiny_tokenizer().backend)
    hf.chat_template = template
    return hf


def test_which_templates_read_tools() -> None:
    assert template_supports_tools(TOOLS_TEMPLATE)
    assert not template_supports_tools(CHATML)
    assert not template_supports_tools(None)


def test_tools_template_renders_as_transformers() -> None:
    body = chat_body()
    plan = plan_tools(body, TOOLS_TEMPLATE, tool_prompt=True)
    assert plan.template_tools == TOOLS and plan.prompt_tools is None
    messages = template_messages(body.messages, plan)
    assert messages[2]["tool_calls"][0]["function"]["arguments"] == {"city": "Paris"}
    assert messages[3] == {"role": "tool", "content": "22 C, sunny", "tool_call_id": "call_1"}
    tok = tiny_tokenizer()
    tok.chat_template = TOOLS_TEMPLATE
    ours = tok.apply_chat_template(messages, True, tools=plan.template_tools)
    theirs = hf_tokenizer(TOOLS_TEMPLATE).apply_chat_template(
        messages, tools=plan.template_tools, add_generation_prompt=True, tokenize=False)
    assert ours == theirs
    assert '"arguments": {"city": "Paris"}' in ours and "<tool_response>\n22 C, sunny" in ours
    assert tok.encode_chat(messages, True, tools=plan.template_tools) == tok.encode(
        ours, add_special_tokens=False)


def test_template_without_tools_gets_the_tool_prompt() -> None:
    body = chat_body()
    plan = plan_tools(body, CHATML, tool_prompt=True)
    assert plan.template_tools is None and plan.prompt_tools == TOOLS
    messages = template_messages(body.messages, plan)
    signature = json.dumps(TOOLS[0], ensure_ascii=False)
    assert messages == [
        {"role": "system",
         "content": "Be brief.\n\n" + TOOL_PROMPT.format(signatures=signature)},
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content":
            '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'},
        {"role": "user", "content": "<tool_response>\n22 C, sunny\n</tool_response>"},
    ]
    assert "<tools>\n" + signature + "\n</tools>" in messages[0]["content"]


def test_consecutive_tool_results_share_one_user_turn() -> None:
    body = P.ChatCompletionRequest.model_validate({"tools": TOOLS, "messages": [
        {"role": "user", "content": "x"},
        {"role": "tool", "tool_call_id": "a", "content": "1"},
        {"role": "tool", "tool_call_id": "b", "content": "2"}]})
    messages = template_messages(body.messages, plan_tools(body, CHATML, True))
    assert messages[-1] == {"role": "user", "content":
                            "<tool_response>\n1\n</tool_response>\n<tool_response>\n2\n</tool_response>"}


def test_no_tool_prompt_is_a_400_for_templates_without_tools() -> None:
    with pytest.raises(APIError) as err:
        plan_tools(chat_body(), CHATML, tool_prompt=False)
    assert (err.value.status, err.value.param, err.value.code) == (400, "tools", "tools_unsupported")
    assert "--no-tool-prompt" in err.value.message
    # tool_choice "none" gives the template no tools, so it is fine
    plan = plan_tools(chat_body(tool_choice="none"), CHATML, tool_prompt=False)
    assert plan.prompt_tools is None and not plan.parses_calls


def test_tool_choices_and_their_constraints() -> None:
    assert plan_tools(chat_body(), TOOLS_TEMPLATE, True).constraint is None  # auto
    named = plan_tools(chat_body(tool_choice={"type": "function",
                                              "function": {"name": "get_weather"}}),
                       TOOLS_TEMPLATE, True)
    assert named.choice == "get_weather"
    assert named.constraint.json_schema == TOOLS[0]["function"]["parameters"]
    required = call_constraint(TOOLS, "required", parallel=False)
    assert required.json_schema == {
        "type": "array", "minItems": 1, "maxItems": 1,
        "items": {"anyOf": [{"type": "object", "required": ["name", "arguments"], "properties": {
            "name": {"const": "get_weather"},
            "arguments": TOOLS[0]["function"]["parameters"]}, "additionalProperties": False}]}}
    assert "maxItems" not in call_constraint(TOOLS, "required", parallel=True).json_schema
    with pytest.raises(APIError, match="no tool named 'nope'"):
        plan_tools(chat_body(tool_choice={"type": "function", "function": {"name": "nope"}}),
                   TOOLS_TEMPLATE, True)
    with pytest.raises(APIError, match="'required' needs tools"):
        plan_tools(P.ChatCompletionRequest.model_validate(
            {"messages": HISTORY[:2], "tool_choice": "required"}), TOOLS_TEMPLATE, True)


@pytest.mark.parametrize("content", ["The answer is", "The answer is ", "a <|im_end|> b"])
def test_continue_final_message_as_transformers(content) -> None:
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": content}]
    tok = tiny_tokenizer()
    ours = tok.apply_chat_template(messages, False, continue_final_message=True)
    theirs = hf_tokenizer(CHATML).apply_chat_template(
        messages, add_generation_prompt=False, continue_final_message=True, tokenize=False)
    assert ours == theirs and ours.endswith(content)
    ids = tok.encode_chat(messages, False, continue_final_message=True)
    if "<|im_end|>" not in content:
        assert ids == tok.encode(ours, add_special_tokens=False)
    else:  # the message's special-token text stays plain text; the cut is the same
        assert tok.decode(ids) == ours and ids.count(2) == 1
    with pytest.raises(ValueError, match="cannot both be set"):
        tok.apply_chat_template(messages, True, continue_final_message=True)


@pytest.mark.parametrize("auto", [False, True])
def test_a_forced_call_holds_nothing_but_name_and_arguments(tiny_tok, auto) -> None:
    """After a call's arguments the grammar closes the call object: no extra keys that the
    parser would drop (a small model kept adding them until max_tokens)."""
    if auto:  # tool_choice auto with a JSON answer format: Hermes blocks or the answer
        so = call_or_answer(TOOLS, StructuredOutputsParams(json_object=True), parallel=True)
        prefix = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}'
    else:
        so = call_constraint(TOOLS, "required", parallel=True)
        prefix = '[{"name": "get_weather", "arguments": {"city": "Paris"}'
    m = GrammarCompiler(tiny_tok, tiny_tok.vocab_size, [2]).compile(so).matcher()
    assert m.consume_tokens(tiny_tok.encode(prefix, add_special_tokens=False))
    assert m.consume_tokens(tiny_tok.encode("}", add_special_tokens=False))
    m = GrammarCompiler(tiny_tok, tiny_tok.vocab_size, [2]).compile(so).matcher()
    assert m.consume_tokens(tiny_tok.encode(prefix, add_special_tokens=False))
    assert not m.consume_tokens(tiny_tok.encode(", ", add_special_tokens=False))


@pytest.mark.parametrize("choice", ["required", "named", "auto"])
def test_a_function_without_parameters_takes_no_arguments(tiny_tok, choice) -> None:
    """An omitted ``parameters`` is an empty parameter list (OpenAI): a forced call's
    arguments are ``{}``, not any object (the 135M model filled one with made-up keys)."""
    tools = [{"type": "function", "function": {"name": "now"}}]
    if choice == "auto":
        so = call_or_answer(tools, StructuredOutputsParams(json_object=True), parallel=False)
        prefix = '<tool_call>\n{"name": "now", "arguments": {'
    elif choice == "named":
        so, prefix = call_constraint(tools, "now", parallel=False), "{"
    else:
        so = call_constraint(tools, "required", parallel=False)
        prefix = '[{"name": "now", "arguments": {'
    compiled = GrammarCompiler(tiny_tok, tiny_tok.vocab_size, [2]).compile(so)
    m = compiled.matcher()
    assert m.consume_tokens(tiny_tok.encode(prefix, add_special_tokens=False))
    assert m.consume_tokens(tiny_tok.encode("}", add_special_tokens=False))
    m = compiled.matcher()
    assert m.consume_tokens(tiny_tok.encode(prefix, add_special_tokens=False))
    assert not m.consume_tokens(tiny_tok.encode('"', add_special_tokens=False))


@pytest.mark.parametrize(("text", "ok"), [
    ('{"a": 1, "b": [1, 2]}', True), ('{\n  "a"', False), ('{"a":1}', False),
    ('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}', True),
    ('<tool_call>\n{"name":"get_weather"', False),
    ('<tool_call>\n{"name": "get_weather", "arguments": {\n', False),
])
def test_a_call_or_an_answer_is_compact_json_as_every_constraint(tiny_tok, text, ok) -> None:
    """``tool_choice: auto`` with a JSON answer format took free whitespace (the 135M model
    answered ``{\\n    "error_messages": ...``), where README promises compact JSON."""
    so = call_or_answer(TOOLS, StructuredOutputsParams(json_object=True), parallel=True)
    m = GrammarCompiler(tiny_tok, tiny_tok.vocab_size, [2]).compile(so).matcher()
    assert m.consume_tokens(tiny_tok.encode(text, add_special_tokens=False)) is ok
