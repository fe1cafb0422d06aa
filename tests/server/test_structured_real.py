"""Integration: structured outputs on the real default model (SmolLM2-135M-Instruct) through
the clients people use: the ``openai`` SDK's ``chat.completions.parse`` with a pydantic
model, ``json_object``, LangChain's ``with_structured_output``, required / named tool calls,
and the twenty schemas of ``helpers.schemas`` sent at once (one batch), every answer valid."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import httpx
import jsonschema
import pytest
from helpers.schemas import MAX_TOKENS, SCHEMAS
from pydantic import BaseModel, Field

pytestmark = pytest.mark.integration
NAME = "smollm2"


class City(BaseModel):
    """Bounded fields: a 135M model left an unbounded number to itself may write digits until
    max_tokens (valid so far, never closed); the bounds make the language finite."""

    name: str = Field(max_length=40)
    country: str = Field(max_length=40)
    population_millions: int = Field(ge=0, le=100)


def test_chat_completions_parse_with_a_pydantic_model(oai, real) -> None:
    r = oai.chat.completions.parse(
        model=NAME, response_format=City, max_tokens=120, temperature=0,
        messages=[{"role": "user", "content": "Describe Paris: its name, its country and "
                   "its population in millions."}])
    city = r.choices[0].message.parsed
    assert isinstance(city, City) and city.name and r.choices[0].finish_reason == "stop"
    real.wait_idle()


def test_json_object_on_the_real_model(oai, real) -> None:
    r = oai.chat.completions.create(
        model=NAME, response_format={"type": "json_object"}, max_tokens=200, temperature=0,
        messages=[{"role": "user", "content": "Give the name and age of a famous scientist as "
                   'a JSON object with the keys "name" and "age".'}])
    assert set(json.loads(r.choices[0].message.content)) == {"name", "age"}
    real.wait_idle()


def test_langchain_with_structured_output(real) -> None:
    from langchain_openai import ChatOpenAI

    chat = ChatOpenAI(model=NAME, base_url=real.url + "/v1", api_key="x", temperature=0,
                      max_tokens=120, max_retries=0)
    city = chat.with_structured_output(City).invoke(
        "Describe Rome: its name, its country and its population in millions.")
    assert isinstance(city, City) and city.name
    real.wait_idle()


WEATHER = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 30},
                                            "unit": {"enum": ["celsius", "fahrenheit"]}},
           "required": ["city", "unit"], "additionalProperties": False}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": WEATHER,
                                           "description": "The current weather in a city"}}]


@pytest.mark.parametrize("choice", ["required", {"type": "function",
                                                 "function": {"name": "get_weather"}}])
def test_forced_tool_calls_parse_on_the_real_model(oai, real, choice) -> None:
    r = oai.chat.completions.create(
        model=NAME, tools=TOOLS, tool_choice=choice, max_tokens=200, temperature=0,
        messages=[{"role": "user", "content": "What is the weather in Paris?"}])
    calls = r.choices[0].message.tool_calls
    assert calls and r.choices[0].finish_reason == "tool_calls"
    for call in calls:
        assert call.function.name == "get_weather"
        jsonschema.validate(json.loads(call.function.arguments), WEATHER)
    real.wait_idle()


def test_twenty_schemas_in_one_batch_all_validate(real) -> None:
    def ask(name: str) -> tuple[str, dict]:
        body = {"model": NAME, "max_tokens": MAX_TOKENS, "temperature": 0,
                "messages": [{"role": "user", "content": f"Give an example of {name.replace('_', ' ')}"
                              " as JSON."}],
                "response_format": {"type": "json_schema",
                                    "json_schema": {"name": name, "schema": SCHEMAS[name]}}}
        return name, httpx.post(real.url + "/v1/chat/completions", json=body, timeout=600).json()

    with ThreadPoolExecutor(len(SCHEMAS)) as pool:
        answers = dict(pool.map(ask, SCHEMAS))
    for name, answer in answers.items():
        choice = answer["choices"][0]
        assert choice["finish_reason"] == "stop", (name, choice)
        jsonschema.validate(json.loads(choice["message"]["content"]), SCHEMAS[name])
    real.wait_idle()
