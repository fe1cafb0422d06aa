"""Request bodies of the OpenAI-compatible API, as pydantic models (they also feed the
OpenAPI spec). Types are strict: a string where a number belongs is a 400, not a guess.

Only the shape is checked here; ranges that ``SamplingParams`` already validates (top_p,
min_p, penalties...) are left to it so each rule lives in one place. Caps that depend on
the server's configuration (n, logprobs, stop strings) are checked in ``openai_routes``.
Unknown fields are ignored, as OpenAI and vLLM do.
"""

from __future__ import annotations

import re
import types
import typing
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    model_validator,
)

SEED_MAX = 2**63 - 1


def _valid_unicode(value: str) -> str:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("contains a lone surrogate (not valid Unicode)") from None
    return value


Text = Annotated[str, AfterValidator(_valid_unicode)]
TokenIds = list[int]


def _admits_none(annotation: Any) -> bool:
    if annotation is None or annotation is type(None):
        return True
    if typing.get_origin(annotation) is Annotated:
        return _admits_none(typing.get_args(annotation)[0])
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return any(_admits_none(a) for a in typing.get_args(annotation))
    return annotation is Any


class StrictBody(BaseModel):
    """Strict types; an explicit ``null`` for a field that has a default but no null value
    (``"n": null``, ``"stream": null``) means the default, as OpenAI reads it."""

    model_config = ConfigDict(strict=True, extra="ignore")
    _null_defaults: ClassVar[frozenset[str]] = frozenset()

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        cls._null_defaults = frozenset(
            name for name, f in cls.model_fields.items()
            if not f.is_required() and not _admits_none(f.annotation))

    @model_validator(mode="before")
    @classmethod
    def _null_means_default(cls, data: Any) -> Any:
        if isinstance(data, dict) and any(data.get(k, 0) is None for k in cls._null_defaults):
            return {k: v for k, v in data.items() if not (v is None and k in cls._null_defaults)}
        return data


class StreamOptions(StrictBody):
    include_usage: bool = False
    continuous_usage_stats: bool = False  # vLLM's: usage on every chunk (with include_usage)


def _needs_stream(value: StreamOptions | None, info: ValidationInfo) -> StreamOptions | None:
    """``stream_options`` without ``stream: true`` is a 400, as OpenAI and vLLM answer."""
    if value is not None and not info.data.get("stream", False):
        raise ValueError("only allowed when stream is true")
    return value


# declared after ``stream``, which the check reads
StreamOptionsField = Annotated[StreamOptions | None, AfterValidator(_needs_stream)]


class JsonSchemaFormat(StrictBody):
    """``response_format.json_schema``: OpenAI's ``{"name", "schema", "strict"}``."""

    model_config = ConfigDict(strict=True, extra="ignore", populate_by_name=True)
    name: Text | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None
    description: Text | None = None


class ResponseFormat(StrictBody):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


class StructuredOutputsBody(StrictBody):
    """vLLM's ``structured_outputs``: one of ``json`` (a schema, or its JSON text),
    ``json_object``, ``regex``, ``choice``, ``grammar`` (its other options are ignored)."""

    model_config = ConfigDict(strict=True, extra="ignore", populate_by_name=True)
    json_: dict[str, Any] | Text | None = Field(None, alias="json")
    json_object: bool | None = None
    regex: Text | None = None
    choice: list[Text] | None = None
    grammar: Text | None = None


class SamplingRequest(StrictBody):
    """Fields shared by completions and chat completions (with vLLM's extras). The output
    constraints (``response_format``, ``structured_outputs``, the older ``guided_*``) are
    read by ``server.constraints``."""

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
    logit_bias: dict[str, float] | None = None
    response_format: ResponseFormat | None = None
    structured_outputs: StructuredOutputsBody | None = None
    guided_json: dict[str, Any] | Text | None = None
    guided_regex: Text | None = None
    guided_choice: list[Text] | None = None
    guided_grammar: Text | None = None
    stream: bool = False
    stream_options: StreamOptionsField = None
    user: Text | None = None
    request_id: Text | None = None
    cache_salt: Text | None = None  # vLLM's: prefix-cache blocks are shared only within a salt
    # vLLM's: keep the prompt's last k tokens (-1: as many as the context holds)
    truncate_prompt_tokens: int | None = None
    truncation_side: Literal["left", "right"] | None = None  # vLLM's: "right" keeps the first k

    def prefix_salt(self) -> object:
        """The engine's prefix-cache salt for ``cache_salt`` (None: the shared namespace)."""
        return None if self.cache_salt is None else ("cache_salt", self.cache_salt)


class CompletionRequest(SamplingRequest):
    """``POST /v1/completions``: prompt as text, texts, token ids or lists of token ids."""

    prompt: Text | list[Text] | TokenIds | list[TokenIds]
    max_tokens: int | None = 16
    logprobs: int | None = None
    echo: bool = False
    suffix: Text | None = None
    best_of: int | None = None
    prompt_logprobs: int | None = None  # vLLM's (``server.vllm_fields``), on each choice
    return_tokens_as_token_ids: bool | None = None  # None: the server's default
    return_token_ids: bool | None = None  # vLLM's: token_ids and prompt_token_ids
    # thinkstream: N reasoning paths, then a summary / vote, as on chat completions (each
    # choice gets ``reasoning_content`` and ``paths``; streamed deltas tagged with ``path``)
    parallel: dict[str, Any] | None = None


TEXT_PART_TYPES = ("text", "input_text", "output_text", "refusal")


def _text_only(part: ContentPart) -> ContentPart:
    if part.type not in TEXT_PART_TYPES:
        raise ValueError(f"content parts of type {part.type!r} are not supported: this model "
                         "takes text only")
    if part.text is None and part.refusal is None:
        raise ValueError(f"a {part.type!r} part needs its text")
    return part


class ContentPart(StrictBody):
    """A part of a message's content; only text parts are accepted (a model served here
    takes no images, audio or files: those get a 400 saying so)."""

    type: Text
    text: Text | None = None
    refusal: Text | None = None


TextPart = Annotated[ContentPart, AfterValidator(_text_only)]


class FunctionCallIn(StrictBody):
    name: Text
    arguments: Text = "{}"  # JSON text, as OpenAI sends it


class ToolCallIn(StrictBody):
    id: Text | None = None
    type: Literal["function"] = "function"
    function: FunctionCallIn


def _some_parts(parts: list) -> list:
    """An empty content-part list is a 400, as OpenAI answers (``messages[i].content``)."""
    if not parts:
        raise ValueError("must not be an empty list of parts")
    return parts


def _tool_needs_call_id(value: str | None, info: ValidationInfo) -> str | None:
    """A ``tool`` message answers one call: without ``tool_call_id`` it is a 400, as
    OpenAI answers (``messages[i].tool_call_id``)."""
    if value is None and info.data.get("role") == "tool":
        raise ValueError("required for a tool message (the id of the call it answers)")
    return value


class ChatMessage(StrictBody):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: Text | Annotated[list[TextPart], AfterValidator(_some_parts)] | None = None
    name: Text | None = None
    tool_calls: list[ToolCallIn] | None = None  # assistant
    function_call: FunctionCallIn | None = None  # assistant, legacy (``legacy_functions``)
    # declared after ``role``, which the check reads; checked when omitted too
    tool_call_id: Annotated[Text | None, AfterValidator(_tool_needs_call_id)] = Field(
        default=None, validate_default=True)
    reasoning_content: Text | None = None  # assistant (a reasoning model's earlier turn)
    reasoning: Text | None = None

    @model_validator(mode="after")
    def _has_content(self) -> ChatMessage:
        if self.content is None and not (self.role == "assistant" and (
                self.tool_calls or self.function_call)):
            raise ValueError(f"content: required (role {self.role!r}; an assistant message "
                             "may carry tool_calls instead)")
        return self

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text if part.text is not None else part.refusal or ""
                       for part in self.content)


class FunctionDef(StrictBody):
    name: Annotated[str, Field(min_length=1, max_length=256)]
    description: Text | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ToolDef(StrictBody):
    type: Literal["function"]
    function: FunctionDef


class NamedFunction(StrictBody):
    name: Text


class ToolChoiceFunction(StrictBody):
    type: Literal["function"]
    function: NamedFunction


ToolChoice = Literal["none", "auto", "required"] | ToolChoiceFunction


class ChatCompletionRequest(SamplingRequest):
    """``POST /v1/chat/completions``: messages rendered with the model's chat template."""

    messages: list[ChatMessage]
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    logprobs: bool = False
    top_logprobs: int | None = None
    add_generation_prompt: bool = True
    continue_final_message: bool = False
    chat_template_kwargs: dict[str, Any] | None = None
    tools: list[ToolDef] | None = None
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool = True
    functions: list[FunctionDef] | None = None  # OpenAI's legacy tools (``legacy_functions``)
    function_call: Literal["none", "auto"] | NamedFunction | None = None  # legacy tool_choice
    echo: bool = False  # vLLM's: the last message's content before the answer (vllm_fields)
    include_reasoning: bool = True  # vLLM's: false leaves reasoning out of the answer
    # OpenAI's; as vLLM, given to the chat template (with enable_thinking: effort != "none")
    reasoning_effort: Literal["none", "minimal", "low", "medium", "high", "xhigh", "max"] \
        | None = None
    prompt_logprobs: int | None = None  # vLLM's, top-level in the response
    return_tokens_as_token_ids: bool | None = None  # None: the server's default
    return_token_ids: bool | None = None  # vLLM's: token_ids and prompt_token_ids
    # thinkstream: N reasoning paths, then a summary / vote (``parallel.config.ParallelConfig``:
    # paths, path_tokens, path_prompts, merge, layout, summary_prompt, temperature)
    parallel: dict[str, Any] | None = None


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
    reasoning_content: str | None = None  # with ``parallel``: the paths, each headed
    paths: list[str] | None = None  # with ``parallel``: each path's text
    prompt_logprobs: list[dict[str, Any] | None] | None = None  # vLLM's (prompt_logprobs: k)


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


class ResponseFunctionCall(BaseModel):
    name: str
    arguments: str


class ResponseToolCall(BaseModel):
    id: str
    type: Literal["function"] = "function"
    function: ResponseFunctionCall


class ChatResponseMessage(BaseModel):
    role: str = "assistant"  # the last message's without add_generation_prompt (as vLLM)
    content: str | None = None
    reasoning_content: str | None = None
    tool_calls: list[ResponseToolCall] | None = None


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
    prompt_logprobs: list[dict[str, Any] | None] | None = None  # vLLM's (prompt_logprobs: k)


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
          "list[list[int]]": "a list of lists of token ids", "list[TextPart]": "a list of text parts",
          "list[ContentPart]": "a list of text parts"}


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
