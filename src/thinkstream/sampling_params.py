"""Per-request sampling parameters, shaped like vLLM's ``SamplingParams``.

A frozen dataclass validated on construction: every bad value raises ``ParamError`` (a
``ValueError``) whose message starts with the parameter's name, and whose ``.param`` names
it, so the server can answer 400 pointing at the field.
"""

from __future__ import annotations

import json
import math
import numbers
import operator
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

_SEED_MIN, _SEED_MAX = -(1 << 63), (1 << 63) - 1  # what a torch.Generator takes
_INT_FIELDS = ("n", "top_k", "seed", "max_tokens", "min_tokens", "logprobs", "prompt_logprobs")
_OPTIONAL_FIELDS = ("seed", "max_tokens", "logprobs", "prompt_logprobs")  # None: unset
_FLOAT_FIELDS = ("temperature", "top_p", "min_p", "presence_penalty", "frequency_penalty",
                 "repetition_penalty")


class ParamError(ValueError):
    """A sampling parameter is out of range; ``param`` is its name."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(f"{param} {message}")
        self.param = param


def _as_tuple(value: object, kind: type) -> tuple:
    """None -> (), a single ``kind`` -> (value,), any iterable -> tuple(value)."""
    if value is None:
        return ()
    if isinstance(value, kind):
        return (value,)
    if isinstance(value, Iterable) and not isinstance(value, str | bytes):
        return tuple(value)
    raise TypeError(f"expected {kind.__name__} or a sequence of them, got {type(value).__name__}")


def _as_ids(value: object) -> tuple[int, ...]:
    """Token ids as a tuple of ints (numpy / torch integers too; never a float cut)."""
    ids = _as_tuple(value, int)
    if any(isinstance(t, bool) for t in ids):
        raise ParamError("stop_token_ids", f"must be integers, not bools: {list(ids)!r}")
    try:
        return tuple(operator.index(t) for t in ids)
    except TypeError:
        raise ParamError("stop_token_ids", f"must be integers, got {list(ids)!r}") from None


def _as_bias(value: object) -> tuple[tuple[int, float], ...]:
    """``{token_id: bias}`` (keys may be strings of ids, as in JSON) -> sorted pairs."""
    if value is None:
        return ()
    items = value.items() if isinstance(value, Mapping) else value
    try:
        pairs = {int(k): float(v) for k, v in items}  # type: ignore[union-attr]
    except (TypeError, ValueError):
        raise ParamError("logit_bias", "must map token ids to numbers") from None
    return tuple(sorted(pairs.items()))


# The grammar of a choice list grows with it and llguidance compiles it in superlinear time
# (SmolLM2's tokenizer on Zen 4: 16k strings 0.6 s, 64k 6.8 s, 150k about a minute, then
# its 65,535-symbol limit): a request may not spend a core on that.
MAX_CHOICES = 16384


@dataclass(frozen=True)
class StructuredOutputsParams:
    """A constraint on the output's text, shaped like vLLM's: exactly one of ``json`` (a
    JSON schema, a dict or its JSON text; stored as JSON text so the params stay hashable,
    keys in their order: properties are generated in the schema's order), ``json_object``
    (any JSON object), ``regex`` (the whole output matches it), ``choice`` (one of these
    strings) or ``grammar`` (Lark, or GBNF / EBNF ``root ::= ...``).

    The server fills it (``response_format``, ``structured_outputs`` / ``guided_*``, a
    required or named tool call's schema, the Responses API's ``text.format``); the engine
    compiles it when the request is made (``thinkstream.structured``: an invalid one is a
    ``ParamError``) and the sampler's token mask enforces it.
    """

    json: str | None = None
    json_object: bool = False
    regex: str | None = None
    choice: tuple[str, ...] | None = None
    grammar: str | None = None

    def __post_init__(self) -> None:
        if self.json is not None and not isinstance(self.json, str):
            try:
                object.__setattr__(self, "json", json.dumps(self.json))
            except (TypeError, ValueError):
                raise ParamError("structured_outputs", "json must be a JSON schema (a dict "
                                 "or its JSON text)") from None
        if self.choice is not None:
            object.__setattr__(self, "choice", tuple(self.choice))
        chosen = [n for n in ("json", "regex", "choice", "grammar") if getattr(self, n) is not None]
        chosen += ["json_object"] if self.json_object else []
        if len(chosen) != 1:
            raise ParamError("structured_outputs", "must set exactly one of json, json_object, "
                             f"regex, choice, grammar; got {chosen or 'none'}")
        if self.choice is not None and not self.choice:
            raise ParamError("structured_outputs", "choice must not be empty")
        if self.choice is not None and len(self.choice) > MAX_CHOICES:
            raise ParamError("structured_outputs", f"choice: at most {MAX_CHOICES} strings, "
                             f"got {len(self.choice)}")

    @property
    def json_schema(self) -> dict | None:
        return None if self.json is None else json.loads(self.json)


@dataclass(frozen=True)
class SamplingParams:
    """How to pick tokens for one request and when to stop.

    ``top_k`` of 0 or -1 and ``top_p`` of 1.0 and ``min_p`` of 0.0 switch those filters off.
    ``max_tokens=None`` means "until the context is full". ``logprobs=k`` returns the chosen
    token's log-probability plus the ``k`` most likely; ``prompt_logprobs`` likewise for the
    prompt. ``stop`` and ``stop_token_ids`` accept lists (or a single string) and are stored
    as tuples. ``logit_bias`` ``{token_id: bias}`` (bias in [-100, 100], added to the
    logits before sampling; -100 bans a token) is stored as sorted ``(id, bias)`` pairs.
    ``structured_outputs`` constrains the text (``StructuredOutputsParams``).
    """

    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    min_p: float = 0.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    max_tokens: int | None = 16
    min_tokens: int = 0
    ignore_eos: bool = False
    logprobs: int | None = None
    prompt_logprobs: int | None = None
    skip_special_tokens: bool = True
    include_stop_str_in_output: bool = False
    logit_bias: tuple[tuple[int, float], ...] = ()
    structured_outputs: StructuredOutputsParams | None = None

    def __post_init__(self) -> None:
        self._coerce_numbers()
        object.__setattr__(self, "stop", _as_tuple(self.stop, str))
        object.__setattr__(self, "logit_bias", _as_bias(self.logit_bias))
        object.__setattr__(self, "stop_token_ids", _as_ids(self.stop_token_ids))
        self._validate()

    def _coerce_numbers(self) -> None:
        """Integer fields as ``int`` (numpy / torch integers too) and real fields as
        ``float``; anything else (``logprobs=1.5``, ``seed="1"``) is a ``ParamError`` here,
        not a ``TypeError`` from torch in the middle of an engine step shared with other
        requests."""
        for name in _INT_FIELDS:
            value = getattr(self, name)
            if value is None and name in _OPTIONAL_FIELDS:
                continue
            if isinstance(value, bool):  # an int to Python, never meant as one here
                raise ParamError(name, f"must be an integer, not a bool ({value!r})")
            try:
                object.__setattr__(self, name, operator.index(value))
            except TypeError:
                raise ParamError(name, f"must be an integer, got {value!r}") from None
        for name in _FLOAT_FIELDS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Real):
                raise ParamError(name, f"must be a number, got {value!r}")
            object.__setattr__(self, name, float(value))

    def _validate(self) -> None:
        if self.n < 1:
            raise ParamError("n", f"must be >= 1, got {self.n}")
        if not math.isfinite(self.temperature) or self.temperature < 0:
            raise ParamError("temperature", f"must be finite and >= 0, got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ParamError("top_p", f"must be in (0, 1], got {self.top_p}")
        if self.top_k < -1:
            raise ParamError("top_k", f"must be -1 (off), 0 (off) or >= 1, got {self.top_k}")
        if not 0.0 <= self.min_p <= 1.0:
            raise ParamError("min_p", f"must be in [0, 1], got {self.min_p}")
        for name in ("presence_penalty", "frequency_penalty"):
            value = getattr(self, name)
            if not -2.0 <= value <= 2.0:
                raise ParamError(name, f"must be in [-2, 2], got {value}")
        if self.seed is not None and not _SEED_MIN <= self.seed <= _SEED_MAX - (self.n - 1):
            raise ParamError("seed", f"must be in [{_SEED_MIN}, {_SEED_MAX - (self.n - 1)}] "
                             f"(sequence i is seeded with seed + i), got {self.seed}")
        if not (math.isfinite(self.repetition_penalty) and self.repetition_penalty > 0):
            raise ParamError(
                "repetition_penalty", f"must be finite and > 0, got {self.repetition_penalty}"
            )
        if self.max_tokens is not None and self.max_tokens < 1:
            raise ParamError("max_tokens", f"must be >= 1, got {self.max_tokens}")
        if self.min_tokens < 0:
            raise ParamError("min_tokens", f"must be >= 0, got {self.min_tokens}")
        if self.max_tokens is not None and self.min_tokens > self.max_tokens:
            raise ParamError(
                "min_tokens",
                f"must be <= max_tokens ({self.max_tokens}), got {self.min_tokens}",
            )
        for name in ("logprobs", "prompt_logprobs"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ParamError(name, f"must be >= 0, got {value}")
        if any(not isinstance(s, str) for s in self.stop):
            raise ParamError("stop", f"must be strings, got {list(self.stop)!r}")
        if any(s == "" for s in self.stop):
            raise ParamError("stop", "must not contain empty strings")
        if any(t < 0 for t in self.stop_token_ids):
            raise ParamError("stop_token_ids", f"must be >= 0, got {list(self.stop_token_ids)}")
        for token_id, bias in self.logit_bias:
            if token_id < 0:
                raise ParamError("logit_bias", f"token ids must be >= 0, got {token_id}")
            if not -100.0 <= bias <= 100.0:
                raise ParamError("logit_bias", f"biases must be in [-100, 100], got {bias} "
                                 f"for token {token_id}")
        if self.structured_outputs is not None and not isinstance(
                self.structured_outputs, StructuredOutputsParams):
            raise ParamError("structured_outputs", "must be a StructuredOutputsParams")

    @property
    def greedy(self) -> bool:
        """True when the choice is the argmax: temperature 0 or top-k of 1."""
        return self.temperature == 0.0 or self.top_k == 1
