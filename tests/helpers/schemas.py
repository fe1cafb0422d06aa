"""Twenty JSON schemas for structured-output tests: nested objects, arrays, enums, numbers
with bounds, strings with patterns, unions, ``$ref``, nullables, consts, non-object roots.

Every schema describes a finite language (strings capped by ``maxLength``, an enum or a
bounded pattern, arrays by ``maxItems``, numbers by bounds and ``multipleOf``, objects closed
by ``additionalProperties: false``), so a constrained output ends within ``MAX_TOKENS``
tokens whatever the model's weights: on random weights every output still parses and
validates, by construction."""

from __future__ import annotations

MAX_TOKENS = 700  # over every schema's longest output in bytes (a token is at least one)


def _obj(props: dict, required: list[str] | None = None) -> dict:
    return {"type": "object", "properties": props, "additionalProperties": False,
            "required": list(props) if required is None else required}


def _s(n: int = 8) -> dict:
    return {"type": "string", "maxLength": n}


SCHEMAS: dict[str, dict] = {
    "flat": _obj({"name": _s(10), "age": {"type": "integer", "minimum": 0, "maximum": 120},
                  "active": {"type": "boolean"}}),
    "enums": _obj({"color": {"enum": ["red", "green", "blue"]},
                   "size": {"type": "string", "enum": ["S", "M", "L", "XL"]}}),
    "nested_object": _obj({"user": _obj({
        "name": _s(), "address": _obj({"city": _s(), "zip": {"type": "string",
                                                              "pattern": "^[0-9]{5}$"}})})}),
    "integer_array": _obj({"scores": {"type": "array", "minItems": 1, "maxItems": 4,
                                      "items": {"type": "integer", "minimum": 1,
                                                "maximum": 9}}}),
    "object_array": _obj({"rows": {"type": "array", "maxItems": 3, "items": _obj({
        "id": {"type": "integer", "minimum": 0, "maximum": 999},
        "label": {"enum": ["todo", "done"]}})}}),
    "number_bounds": _obj({
        "price": {"type": "number", "minimum": 0, "maximum": 100, "multipleOf": 0.25},
        "rating": {"type": "number", "minimum": 1, "maximum": 5, "multipleOf": 0.5}}),
    "string_patterns": _obj({"sku": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{3}$"},
                             "phone": {"type": "string", "pattern": "^\\+[0-9]{2} [0-9]{4}$"}}),
    "date_pattern": _obj({"day": {"type": "string", "pattern":
                                  "^20[0-9]{2}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])$"}}),
    "optional_fields": _obj({"id": {"type": "integer", "minimum": 1, "maximum": 50},
                             "note": _s(6)}, required=["id"]),
    "nullable": _obj({"nickname": {"anyOf": [_s(5), {"type": "null"}]},
                      "count": {"type": ["integer", "null"], "minimum": 0, "maximum": 9}}),
    "const_and_enum": _obj({"kind": {"const": "event"}, "level": {"enum": [1, 2, 3]}}),
    "union_of_objects": _obj({"shape": {"anyOf": [
        _obj({"type": {"const": "circle"}, "radius": {"type": "integer", "minimum": 1,
                                                      "maximum": 10}}),
        _obj({"type": {"const": "square"}, "side": {"type": "integer", "minimum": 1,
                                                    "maximum": 10}})]}}),
    "refs": {"$defs": {"point": _obj({"x": {"type": "integer", "minimum": -9, "maximum": 9},
                                      "y": {"type": "integer", "minimum": -9, "maximum": 9}})},
             **_obj({"start": {"$ref": "#/$defs/point"}, "end": {"$ref": "#/$defs/point"}})},
    "nested_arrays": _obj({"matrix": {"type": "array", "maxItems": 2, "items": {
        "type": "array", "maxItems": 2, "items": {"type": "integer", "minimum": 0,
                                                  "maximum": 9}}}}),
    "deep_nesting": _obj({"a": _obj({"b": _obj({"c": _obj({"d": {"type": "boolean"}})})})}),
    "array_root": {"type": "array", "minItems": 1, "maxItems": 3,
                   "items": {"enum": ["alpha", "beta", "gamma"]}},
    "enum_root": {"type": "string", "enum": ["approve", "reject", "escalate"]},
    "tool_calls": {"type": "array", "minItems": 1, "maxItems": 2, "items": {"anyOf": [
        _obj({"name": {"const": "get_weather"},
              "arguments": _obj({"city": _s(), "unit": {"enum": ["c", "f"]}})}),
        _obj({"name": {"const": "search"},
              "arguments": _obj({"query": _s(), "limit": {"type": "integer", "minimum": 1,
                                                          "maximum": 10}})})]}},
    "exclusive_bounds": _obj({"level": {"type": "integer", "exclusiveMinimum": 0,
                                        "exclusiveMaximum": 5},
                              "ok": {"type": "boolean"}}),
    "order": _obj({
        "customer": _obj({"email": {"type": "string", "pattern": "^[a-z]{1,6}@[a-z]{1,6}\\.com$"},
                          "vip": {"type": "boolean"}}),
        "items": {"type": "array", "minItems": 1, "maxItems": 2, "items": _obj({
            "sku": {"type": "string", "pattern": "^[a-z]{2}[0-9]{2}$"},
            "qty": {"type": "integer", "minimum": 1, "maximum": 10},
            "price": {"type": "number", "minimum": 0, "maximum": 50, "multipleOf": 0.25}})},
        "status": {"enum": ["open", "paid", "shipped"]}}),
}
assert len(SCHEMAS) == 20
