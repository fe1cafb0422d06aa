"""Structured outputs on the API: the request fields that constrain the output, read into one
``StructuredOutputsParams`` and compiled before admission (``engine.structured.compile``,
cached), so an invalid schema, regex or grammar is a 400 naming the field it came from.

    response_format  {"type": "json_object"} | {"type": "json_schema", "json_schema":
                     {"name", "schema", "strict"}} | {"type": "text"} (no constraint)
    structured_outputs  vLLM's: {"json" | "json_object" | "regex" | "choice" | "grammar"}
    guided_json / guided_regex / guided_choice / guided_grammar  vLLM's older names

At most one of them per request. A required or named ``tool_choice`` (``chat_tools``) and the
Responses API's ``text.format`` are checked here too (``checked``).
"""

from __future__ import annotations

from thinkstream.sampling_params import ParamError, StructuredOutputsParams
from thinkstream.server import protocol as P
from thinkstream.server.errors import APIError
from thinkstream.structured import ConstraintError

_WHAT = {"json": "JSON schema", "json_object": "JSON object", "regex": "regex",
         "choice": "choice", "grammar": "grammar"}


def body_constraint(state, body: P.SamplingRequest) -> StructuredOutputsParams | None:
    """The constraint a request body asks for (compiled, so known to be valid), or None."""
    found = _constraints(body)
    if len(found) > 1:
        field = found[1][0]
        raise APIError(400, f"{field}: only one output constraint per request (the request "
                       f"also sets {found[0][0]})", field, "invalid_value")
    return checked(state, found[0][1], found[0][0]) if found else None


def checked(state, so: StructuredOutputsParams | None,
            field: str) -> StructuredOutputsParams | None:
    """``so`` once it compiles for the served model; a 400 naming ``field`` if it does not."""
    if so is None:
        return None
    try:
        state.llm.engine.structured.compile(so)
    except ConstraintError as exc:
        raise APIError(400, f"{field}: invalid {_WHAT[exc.field]}: {exc.reason}", field,
                       "invalid_value") from None
    return so


def checked_tools(state, so: StructuredOutputsParams | None,
                  schemas: list[tuple[int, dict]]) -> StructuredOutputsParams | None:
    """``checked`` for a constraint built from tools' schemas (``chat_tools``): one that does
    not compile is a 400 naming the first tool whose own schema does not,
    ``tools[i].function.parameters`` (``tools`` if each compiles alone)."""
    try:
        return checked(state, so, "tools")
    except APIError:
        for i, schema in schemas:
            checked(state, StructuredOutputsParams(json=schema), f"tools[{i}].function.parameters")
        raise


def _make(field: str, **kwargs) -> tuple[str, StructuredOutputsParams]:
    try:
        return field, StructuredOutputsParams(**kwargs)
    except ParamError as exc:
        message = str(exc).removeprefix(f"{exc.param} ")
        raise APIError(400, f"{field}: {message}", field, "invalid_value") from None


def _constraints(body: P.SamplingRequest) -> list[tuple[str, StructuredOutputsParams]]:
    found = []
    fmt = body.response_format
    if fmt is not None and fmt.type == "json_object":
        found.append(_make("response_format", json_object=True))
    elif fmt is not None and fmt.type == "json_schema":
        schema = fmt.json_schema.schema_ if fmt.json_schema is not None else None
        if schema is None:
            raise APIError(400, "response_format.json_schema.schema: is required for type "
                           "json_schema", "response_format.json_schema.schema", "invalid_value")
        found.append(_make("response_format.json_schema.schema", json=schema))
    so = body.structured_outputs
    if so is not None:
        values = {"json": so.json_, "regex": so.regex, "choice": so.choice,
                  "grammar": so.grammar, "json_object": so.json_object or None}
        given = [(k, v) for k, v in values.items() if v is not None]
        if len(given) != 1:
            raise APIError(400, "structured_outputs: set exactly one of json, json_object, "
                           "regex, choice, grammar", "structured_outputs", "invalid_value")
        found.append(_make(f"structured_outputs.{given[0][0]}", **dict(given)))
    for name, key in (("guided_json", "json"), ("guided_regex", "regex"),
                      ("guided_choice", "choice"), ("guided_grammar", "grammar")):
        value = getattr(body, name)
        if value is not None:
            found.append(_make(name, **{key: value}))
    return found
