"""Request bodies of the OpenAI-compatible API, as pydantic models (they also feed the
OpenAPI spec). Types are strict: a string where a number belongs is a 400, not a guess.

Only the shape is checked here; ranges that ``SamplingParams`` already validates (top_p,
min_p, penalties...) are left to it so each rule lives in one place. Caps that depend on
the server's configuration (n, logprobs, stop strings) are checked in ``openai_routes``.
Unknown fields are ignored, as OpenAI and vLLM do.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

SEED_MAX = 2**63 - 1


def _valid_unicode(value: str) -> str:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("contains a lone surrogate (not valid Unicode)") from None
    return value


Text = Annotated[str, AfterValidator(_valid_unicode)]
TokenIds = list[int]


class StrictBody(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")


class StreamOptions(StrictBody):
    include_usage: bool = False


class SamplingRequest(StrictBody):
    """Fields shared by completions and chat completions (with vLLM's extras)."""

    model: Text | None = None
    n: int = 1
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    repetition_penalty: float | None = None
    seed: Annotated[int, Field(ge=-SEED_MAX - 1, le=SEED_MAX)] | None = None
    stop: Text | list[Text] | None = None
    stop_token_ids: list[int] | None = None
    min_tokens: int = 0
    ignore_eos: bool = False
    skip_special_tokens: bool = True
    include_stop_str_in_output: bool = False
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: Text | None = None
    request_id: Text | None = None


class CompletionRequest(SamplingRequest):
    """``POST /v1/completions``: prompt as text, texts, token ids or lists of token ids."""

    prompt: Text | list[Text] | TokenIds | list[TokenIds]
    max_tokens: int | None = 16
    logprobs: int | None = None
    echo: bool = False
    suffix: Text | None = None
    best_of: int | None = None


class TextPart(StrictBody):
    type: Literal["text"]
    text: Text


class ChatMessage(StrictBody):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Text | list[TextPart] | None = None
    name: Text | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class ChatCompletionRequest(SamplingRequest):
    """``POST /v1/chat/completions``: messages rendered with the model's chat template."""

    messages: list[ChatMessage]
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    logprobs: bool = False
    top_logprobs: int | None = None
    add_generation_prompt: bool = True


# ------------------------------------------------------------ responses (documented)
class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class CompletionLogprobs(BaseModel):
    tokens: list[str]
    token_logprobs: list[float | None]
    top_logprobs: list[dict[str, float] | None]
    text_offset: list[int]


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: str | None = None
    stop_reason: int | str | None = None


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None


class ChatTopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None = None


class ChatTokenLogprob(ChatTopLogprob):
    top_logprobs: list[ChatTopLogprob]


class ChatChoiceLogprobs(BaseModel):
    content: list[ChatTokenLogprob] | None = None


class ChatResponseMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None = None


class ChatChoice(BaseModel):
    index: int
    message: ChatResponseMessage
    logprobs: ChatChoiceLogprobs | None = None
    finish_reason: str | None = None
    stop_reason: int | str | None = None


class ChatCompletionResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "thinkstream"
    max_model_len: int | None = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail


def schema_components(*models: type[BaseModel]) -> dict[str, Any]:
    """JSON schemas of ``models`` (and the models they use) for ``components/schemas``."""
    out: dict[str, Any] = {}
    for m in models:
        schema = m.model_json_schema(ref_template="#/components/schemas/{model}")
        out.update(schema.pop("$defs", {}))
        out[m.__name__] = schema
    return out


# ------------------------------------------------------------ validation errors
_VALIDATOR = re.compile(r"function-[a-z-]+\[[^,\[\]]*, ([^\[\]]*(?:\[[^\[\]]*\])?)\]")
_WORDS = {"str": "a string", "int": "an integer", "float": "a number", "bool": "a boolean",
          "list[str]": "a list of strings", "list[int]": "a list of token ids",
          "list[list[int]]": "a list of lists of token ids", "list[TextPart]": "a list of text parts"}


def _tag(part: Any) -> str | None:
    """The type a union member's location part names (pydantic puts it in ``loc``), with
    validators stripped (``function-after[_valid_unicode(), str]`` -> ``str``); None for a
    field name or an index."""
    if not isinstance(part, str):
        return None
    while (m := _VALIDATOR.search(part)) is not None:
        part = part[:m.start()] + m.group(1) + part[m.end():]
    return part if part in _WORDS or "[" in part or part[:1].isupper() else None


def _path(loc: tuple) -> str:
    name = ""
    for part in loc:
        if isinstance(part, int):
            name += f"[{part}]"
        elif _tag(part) is None:
            name += f".{part}" if name else str(part)
    return name


def _problem(err: dict) -> str:
    if err["type"] in ("value_error", "assertion_error") and "error" in err.get("ctx", {}):
        return str(err["ctx"]["error"])
    msg = err["msg"]
    if msg == "Field required":
        return "is required"
    return "must be " + msg[len("Input should be "):] if msg.startswith("Input should be ") else msg


def describe_error(exc: ValidationError) -> tuple[str | None, str]:
    """``(param, message)`` for a client: the field and what is wrong with it, in words
    (no pydantic internals). A value that matches no member of a union is told the types
    it may have; one that has a member's shape but a bad value is told that value's fault."""
    errors = exc.errors(include_url=False, include_input=False)
    first = errors[0]
    cut = next((i for i, p in enumerate(first["loc"]) if _tag(p) is not None), None)
    if cut is None:  # not a union: the field and its problem
        param = _path(first["loc"]) or None
        return param, f"{param or 'body'}: {_problem(first)}"
    base = first["loc"][:cut]
    group = [e for e in errors if e["loc"][:cut] == base and len(e["loc"]) > cut
             and _tag(e["loc"][cut]) is not None]
    param = _path(base) or None
    bad_value = [e for e in group if not e["type"].endswith("_type")]
    if len(bad_value) == 1:
        return param, f"{_path(bad_value[0]['loc'])}: {_problem(bad_value[0])}"
    kinds = list(dict.fromkeys(_WORDS.get(t, t) for e in group
                               if (t := _tag(e["loc"][cut])) is not None))
    allowed = kinds[0] if len(kinds) == 1 else ", ".join(kinds[:-1]) + " or " + kinds[-1]
    return param, f"{param or 'body'}: must be {allowed}"
