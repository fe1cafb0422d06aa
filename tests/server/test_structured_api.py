"""Structured outputs over HTTP, on the tiny random model (its outputs are valid only because
of the mask): ``response_format`` on both routes, vLLM's ``structured_outputs`` and
``guided_*``, 400s naming the field, streaming with n > 1 + seed + logprobs, a session whose
close answers valid JSON, and required / named tool calls whose arguments always parse."""

from __future__ import annotations

import json
import re

import httpx
import jsonschema
import pytest
from conftest import TINY_ENGINE, live_server, tiny_llm
from helpers.tiny import tiny_checkpoint

from thinkstream.async_llm import AsyncLLM
from thinkstream.config import EngineConfig
from thinkstream.engine.llm_engine import LLMEngine
from thinkstream.server.config import ServerConfig

PERSON = {"type": "object", "additionalProperties": False, "required": ["name", "age"],
          "properties": {"name": {"type": "string", "maxLength": 8},
                         "age": {"type": "integer", "minimum": 0, "maximum": 120}}}
FORMAT = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON,
                                                 "strict": True}}
CHAT = {"messages": [{"role": "user", "content": "Who is she?"}], "max_tokens": 300}
HOT = {"temperature": 6.0, "seed": 5}


@pytest.fixture(scope="module")
def server():
    llm = tiny_llm()
    with live_server(llm, ServerConfig(served_model_name="tiny")) as live:
        yield live
    llm.shutdown()


def post(server, path: str, body: dict) -> httpx.Response:
    return httpx.post(server.url + path, json=body, timeout=120)


def texts(r: httpx.Response) -> list[str]:
    assert r.status_code == 200, r.text
    return [c["message"]["content"] if "message" in c else c["text"]
            for c in r.json()["choices"]]


def test_response_format_json_schema_on_chat_and_completions(server) -> None:
    chat = texts(post(server, "/v1/chat/completions", {**CHAT, **HOT, "n": 3,
                                                       "response_format": FORMAT}))
    done = texts(post(server, "/v1/completions", {"prompt": "She is", "max_tokens": 300,
                                                  "n": 3, **HOT, "response_format": FORMAT}))
    for text in chat + done:
        jsonschema.validate(json.loads(text), PERSON)
    assert len(set(chat)) > 1


@pytest.mark.parametrize("fields", [{"response_format": {"type": "json_object"}},
                                    {"structured_outputs": {"json_object": True}}])
def test_json_object(server, fields) -> None:
    """Any object: its strings are unbounded, so a hot random model may not close them in
    time; greedy, this one does."""
    for path, body in (("/v1/chat/completions", CHAT), ("/v1/completions", {"prompt": "x"})):
        r = post(server, path, {**body, "max_tokens": 400, "temperature": 0, **fields})
        assert isinstance(json.loads(texts(r)[0]), dict)
        assert r.json()["choices"][0]["finish_reason"] == "stop"


@pytest.mark.parametrize("fields, check", [
    ({"structured_outputs": {"json": PERSON}}, lambda t: jsonschema.validate(json.loads(t), PERSON)),
    ({"structured_outputs": {"json": json.dumps(PERSON)}},
     lambda t: jsonschema.validate(json.loads(t), PERSON)),
    ({"structured_outputs": {"regex": "[0-9]{3}-[a-z]{2}"}},
     lambda t: re.fullmatch("[0-9]{3}-[a-z]{2}", t)),
    ({"structured_outputs": {"choice": ["yes", "no"]}}, lambda t: t in ("yes", "no")),
    ({"structured_outputs": {"grammar": 'start: "(" NUM ")"\nNUM: /[1-9][0-9]?/'}},
     lambda t: re.fullmatch(r"\([1-9][0-9]?\)", t)),
    ({"guided_json": PERSON}, lambda t: jsonschema.validate(json.loads(t), PERSON)),
    ({"guided_regex": "(red|green)-[0-9]"}, lambda t: re.fullmatch("(red|green)-[0-9]", t)),
    ({"guided_choice": ["Paris", "Rome", "Oslo"]}, lambda t: t in ("Paris", "Rome", "Oslo")),
    ({"guided_grammar": 'root ::= "a" ("b" | "c")+'}, lambda t: re.fullmatch("a[bc]+", t)),
])
def test_vllm_structured_outputs_and_guided_names(server, fields, check) -> None:
    for path, body in (("/v1/chat/completions", CHAT), ("/v1/completions", {"prompt": "x"})):
        for text in texts(post(server, path, {**body, "max_tokens": 60, "n": 2, **HOT,
                                              **fields})):
            assert check(text) is not False, text


@pytest.mark.parametrize("fields, param, message", [
    ({"response_format": {"type": "json_schema", "json_schema": {
        "name": "x", "schema": {"type": "foo"}}}}, "response_format.json_schema.schema",
     "response_format.json_schema.schema: invalid JSON schema: Invalid type: foo"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}},
     "response_format.json_schema.schema",
     "response_format.json_schema.schema: is required for type json_schema"),
    ({"structured_outputs": {"regex": "(ab"}}, "structured_outputs.regex", None),
    ({"structured_outputs": {"regex": "a", "choice": ["b"]}}, "structured_outputs",
     "structured_outputs: set exactly one of json, json_object, regex, choice, grammar"),
    ({"guided_json": {"type": "integer", "minimum": 5, "maximum": 1}}, "guided_json",
     "guided_json: invalid JSON schema: Unsatisfiable schema: minimum (5) is greater than "
     "maximum (1)"),
    ({"guided_json": "{nope"}, "guided_json", None),
    ({"guided_grammar": "start: foo"}, "guided_grammar", None),
    ({"guided_choice": []}, "guided_choice", "guided_choice: choice must not be empty"),
    ({"guided_choice": [str(i) for i in range(16385)]}, "guided_choice",
     "guided_choice: choice: at most 16384 strings, got 16385"),
    ({"guided_regex": "a+", "response_format": {"type": "json_object"}}, "guided_regex",
     "guided_regex: only one output constraint per request (the request also sets "
     "response_format)"),
])
def test_invalid_constraints_are_400s_naming_the_field(server, fields, param, message) -> None:
    for path, body in (("/v1/chat/completions", CHAT), ("/v1/completions", {"prompt": "x"})):
        r = post(server, path, {**body, **fields})
        assert r.status_code == 400, r.text
        err = r.json()["error"]
        assert err["param"] == param and err["code"] == "invalid_value"
        assert err["message"] == message if message else err["message"].startswith(param + ": ")
    server.wait_idle()


def test_invalid_tool_schemas_and_text_formats_are_400s(server) -> None:
    """The param names the tool whose schema is bad (it was ``tools`` alone), under every
    ``tool_choice`` (auto and none got a 200 before), streamed or not."""
    tools = [{"type": "function", "function": {"name": "g"}},
             {"type": "function", "function": {"name": "f", "parameters": {"type": "nope"}}}]
    for choice in (None, "auto", "none", "required", {"type": "function", "function": {"name": "f"}}):
        for stream in (False, True):
            r = post(server, "/v1/chat/completions", {**CHAT, "tools": tools, "stream": stream,
                                                       **({} if choice is None else {"tool_choice": choice})})
            assert r.status_code == 400, (choice, r.text)
            assert r.json() == {"error": {
                "message": "tools[1].function.parameters: not a valid JSON Schema: 'nope' is not "
                           "valid under any of the given schemas (at type)",
                "type": "invalid_request_error", "param": "tools[1].function.parameters",
                "code": "invalid_value"}}
    flat = [{"type": "function", **t["function"]} for t in tools]  # the Responses API's
    for choice in ("required", "auto"):
        r = post(server, "/v1/responses", {"input": "hi", "tools": flat, "tool_choice": choice})
        assert r.status_code == 400 and r.json()["error"]["param"] == "tools[1].parameters", r.text
    r = post(server, "/v1/responses", {"input": "hi", "text": {"format": {
        "type": "json_schema", "name": "x", "schema": {"type": "object", "minProperties": "a"}}}})
    assert r.status_code == 400 and r.json()["error"]["param"] == "text.format.schema"
    server.wait_idle()


def test_valid_tool_schema_the_grammar_cannot_compile_is_refused_only_when_forced(server) -> None:
    """``dependentSchemas`` is valid JSON Schema that llguidance does not implement: under
    ``auto`` nothing compiles it (the tiny model's context cannot hold the tool prompt, so
    the chat route's refusal is the context's; /tokenize renders it: 200); a forced call
    must compile it (400 naming the tool)."""
    tools = [{"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "dependentSchemas": {"a": {"required": ["b"]}}}}}]
    r = post(server, "/v1/chat/completions", {**CHAT, "tools": tools, "tool_choice": "auto"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded", r.text
    r = post(server, "/tokenize", {"messages": CHAT["messages"], "tools": tools})
    assert r.status_code == 200 and r.json()["count"] > 500, r.text
    r = post(server, "/v1/chat/completions", {**CHAT, "tools": tools, "tool_choice": "required"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "tools[0].function.parameters"
    server.wait_idle()


def test_streamed_n_seed_logprobs_under_a_schema_equal_the_whole_answer(server) -> None:
    body = {**CHAT, **HOT, "n": 2, "logprobs": True, "top_logprobs": 2, "response_format": FORMAT}
    whole = post(server, "/v1/chat/completions", body).json()["choices"]
    parts: dict[int, str] = {}
    tokens: dict[int, int] = {}
    with httpx.stream("POST", server.url + "/v1/chat/completions", json={**body, "stream": True},
                      timeout=120) as r:
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            for c in json.loads(line[6:])["choices"]:
                parts[c["index"]] = parts.get(c["index"], "") + (c["delta"].get("content") or "")
                tokens[c["index"]] = tokens.get(c["index"], 0) + len(
                    (c.get("logprobs") or {}).get("content") or [])
    for c in whole:
        assert parts[c["index"]] == c["message"]["content"]
        assert tokens[c["index"]] == len(c["logprobs"]["content"]) > 0
        jsonschema.validate(json.loads(c["message"]["content"]), PERSON)


def test_a_session_opened_with_a_response_format_closes_with_valid_json(server) -> None:
    opened = post(server, "/v1/sessions", {"messages": [], "prompt": "Describe ", **HOT,
                                           "max_tokens": 300, "response_format": FORMAT})
    assert opened.status_code == 200, opened.text
    sid = opened.json()["id"]
    assert post(server, f"/v1/sessions/{sid}/append", {"text": "a person.", "seq": 0}
                ).status_code == 200
    answer = post(server, f"/v1/sessions/{sid}/close", {})
    assert answer.status_code == 200, answer.text
    jsonschema.validate(json.loads(answer.json()["choices"][0]["message"]["content"]), PERSON)
    bad = post(server, "/v1/sessions", {"prompt": "x", "guided_regex": "("})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "guided_regex"


WEATHER = {"type": "object", "additionalProperties": False, "required": ["city", "unit"],
           "properties": {"city": {"type": "string", "maxLength": 10},
                          "unit": {"enum": ["c", "f"]}}}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": WEATHER}},
         {"type": "function", "function": {"name": "get_time", "parameters": {
             "type": "object", "additionalProperties": False, "required": ["zone"],
             "properties": {"zone": {"enum": ["utc", "cet"]}}}}}]


@pytest.mark.parametrize("choice", ["required", {"type": "function",
                                                 "function": {"name": "get_weather"}}])
def test_required_and_named_tool_calls_always_parse(choice) -> None:
    """One call (``parallel_tool_calls: false``), so the output is bounded: valid by
    construction on random weights."""
    cfg = EngineConfig(**{**TINY_ENGINE, "block_size": 16, "max_num_batched_tokens": 1024})
    llm = AsyncLLM(LLMEngine(config=cfg, checkpoint=tiny_checkpoint(max_position_embeddings=8192)))
    with live_server(llm, ServerConfig(served_model_name="tiny")) as live:  # the tool prompt
        r = post(live, "/v1/chat/completions", {
            "messages": [{"role": "user", "content": "Weather?"}], "tools": TOOLS,
            "tool_choice": choice, "parallel_tool_calls": False, "n": 3, "temperature": 5.0,
            "seed": 2, "max_tokens": 300})
    llm.shutdown()
    assert r.status_code == 200, r.text
    schemas = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
    for c in r.json()["choices"]:
        calls = c["message"]["tool_calls"]
        assert calls and c["finish_reason"] == "tool_calls"
        for call in calls:
            name = call["function"]["name"]
            assert isinstance(choice, str) or name == "get_weather"
            jsonschema.validate(json.loads(call["function"]["arguments"]), schemas[name])


def test_the_vocabulary_index_is_built_before_serving(monkeypatch) -> None:
    """llguidance holds the GIL while it indexes the vocabulary (Gemma 3's 262k tokens took
    4-14 s, stalling every stream and /health when the first constrained request came):
    ``create_app`` builds it, and a request's compile then only compiles its grammar."""
    import llguidance

    import thinkstream.structured.compiler as compiler_module
    from thinkstream.sampling_params import StructuredOutputsParams
    from thinkstream.server.app import create_app

    built, real = [], llguidance.LLTokenizer

    def counting(*args, **kwargs):
        built.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(compiler_module.llguidance, "LLTokenizer", counting)
    llm = tiny_llm()
    try:
        assert built == []
        create_app(llm, ServerConfig(served_model_name="tiny"))
        assert built == [1]
        llm.engine.structured.compile(StructuredOutputsParams(json_object=True))
        assert built == [1]
    finally:
        llm.shutdown()
