"""Tool calls, reasoning and the Responses API against a live server, through the clients
people use: the ``openai`` SDK (a tool loop with tool_choice auto / required / named,
``responses.create`` plain and streamed), LangChain's ``bind_tools`` and an openai-agents
agent with one function tool on its default Responses API.

The tiny random model writes gibberish, so its output is scripted (``helpers.scripted``):
the sampler's picks are replaced by the tokens of a chosen reply, and everything after
sampling (detokenizer, parsers, streaming, formatting) runs for real. The tiny template has
no tool support, so these requests also exercise the tool prompt."""

from __future__ import annotations

import asyncio
import json
import re
import zlib

import httpx
import pytest
from conftest import live_server
from helpers.scripted import script
from helpers.tiny import tiny_checkpoint

from thinkstream.async_llm import AsyncLLM
from thinkstream.config import EngineConfig
from thinkstream.engine.llm_engine import LLMEngine
from thinkstream.server.config import ServerConfig

openai = pytest.importorskip("openai")

CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
THOUGHT = "<think>\nThe user wants the weather.\n</think>\n\n"
RULES = [  # (marker in the last turn, scripted reply), first match wins
    ("REPORT", '{"city": "Paris", "temp_c": 22}'),
    ("<tool_response>", "It is sunny in Paris."),
    ("[required]", '[{"name": "get_weather", "arguments": {"city": "Paris"}}]'),
    ("[named]", '{"city": "Paris"}'),
    ("[think]", THOUGHT + CALL),
    ("[answer-think]", "<think>Easy.</think>\n\nParis."),
    ("[two]", CALL + "\n" + CALL.replace("Paris", "Rome") + "\n"),
    ("weather", CALL),
]
TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "The current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]}}}]
WEATHER = {"city": "Paris"}


def reply(prompt: str) -> str:
    last = prompt.rsplit("<|im_start|>", 2)[-2] if "<|im_start|>" in prompt else prompt
    if "[recall]" in last:  # short (a token a step): what reached the model, as a digest
        return heard(re.findall(r"<\|im_start\|>user\n(.*?)<\|im_end\|>", prompt, re.S))
    return next((text for marker, text in RULES if marker in last), "Hello there.")


def heard(user_turns: list[str]) -> str:
    return f"Heard {len(user_turns)}: {zlib.crc32('|'.join(user_turns).encode()):08x}"


def scripted_llm() -> AsyncLLM:
    """The tiny model with room for the tool prompt (its own context is 512)."""
    cfg = EngineConfig(block_size=16, num_blocks=512, max_num_seqs=8, max_num_batched_tokens=1024)
    llm = AsyncLLM(LLMEngine(config=cfg, checkpoint=tiny_checkpoint(max_position_embeddings=8192)))
    script(llm, reply)
    return llm


@pytest.fixture(scope="module")
def server():
    llm = scripted_llm()
    with live_server(llm, ServerConfig(served_model_name="tiny", reasoning_parser="qwen3")) as live:
        yield live
    llm.shutdown()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0)


def ask(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def streamed_message(stream) -> tuple[str, str, list[dict], str]:
    """Content, reasoning, tool calls (by index) and finish reason of a chat stream."""
    content, reasoning, calls, finish = "", "", {}, None
    for chunk in stream:
        if not chunk.choices:
            continue
        choice = chunk.choices[0]
        delta = choice.delta
        content += delta.content or ""
        reasoning += getattr(delta, "reasoning_content", None) or ""
        for tc in delta.tool_calls or []:
            call = calls.setdefault(tc.index, {"id": None, "name": None, "arguments": ""})
            if tc.id:
                assert call["id"] is None, "the id comes once, with the first delta"
                call.update(id=tc.id, name=tc.function.name)
                assert tc.function.arguments == "" and tc.type == "function"
            else:
                assert call["id"] is not None, "argument fragments follow the header"
                call["arguments"] += tc.function.arguments
        finish = choice.finish_reason or finish
    return content, reasoning, [calls[i] for i in sorted(calls)], finish


CASES = [  # (user text, tool_choice, expected calls)
    ("What is the weather in Paris?", "auto", [("get_weather", WEATHER)]),
    ("[required] weather please", "required", [("get_weather", WEATHER)]),
    ("[named] weather please", {"type": "function", "function": {"name": "get_weather"}},
     [("get_weather", WEATHER)]),
    ("[two] weather in two cities", "auto", [("get_weather", WEATHER),
                                              ("get_weather", {"city": "Rome"})]),
]


@pytest.mark.parametrize(("text", "choice", "expected"), CASES)
def test_tool_loop_with_the_openai_sdk(client, text, choice, expected) -> None:
    first = client.chat.completions.create(model="tiny", messages=ask(text), tools=TOOLS,
                                           tool_choice=choice, max_tokens=200)
    choice0 = first.choices[0]
    assert choice0.finish_reason == "tool_calls"
    assert choice0.message.content is None
    calls = choice0.message.tool_calls
    assert [(c.function.name, json.loads(c.function.arguments)) for c in calls] == expected
    assert all(c.id.startswith("call_") and c.type == "function" for c in calls)
    history = ask(text) + [choice0.message.model_dump(exclude_none=True)] + [
        {"role": "tool", "tool_call_id": c.id, "content": "22 C, sunny"} for c in calls]
    second = client.chat.completions.create(model="tiny", messages=history, tools=TOOLS,
                                            max_tokens=50)
    assert second.choices[0].message.content == "It is sunny in Paris."
    assert second.choices[0].finish_reason == "stop"
    assert second.choices[0].message.tool_calls is None


@pytest.mark.parametrize(("text", "choice", "expected"), CASES)
def test_streamed_tool_call_deltas_concatenate_to_the_call(client, text, choice, expected) -> None:
    whole = client.chat.completions.create(model="tiny", messages=ask(text), tools=TOOLS,
                                           tool_choice=choice, max_tokens=200)
    stream = client.chat.completions.create(model="tiny", messages=ask(text), tools=TOOLS,
                                            tool_choice=choice, max_tokens=200, stream=True)
    content, _, calls, finish = streamed_message(stream)
    assert (content, finish) == ("", "tool_calls")
    assert [(c["name"], c["arguments"]) for c in calls] == [
        (c.function.name, c.function.arguments) for c in whole.choices[0].message.tool_calls]
    assert all(c["id"].startswith("call_") for c in calls)


def test_reasoning_parser_splits_reasoning_and_calls(client) -> None:
    whole = client.chat.completions.create(model="tiny", messages=ask("[think] weather?"),
                                           tools=TOOLS, max_tokens=200)
    message = whole.choices[0].message
    assert message.reasoning_content == "The user wants the weather."
    assert [(c.function.name, c.function.arguments) for c in message.tool_calls] == [
        ("get_weather", '{"city": "Paris"}')]
    content, reasoning, calls, finish = streamed_message(client.chat.completions.create(
        model="tiny", messages=ask("[think] weather?"), tools=TOOLS, max_tokens=200, stream=True))
    assert (content, reasoning, finish) == ("", "The user wants the weather.", "tool_calls")
    assert [c["arguments"] for c in calls] == ['{"city": "Paris"}']
    plain = client.chat.completions.create(model="tiny", messages=ask("[answer-think]"),
                                           max_tokens=50)
    assert plain.choices[0].message.content == "Paris."
    assert plain.choices[0].message.reasoning_content == "Easy."
    assert plain.choices[0].finish_reason == "stop"


def test_include_reasoning_false_leaves_the_reasoning_out(server) -> None:
    """vLLM's include_reasoning: false: no reasoning_content, streamed or not, and with the
    reasoning parser on no logprobs or token ids (they would spell the reasoning out)."""
    body = {"messages": ask("[answer-think]"), "max_tokens": 50, "include_reasoning": False,
            "logprobs": True, "return_token_ids": True}
    r = httpx.post(server.url + "/v1/chat/completions", json=body, timeout=60).json()
    choice = r["choices"][0]
    assert choice["message"] == {"role": "assistant", "content": "Paris."}
    assert choice["logprobs"] is None and "token_ids" not in choice
    with httpx.stream("POST", server.url + "/v1/chat/completions", json={**body, "stream": True},
                      timeout=60) as s:
        chunks = [json.loads(line[6:]) for line in s.iter_lines()
                  if line.startswith("data: ") and line != "data: [DONE]"]
    deltas = [c["choices"][0]["delta"] for c in chunks]
    assert all("reasoning_content" not in d for d in deltas) and all(d for d in deltas[1:-1])
    assert "".join(d.get("content") or "" for d in deltas) == "Paris."
    assert all(c["choices"][0]["logprobs"] is None for c in chunks)
    shown = httpx.post(server.url + "/v1/chat/completions", timeout=60, json={
        **body, "include_reasoning": True, "logprobs": False}).json()["choices"][0]
    assert shown["message"]["reasoning_content"] == "Easy." and shown["token_ids"]


def test_tool_choice_none_parses_nothing(client) -> None:
    r = client.chat.completions.create(model="tiny", messages=ask("What is the weather?"),
                                       tools=TOOLS, tool_choice="none", max_tokens=200)
    assert r.choices[0].message.tool_calls is None
    assert r.choices[0].message.content == CALL and r.choices[0].finish_reason == "stop"


def test_responses_create_plain_and_streamed(client) -> None:
    r = client.responses.create(model="tiny", input="Say hello.", instructions="Be brief.",
                                max_output_tokens=50)
    assert r.status == "completed" and r.output_text == "Hello there."
    assert [item.type for item in r.output] == ["message"]
    assert r.usage.output_tokens == len(client_tokens("Hello there.")) + 1  # + EOS
    assert r.usage.total_tokens == r.usage.input_tokens + r.usage.output_tokens
    events = list(client.responses.create(model="tiny", input="Say hello.", stream=True,
                                          max_output_tokens=50))
    kinds = [e.type for e in events]
    assert kinds[:4] == ["response.created", "response.in_progress",
                         "response.output_item.added", "response.content_part.added"]
    assert kinds[-4:] == ["response.output_text.done", "response.content_part.done",
                          "response.output_item.done", "response.completed"]
    assert set(kinds[4:-4]) == {"response.output_text.delta"}
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == \
        "Hello there."
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert events[-1].response.output_text == "Hello there."


def client_tokens(text: str) -> list[int]:
    return tiny_checkpoint().tokenizer.encode(text, add_special_tokens=False)


def test_responses_function_call_and_reasoning(client) -> None:
    tools = [{"type": "function", "name": "get_weather", **{
        k: TOOLS[0]["function"][k] for k in ("description", "parameters")}}]
    r = client.responses.create(model="tiny", input="[think] weather?", tools=tools,
                                max_output_tokens=200)
    assert [item.type for item in r.output] == ["reasoning", "function_call"]
    assert r.output[0].content[0].text == "The user wants the weather."
    call = r.output[1]
    assert (call.name, call.arguments, call.status) == ("get_weather", '{"city": "Paris"}',
                                                        "completed")
    events = list(client.responses.create(model="tiny", input="[think] weather?", tools=tools,
                                          max_output_tokens=200, stream=True))
    args = "".join(e.delta for e in events if e.type == "response.function_call_arguments.delta")
    assert args == '{"city": "Paris"}'
    done = [e for e in events if e.type == "response.function_call_arguments.done"]
    assert [(e.arguments, e.name) for e in done] == [('{"city": "Paris"}', "get_weather")]
    assert events[-1].response.output[1].arguments == call.arguments
    follow = client.responses.create(model="tiny", tools=tools, max_output_tokens=50, input=[
        {"role": "user", "content": "[think] weather?"},
        {"type": "function_call", "call_id": call.call_id, "name": call.name,
         "arguments": call.arguments},
        {"type": "function_call_output", "call_id": call.call_id, "output": "22 C"}])
    assert follow.output_text == "It is sunny in Paris."


def test_responses_cut_by_max_output_tokens_is_incomplete(client) -> None:
    r = client.responses.create(model="tiny", input="Say hello.", max_output_tokens=3)
    assert r.status == "incomplete" and r.incomplete_details.reason == "max_output_tokens"
    assert [(o.type, o.status) for o in r.output] == [("message", "incomplete")]
    flat = [{"type": "function", **TOOLS[0]["function"]}]  # a forced call cut in its arguments
    r = client.responses.create(model="tiny", input="[required] weather please", tools=flat,
                                tool_choice="required", max_output_tokens=38)
    assert [(o.type, o.name, o.arguments, o.status) for o in r.output] == [
        ("function_call", "get_weather", '{"cit', "incomplete")]
    with client.responses.stream(model="tiny", input="[required] weather please", tools=flat,
                                 tool_choice="required", max_output_tokens=38) as stream:
        done = [ev.item for ev in stream if ev.type == "response.output_item.done"]
    assert [(o.arguments, o.status) for o in done] == [('{"cit', "incomplete")]


def test_responses_refuses_conversations_and_stored_prompts(server) -> None:
    """(``store``, ``previous_response_id`` and ``background``: ``test_responses_store``.)"""
    for field, value in (("conversation", "conv_1"), ("conversation", {"id": "conv_1"}),
                         ("prompt", {"id": "pmpt_1"})):
        r = httpx.post(server.url + "/v1/responses", json={"input": "hi", field: value})
        assert r.status_code == 400
        assert r.json()["error"]["param"] == field and r.json()["error"]["code"] == "unsupported"
    r = httpx.post(server.url + "/v1/responses", json={"input": [
        {"role": "user", "content": [{"type": "input_image", "image_url": "http://x/y.png"}]}]})
    assert r.status_code == 400
    assert r.json()["error"]["message"] == ("input[0].content[0]: content parts of type "
                                            "'input_image' are not supported: this model takes "
                                            "text only")
    r = httpx.post(server.url + "/v1/responses",
                   json={"input": "hi", "tools": [{"type": "web_search"}]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "tools[0].type"


def test_langchain_bind_tools(server) -> None:
    lc = pytest.importorskip("langchain_openai")
    from langchain_core.tools import tool

    @tool
    def get_weather(city: str) -> str:
        """The current weather in a city."""
        return "22 C"

    model = lc.ChatOpenAI(model="tiny", base_url=server.url + "/v1", api_key="none",
                          max_tokens=200, max_retries=0).bind_tools([get_weather])
    msg = model.invoke("What is the weather in Paris?")
    assert [(c["name"], c["args"]) for c in msg.tool_calls] == [("get_weather", WEATHER)]
    chunks = list(model.stream("What is the weather in Paris?"))
    total = chunks[0]
    for c in chunks[1:]:
        total = total + c
    assert [(c["name"], c["args"]) for c in total.tool_calls] == [("get_weather", WEATHER)]


def test_openai_agents_agent_with_a_function_tool(server) -> None:
    agents = pytest.importorskip("agents")
    agents.set_tracing_disabled(True)
    seen = []

    @agents.function_tool
    def get_weather(city: str) -> str:
        """The current weather in a city."""
        seen.append(city)
        return f"22 C and sunny in {city}"

    async def run() -> tuple[str, str]:
        client = openai.AsyncOpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0)
        model = agents.OpenAIResponsesModel(model="tiny", openai_client=client)
        agent = agents.Agent(name="weather", instructions="Answer questions about the weather.",
                             tools=[get_weather], model=model)
        plain = await agents.Runner.run(agent, "What is the weather in Paris?")
        streamed = agents.Runner.run_streamed(agent, "What is the weather in Paris?")
        async for _ in streamed.stream_events():
            pass
        await client.close()
        return plain.final_output, streamed.final_output

    assert asyncio.run(run()) == ("It is sunny in Paris.", "It is sunny in Paris.")
    assert seen == ["Paris", "Paris"]


def test_openai_agents_chain_turns_by_previous_response_id(server) -> None:
    """openai-agents on the stored responses: a run continuing the last one by
    ``previous_response_id`` (plain and streamed) gets the answer of the whole conversation
    sent, and ``auto_previous_response_id`` sends a tool's result alone, chained by id."""
    agents = pytest.importorskip("agents")
    agents.set_tracing_disabled(True)
    sent: list[dict] = []

    async def record(request: httpx.Request) -> None:
        if request.method == "POST":
            sent.append(json.loads(request.content))

    @agents.function_tool
    def get_weather(city: str) -> str:
        """The current weather in a city."""
        return f"22 C and sunny in {city}"

    async def run() -> list[str]:
        client = openai.AsyncOpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0,
                                    http_client=httpx.AsyncClient(
                                        event_hooks={"request": [record]}))
        model = agents.OpenAIResponsesModel(model="tiny", openai_client=client)
        agent = agents.Agent(name="weather", instructions="Answer questions about the weather.",
                             tools=[get_weather], model=model)
        first = await agents.Runner.run(agent, "What is the weather in Paris?",
                                        auto_previous_response_id=True)
        ask = "[recall] what did I ask?"
        chained = await agents.Runner.run(agent, ask, previous_response_id=first.last_response_id)
        whole = await agents.Runner.run(agent, first.to_input_list() + [
            {"role": "user", "content": ask}])
        streamed = agents.Runner.run_streamed(agent, "[recall] and then?",
                                              previous_response_id=chained.last_response_id)
        async for _ in streamed.stream_events():
            pass
        await client.close()
        return [first.final_output, chained.final_output, whole.final_output,
                streamed.final_output]

    turns = ["What is the weather in Paris?",
             "<tool_response>\n22 C and sunny in Paris\n</tool_response>", "[recall] what did I ask?"]
    assert asyncio.run(run()) == ["It is sunny in Paris.", heard(turns), heard(turns),
                                  heard(turns + ["[recall] and then?"])]
    call_id = sent[1]["input"][0]["call_id"]
    assert [(s.get("previous_response_id") is not None, s["input"]) for s in sent[:2]] == [
        (False, [{"role": "user", "content": "What is the weather in Paris?"}]),
        (True, [{"type": "function_call_output", "call_id": call_id,
                 "output": "22 C and sunny in Paris"}])]  # the call itself is stored


def test_langchain_chains_turns_by_previous_response_id(server) -> None:
    """LangChain's ``ChatOpenAI(use_responses_api=True, use_previous_response_id=True)``
    sends only the messages after its last answer, chained by that answer's id (which must
    look like OpenAI's ``resp_...``, or LangChain sends everything), plain and streamed; the
    text is that of the whole conversation sent. ``previous_response_id=`` works too."""
    lc = pytest.importorskip("langchain_openai")
    from langchain_core.messages import HumanMessage

    sent: list[dict] = []
    http = httpx.Client(event_hooks={"request": [
        lambda r: sent.append(json.loads(r.content)) if r.method == "POST" else None]})
    kw = dict(model="tiny", base_url=server.url + "/v1", api_key="none", max_retries=0,
              use_responses_api=True, http_client=http)
    chaining, plain = lc.ChatOpenAI(use_previous_response_id=True, **kw), lc.ChatOpenAI(**kw)
    first = chaining.invoke("Hello")
    rid = first.response_metadata["id"]
    assert first.text == "Hello there." and rid.startswith("resp_")
    turns = [HumanMessage("Hello"), first, HumanMessage("[recall] what did I say?")]
    chained = chaining.invoke(turns)
    chunks = list(chaining.stream(turns))
    streamed = chunks[0]
    for c in chunks[1:]:
        streamed = streamed + c
    by_kwarg = plain.invoke("[recall] what did I say?", previous_response_id=rid)
    whole = plain.invoke(turns)
    answer = heard(["Hello", "[recall] what did I say?"])
    assert [m.text for m in (chained, streamed, by_kwarg, whole)] == [answer] * 4
    last = [{"content": "[recall] what did I say?", "role": "user", "type": "message"}]
    assert [(s.get("previous_response_id"), s["input"]) for s in sent[1:4]] == [
        (rid, last)] * 3
    assert "previous_response_id" not in sent[4] and len(sent[4]["input"]) == 3


def test_openai_agents_agent_with_a_function_tool_and_an_output_type(server) -> None:
    """The agent's ``output_type`` reaches the server as ``text.format``; with tools on
    ``auto`` the grammar is "a tool call or the typed answer", so the model calls the tool
    first (constrained, the call must still be possible) and then answers in the type."""
    agents = pytest.importorskip("agents")
    pydantic = pytest.importorskip("pydantic")
    agents.set_tracing_disabled(True)

    class Weather(pydantic.BaseModel):
        city: str
        temp_c: int

    @agents.function_tool
    def get_weather(city: str) -> str:
        """The current weather in a city."""
        return f"REPORT {city} 22 C"

    async def run():
        client = openai.AsyncOpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0)
        model = agents.OpenAIResponsesModel(model="tiny", openai_client=client)
        agent = agents.Agent(name="weather", instructions="Answer questions about the weather.",
                             tools=[get_weather], model=model, output_type=Weather)
        result = await agents.Runner.run(agent, "What is the weather in Paris?")
        await client.close()
        return result.final_output

    assert asyncio.run(run()) == Weather(city="Paris", temp_c=22)


def test_a_json_answer_format_with_tools_on_auto_still_allows_a_call(client) -> None:
    fmt = {"type": "json_schema", "json_schema": {"name": "w", "schema": {
        "type": "object", "properties": {"city": {"type": "string"}, "temp_c": {"type": "integer"}},
        "required": ["city", "temp_c"]}}}
    r = client.chat.completions.create(model="tiny", messages=ask("weather in Paris"),
                                       tools=TOOLS, response_format=fmt, max_tokens=200)
    assert r.choices[0].finish_reason == "tool_calls"
    assert [json.loads(c.function.arguments) for c in r.choices[0].message.tool_calls] == [WEATHER]


def test_parallel_tool_calls_false_keeps_the_first_call(client) -> None:
    kw = dict(model="tiny", messages=ask("[two] weather in two cities"), tools=TOOLS,
              parallel_tool_calls=False, max_tokens=200)
    whole = client.chat.completions.create(**kw)
    assert [c.function.arguments for c in whole.choices[0].message.tool_calls] == [
        '{"city": "Paris"}']
    _, _, calls, finish = streamed_message(client.chat.completions.create(**kw, stream=True))
    assert [c["arguments"] for c in calls] == ['{"city": "Paris"}'] and finish == "tool_calls"



NAMED = {"type": "function", "function": {"name": "get_weather"}}


@pytest.mark.parametrize(("text", "choice", "cut", "arguments"), [
    ("[required] weather please", "required", 12, ""),  # cut inside the name
    ("[required] weather please", "required", 38, '{"cit'),
    ("[named] weather please", NAMED, 3, '{"c')])
def test_a_forced_call_cut_by_max_tokens_keeps_what_was_written(client, text, choice, cut,
                                                                arguments) -> None:
    """A required call cut before its name was complete came back as ``content: ""`` and
    no call; OpenAI returns the cut call (name, partial arguments) with ``length``."""
    whole = client.chat.completions.create(model="tiny", messages=ask(text), tools=TOOLS,
                                           tool_choice=choice, max_tokens=cut).choices[0]
    assert (whole.finish_reason, whole.message.content) == ("length", None)
    assert [(c.function.name, c.function.arguments) for c in whole.message.tool_calls] == [
        ("get_weather", arguments)]
    stream = client.chat.completions.create(model="tiny", messages=ask(text), tools=TOOLS,
                                            tool_choice=choice, max_tokens=cut, stream=True)
    content, _, calls, finish = streamed_message(stream)
    assert (content, finish, [(c["name"], c["arguments"]) for c in calls]) == (
        "", "length", [("get_weather", arguments)])
