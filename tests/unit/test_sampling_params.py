from __future__ import annotations

import dataclasses
import math

import pytest

from thinkstream.sampling_params import ParamError, SamplingParams


def test_defaults_match_vllm() -> None:
    p = SamplingParams()
    assert (p.n, p.temperature, p.top_p, p.top_k, p.min_p) == (1, 1.0, 1.0, -1, 0.0)
    assert (p.presence_penalty, p.frequency_penalty, p.repetition_penalty) == (0.0, 0.0, 1.0)
    assert p.max_tokens == 16 and p.min_tokens == 0 and p.seed is None
    assert p.stop == () and p.stop_token_ids == ()
    assert p.logprobs is None and p.prompt_logprobs is None
    assert p.skip_special_tokens and not p.include_stop_str_in_output and not p.ignore_eos


def test_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        SamplingParams().temperature = 0.5  # type: ignore[misc]


@pytest.mark.parametrize(
    ("stop", "expected"),
    [("\n", ("\n",)), (["a", "b"], ("a", "b")), (("x",), ("x",)), (None, ()), ([], ())],
)
def test_stop_normalised_to_tuple(stop: object, expected: tuple[str, ...]) -> None:
    assert SamplingParams(stop=stop).stop == expected  # type: ignore[arg-type]


def test_stop_token_ids_normalised() -> None:
    assert SamplingParams(stop_token_ids=[3, 5]).stop_token_ids == (3, 5)
    assert SamplingParams(stop_token_ids=7).stop_token_ids == (7,)  # type: ignore[arg-type]
    assert hash(SamplingParams(stop=["a"], stop_token_ids=[1]))  # tuples keep it hashable


@pytest.mark.parametrize(
    ("kwargs", "greedy"),
    [
        ({}, False),
        ({"temperature": 0.0}, True),
        ({"top_k": 1}, True),
        ({"temperature": 0.7, "top_k": 2}, False),
        ({"top_k": 0}, False),
    ],
)
def test_greedy(kwargs: dict, greedy: bool) -> None:
    assert SamplingParams(**kwargs).greedy is greedy


@pytest.mark.parametrize(
    ("param", "value"),
    [
        ("n", 0),
        ("temperature", -0.1),
        ("temperature", math.nan),
        ("temperature", math.inf),
        ("top_p", 0.0),
        ("top_p", 1.01),
        ("top_p", math.nan),
        ("top_k", -2),
        ("min_p", -0.1),
        ("min_p", 1.5),
        ("presence_penalty", 2.5),
        ("presence_penalty", -2.01),
        ("frequency_penalty", 3.0),
        ("frequency_penalty", math.nan),
        ("repetition_penalty", 0.0),
        ("repetition_penalty", -1.0),
        ("repetition_penalty", math.inf),
        ("max_tokens", 0),
        ("min_tokens", -1),
        ("logprobs", -1),
        ("prompt_logprobs", -3),
        ("stop_token_ids", (1, -2)),
        ("stop", ("ok", "")),
    ],
)
def test_invalid_values_name_the_param(param: str, value: object) -> None:
    with pytest.raises(ParamError) as info:
        SamplingParams(**{param: value})
    assert info.value.param == param
    assert str(info.value).startswith(param)
    assert isinstance(info.value, ValueError)


def test_min_tokens_above_max_tokens() -> None:
    with pytest.raises(ParamError, match="^min_tokens"):
        SamplingParams(min_tokens=5, max_tokens=4)
    assert SamplingParams(min_tokens=4, max_tokens=4).min_tokens == 4
    assert SamplingParams(min_tokens=100, max_tokens=None).min_tokens == 100


@pytest.mark.parametrize(
    "kwargs",
    [
        {"temperature": 0.0},
        {"top_p": 1.0},
        {"top_k": 0},
        {"min_p": 1.0},
        {"presence_penalty": -2.0, "frequency_penalty": 2.0},
        {"repetition_penalty": 0.5},
        {"logprobs": 0, "prompt_logprobs": 0},
        {"max_tokens": None},
        {"seed": -5},
    ],
)
def test_boundary_values_accepted(kwargs: dict) -> None:
    SamplingParams(**kwargs)


def test_logit_bias_stored_as_sorted_pairs_and_validated() -> None:
    p = SamplingParams(logit_bias={"7": -100, 3: 2.5})
    assert p.logit_bias == ((3, 2.5), (7, -100.0)) and hash(p)
    assert SamplingParams().logit_bias == ()
    with pytest.raises(ParamError, match="logit_bias biases must be in \\[-100, 100\\], got 101"):
        SamplingParams(logit_bias={1: 101})
    with pytest.raises(ParamError, match="logit_bias token ids must be >= 0, got -1"):
        SamplingParams(logit_bias={-1: 1})
    with pytest.raises(ParamError, match="logit_bias must map token ids to numbers"):
        SamplingParams(logit_bias={"a": 1})


def test_structured_outputs_takes_exactly_one_constraint() -> None:
    from thinkstream.sampling_params import StructuredOutputsParams

    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    so = StructuredOutputsParams(json=schema)
    # the schema's key order is kept: properties are generated in that order
    assert so.json == '{"type": "object", "properties": {"a": {"type": "integer"}}}'
    assert so.json_schema == schema and hash(SamplingParams(structured_outputs=so))
    assert StructuredOutputsParams(choice=["a", "b"]).choice == ("a", "b")
    with pytest.raises(ParamError, match="exactly one of .* got \\['json', 'regex'\\]"):
        StructuredOutputsParams(json=schema, regex="a+")
    with pytest.raises(ParamError, match="got none"):
        StructuredOutputsParams()
    with pytest.raises(ParamError, match="structured_outputs must be a StructuredOutputsParams"):
        SamplingParams(structured_outputs={"json": schema})  # type: ignore[arg-type]


def test_stop_entries_and_seed_are_checked_on_construction() -> None:
    # a non-string stop or a non-integer stop id used to pass and crash the engine's step
    with pytest.raises(ParamError, match="stop must be strings"):
        SamplingParams(stop=["a", None])  # type: ignore[list-item]
    with pytest.raises(ParamError, match="stop must be strings"):
        SamplingParams(stop=[5])  # type: ignore[list-item]
    with pytest.raises(ParamError, match="stop_token_ids must be integers"):
        SamplingParams(stop_token_ids=["2"])  # type: ignore[list-item]
    with pytest.raises(ParamError, match="stop_token_ids must be integers"):
        SamplingParams(stop_token_ids=[1.5])  # type: ignore[list-item]
    # a torch.Generator takes int64 seeds; sequence i of n is seeded with seed + i
    assert SamplingParams(seed=-(2**63)).seed == -(2**63)
    assert SamplingParams(seed=2**63 - 3, n=3).seed == 2**63 - 3
    with pytest.raises(ParamError, match="seed must be in") as err:
        SamplingParams(seed=2**63 - 2, n=3)
    assert err.value.param == "seed"
    with pytest.raises(ParamError, match="seed must be in"):
        SamplingParams(seed=2**70)


@pytest.mark.parametrize(
    ("field", "value"),
    [("logprobs", 1.5), ("prompt_logprobs", 0.5), ("seed", 1.5), ("seed", "7"), ("n", 2.0),
     ("max_tokens", 2.5), ("min_tokens", 1.5), ("top_k", 2.5), ("temperature", "0.5"),
     ("top_p", None), ("repetition_penalty", True)],
)
def test_wrong_number_types_are_param_errors(field: str, value: object) -> None:
    """A float where an integer belongs (or a string anywhere) is refused when the params
    are made: ``logprobs=1.5`` used to pass and fail torch's ``topk`` inside ``step()``,
    taking every other request of that step with it."""
    with pytest.raises(ParamError) as err:
        SamplingParams(**{field: value})
    assert err.value.param == field


def test_integral_numbers_of_other_types_are_taken() -> None:
    np = pytest.importorskip("numpy")
    p = SamplingParams(n=np.int64(2), logprobs=np.int32(3), temperature=np.float32(0.5),
                       top_p=1)
    assert (p.n, p.logprobs, p.temperature, p.top_p) == (2, 3, 0.5, 1.0)
    assert type(p.n) is int and type(p.top_p) is float


@pytest.mark.parametrize("field", ["n", "max_tokens", "min_tokens", "top_k", "seed", "logprobs"])
def test_a_bool_is_not_an_integer(field: str) -> None:
    with pytest.raises(ParamError, match=f"^{field} must be an integer, not a bool") as err:
        SamplingParams(**{field: True})
    assert err.value.param == field
    with pytest.raises(ParamError, match="^stop_token_ids must be integers, not bools"):
        SamplingParams(stop_token_ids=[2, False])
