"""The OpenAI-compatible endpoints: ``/v1/models`` (and ``/v1/models/{id}``),
``/v1/completions``, ``/v1/chat/completions`` and ``/v1/requests/{id}/cancel``.

A request goes: ``Content-Type: application/json`` (else 415) -> raw body -> JSON object
-> pydantic model (``protocol``) -> caps from ``ServerConfig`` -> ``SamplingParams`` ->
token ids with the context checked -> admission -> engine. Every refusal happens before
admission, so a bad request never takes a KV block. Output shapes live in ``formatting``.
"""

from __future__ import annotations

import dataclasses
import json
import re
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ValidationError
from starlette.concurrency import run_in_threadpool

from thinkstream.engine.llm_engine import RequestError
from thinkstream.engine.request import RequestOutput
from thinkstream.parallel.config import parallel_config
from thinkstream.parallel.paths import check_paths_room
from thinkstream.parsers.output import ParserSpec
from thinkstream.sampling_params import ParamError, SamplingParams, StructuredOutputsParams
from thinkstream.server import formatting as fmt
from thinkstream.server import protocol as P
from thinkstream.server.auth import request_owner
from thinkstream.server.chat_tools import call_or_answer, opens_reasoning, plan_tools
from thinkstream.server.constraints import body_constraint, checked_tools
from thinkstream.server.errors import APIError, field_names, to_api_error
from thinkstream.server.legacy_functions import (
    as_tools,
    legacy_chunks,
    legacy_response,
    renamed_fields,
    uses_functions,
)
from thinkstream.server.limits import clean_request_id
from thinkstream.server.prompts import render_chat, split_prompts
from thinkstream.server.serving import ClientGone, Job, ServerState, until_disconnect
from thinkstream.server.vllm_fields import (
    chat_echo,
    chunks_without_reasoning,
    prompt_logprobs_k,
    refuse_unhonoured,
    refused_for,
    response_role,
    without_reasoning,
)

router = APIRouter()
M = TypeVar("M", bound=BaseModel)
_SEED_MOD = 1 << 62  # the engine seeds sequence i with seed + i: keep that in range
ERRORS = {code: {"model": P.ErrorResponse} for code in (400, 401, 404, 413, 415, 429, 500, 503)}


def body_doc(model: type[BaseModel]) -> dict:
    ref = {"$ref": f"#/components/schemas/{model.__name__}"}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": ref}}}}


def server_state(request: Request) -> ServerState:
    return request.app.state.server


# ------------------------------------------------------------------ parsing
def check_json_content_type(request: Request) -> None:
    """415 unless the body is declared ``application/json``: a browser sends a cross-site
    POST without a pre-flight only as ``text/plain``, form data or no type, so a web page
    cannot drive the server."""
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media != "application/json":
        raise APIError(415, "Content-Type must be application/json", None,
                       "unsupported_media_type")


OFF_LOOP_BYTES = 64 * 1024  # bodies past this are decoded and validated in a worker thread


async def parse_body(request: Request, model: type[M]) -> M:
    """The body as ``model``; a 400 for a vLLM field that asks for something the server
    cannot do (``vllm_fields.refused_for``). A body over ``OFF_LOOP_BYTES`` is decoded in a
    worker thread: a few MB of messages took ~0.6 s to validate, and on the event loop every
    other client's stream (and ``/health``) waited for it."""
    check_json_content_type(request)
    raw = await request.body()
    if len(raw) > OFF_LOOP_BYTES:
        return await run_in_threadpool(decode_body, raw, model)
    return decode_body(raw, model)


def decode_body(raw: bytes, model: type[M]) -> M:
    """``raw`` as ``model`` (``parse_body``'s work after the read); ``APIError`` 400s."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise APIError(400, "the request body is not valid UTF-8", None, "invalid_body") from None
    try:
        obj = json.loads(text)
    except RecursionError:  # valid JSON, maybe: deeper than the parser goes
        raise APIError(400, "the request body is nested too deeply", None, "invalid_body") from None
    except ValueError:
        raise APIError(400, "the request body is not valid JSON", None, "invalid_json") from None
    if not isinstance(obj, dict):
        raise APIError(400, "the request body must be a JSON object", None, "invalid_body")
    refuse_unhonoured(obj, refused_for(model))
    try:
        return model.model_validate(obj)
    except ValidationError as exc:
        param, message = P.describe_error(exc)
        raise APIError(400, message, param, "invalid_type") from None
    except RecursionError:
        raise APIError(400, "the request body is nested too deeply", None, "invalid_body") from None


def check_model(state: ServerState, model: str | None) -> None:
    """An unknown model is a 404 ``model_not_found``, as OpenAI answers it."""
    if model is not None and model != state.config.served_model_name:
        raise APIError(404, f"The model {model!r} does not exist; this server serves "
                       f"{state.config.served_model_name!r}", "model", "model_not_found",
                       type="invalid_request_error")


def _check_caps(state: ServerState, body: P.SamplingRequest, logprobs: int | None, lp_name: str) -> None:
    cfg = state.config
    if body.n > cfg.max_n:
        raise APIError(400, f"n: must be <= {cfg.max_n}, got {body.n}", "n", "invalid_value")
    if logprobs is not None and not 0 <= logprobs <= cfg.max_logprobs:
        raise APIError(400, f"{lp_name}: must be in [0, {cfg.max_logprobs}], got {logprobs}",
                       lp_name, "invalid_value")
    stops = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    if len(stops) > cfg.max_stop or len(body.stop_token_ids or []) > cfg.max_stop:
        raise APIError(400, f"stop: at most {cfg.max_stop} stop sequences", "stop",
                       "invalid_value")
    if any(len(s) > cfg.max_stop_len for s in stops):
        raise APIError(400, f"stop: each stop string must be at most {cfg.max_stop_len} "
                       "characters", "stop", "invalid_value")


def _logit_bias(state: ServerState, bias: dict[str, float] | None) -> dict[int, float]:
    """``logit_bias`` keys are token ids written as strings (JSON object keys): ASCII
    digits only (``str.isdigit`` also holds for "²", which ``int`` refuses)."""
    vocab = state.llm.tokenizer.vocab_size
    out = {}
    for key, value in (bias or {}).items():
        if re.fullmatch(r"\s*[0-9]+\s*", key, re.ASCII) is None or int(key) >= vocab:
            raise APIError(400, f"logit_bias: {key!r} is not a token id of this model "
                           f"(0 to {vocab - 1})", "logit_bias", "invalid_value")
        out[int(key)] = value
    return out


def _params(body: P.SamplingRequest, max_tokens: int | None, logprobs: int | None,
            prompt_logprobs: int | None = None, logit_bias: dict[int, float] | None = None,
            structured_outputs: StructuredOutputsParams | None = None) -> SamplingParams:
    def pick(value, default):
        return default if value is None else value

    return SamplingParams(
        n=body.n, temperature=pick(body.temperature, 1.0), top_p=pick(body.top_p, 1.0),
        top_k=pick(body.top_k, -1), min_p=pick(body.min_p, 0.0),
        presence_penalty=pick(body.presence_penalty, 0.0),
        frequency_penalty=pick(body.frequency_penalty, 0.0),
        repetition_penalty=pick(body.repetition_penalty, 1.0),
        seed=None if body.seed is None else body.seed % _SEED_MOD,
        stop=body.stop, stop_token_ids=tuple(body.stop_token_ids or ()), max_tokens=max_tokens,
        min_tokens=body.min_tokens, ignore_eos=body.ignore_eos, logprobs=logprobs,
        prompt_logprobs=prompt_logprobs, skip_special_tokens=body.skip_special_tokens,
        include_stop_str_in_output=body.include_stop_str_in_output, logit_bias=logit_bias,
        structured_outputs=structured_outputs,
    )


def _check_context(state: ServerState, ids: list[int], params: SamplingParams,
                   prompt_param: str) -> None:
    """400 ``context_length_exceeded`` for a prompt, or prompt + ``max_tokens``, over the
    context. The message holds OpenAI's and vLLM's sentence "This model's maximum context
    length is N tokens" and, for a prompt over it, "prompt is too long": clients match on
    the text (LiteLLM raises ``ContextWindowExceededError``, which its context-window
    fallbacks catch, for either; LangChain's ``ChatOpenAI`` raises ``ContextOverflowError``
    for the second)."""
    engine = state.llm.engine
    limit = engine.max_model_len
    context = f"This model's maximum context length is {limit} tokens"
    if len(ids) >= limit:
        raise APIError(400, f"{prompt_param}: the prompt is too long: {len(ids)} tokens leave no "
                       f"room to generate. "
                       f"{context}.", prompt_param, "context_length_exceeded")
    if params.max_tokens is not None and len(ids) + params.max_tokens > limit:
        raise APIError(400, f"max_tokens is too large: {params.max_tokens}. {context} and the "
                       f"prompt has {len(ids)} tokens ({params.max_tokens} > {limit} - "
                       f"{len(ids)})", "max_tokens", "context_length_exceeded")
    try:
        engine.check_length(len(ids), params)
    except RequestError as exc:
        raise APIError(400, f"{exc}. {context}.", exc.param, "context_length_exceeded") from None


def public_id(request: Request, body: P.SamplingRequest, prefix: str) -> str:
    """The client's request id, else ``prefix`` and a random hex (OpenAI's shapes:
    ``chatcmpl-...``, ``resp_...``)."""
    raw = body.request_id or request.headers.get("x-request-id")
    if raw:
        return clean_request_id(raw, server_state(request).config.max_request_id_len)
    return f"{prefix}{uuid.uuid4().hex}"


# ------------------------------------------------------------------ running
async def run_job(request: Request, job: Job, stream: Callable[[], AsyncIterator[str]] | None,
               collect: Callable[[], Any], admitted: Callable[[], None] | None = None
               ) -> Response:
    """Admit ``job`` (then call ``admitted``); stream it as SSE or collect it (aborting on
    disconnect)."""
    job.admit()
    if admitted is not None:
        admitted()
    headers = {"X-Request-Id": job.public_id}
    if stream is not None:
        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={**headers, "Cache-Control": "no-cache"})
    try:
        finals = await until_disconnect(request, _collect(job))
    except ClientGone:
        return Response(status_code=499)
    except Exception as exc:  # noqa: BLE001 - engine failure: an error body, never a hang
        err = to_api_error(exc)
        return JSONResponse(err.body(), err.status, headers=headers)
    return JSONResponse(collect(finals), headers=headers)


async def _collect(job: Job) -> list[RequestOutput]:
    finals: list[RequestOutput | None] = [None] * len(job.prompts)
    async for i, out in job.outputs():
        finals[i] = out
    return finals  # type: ignore[return-value]


async def _sse(job: Job, chunks: AsyncIterator[dict]) -> AsyncIterator[str]:
    try:
        async for chunk in chunks:
            yield f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n"
    except Exception as exc:  # noqa: BLE001 - reported in-band, then the stream ends
        err = to_api_error(exc)
        yield f"data: {json.dumps(err.body())}\n\n"
    yield "data: [DONE]\n\n"


def wrap_errors(fn):
    """Run a route; turn validation errors into 400s with the parameter named."""
    async def wrapper(request: Request) -> Response:
        try:
            return await fn(request)
        except (ParamError, RequestError) as exc:
            err = to_api_error(exc)
            return JSONResponse(err.body(), err.status)
        except APIError as exc:
            return JSONResponse(exc.body(), exc.status, headers=exc.headers)
    wrapper.__name__, wrapper.__doc__ = fn.__name__, fn.__doc__
    return wrapper


# ------------------------------------------------------------------ routes
@router.get("/v1/models", response_model=P.ModelList, responses=ERRORS)
async def list_models(request: Request) -> dict:
    """The one model this server serves."""
    state = server_state(request)
    return {"object": "list", "data": [_model_card(state).model_dump()]}


@router.get("/v1/models/{model:path}", response_model=P.ModelCard, responses=ERRORS)
async def retrieve_model(request: Request, model: str) -> Response:
    """The served model's card (the ``openai`` SDK's ``models.retrieve``); any other id is a
    404 ``model_not_found``, as OpenAI answers. ``:path``: a served name may hold ``/``;
    ``/v1/models/`` (empty) is the list, as the trailing-slash redirect gave it."""
    state = server_state(request)
    if not model:
        return JSONResponse(await list_models(request))
    try:
        check_model(state, model)
    except APIError as exc:
        return JSONResponse(exc.body(), exc.status)
    return JSONResponse(_model_card(state).model_dump())


def _model_card(state: ServerState) -> P.ModelCard:
    return P.ModelCard(id=state.config.served_model_name, created=int(state.started),
                       max_model_len=state.llm.engine.max_model_len)


@router.post("/v1/completions", openapi_extra=body_doc(P.CompletionRequest),
             responses={200: {"model": P.CompletionResponse}, **ERRORS})
@wrap_errors
async def completions(request: Request) -> Response:
    """OpenAI text completions (``stream`` sends server-sent events ending in ``[DONE]``;
    ``parallel``: reasoning paths, as on chat completions)."""
    state = server_state(request)
    body = await parse_body(request, P.CompletionRequest)
    check_model(state, body.model)
    # off the event loop: tokenizing megabytes or compiling a big constraint takes seconds
    params, prompts, encoded = await run_in_threadpool(_prepare_completion, state, body)
    score_only = body.max_tokens == 0
    parallel = parallel_config(params, body.parallel, state.config.max_n)
    if parallel is not None and score_only:
        raise APIError(400, "parallel: prompt scoring (max_tokens 0) generates nothing to "
                       "run paths for", "parallel", "invalid_value")
    for ids in encoded if parallel is not None else ():  # each prompt's paths, as on chat
        await run_in_threadpool(check_paths_room, state.llm.engine, len(ids), params, parallel)
    job = Job(state, public_id(request, body, "cmpl-"), encoded, params,
              request_owner(request.scope), salt=body.prefix_salt(), parallel=parallel)
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    view = fmt.CompletionView(job.public_id, state.config.served_model_name,
                              state.llm.tokenizer, prompts, encoded, body.echo,
                              body.logprobs, params.n, params.skip_special_tokens, score_only,
                              **output_options(state, body, include_usage))
    stream = (lambda: _sse(job, view.chunks(job.outputs(), include_usage))) if body.stream else None
    return await run_job(request, job, stream, view.response)


def _prepare_completion(state: ServerState, body: P.CompletionRequest,
                        ) -> tuple[SamplingParams, list, list[list[int]]]:
    """Params, prompts and their token ids of a completion request, checked (caps, the
    constraint compiled, the context); ``max_tokens: 0`` with ``echo`` scores the prompt."""
    if body.suffix is not None:
        raise APIError(400, "suffix: not supported", "suffix", "unsupported")
    if body.best_of is not None and body.best_of != body.n:
        raise APIError(400, "best_of: only best_of == n is supported", "best_of", "unsupported")
    _check_caps(state, body, body.logprobs, "logprobs")
    prompt_lp = body.logprobs if body.echo and body.logprobs is not None else None
    asked = prompt_logprobs_k(body, state.config.max_logprobs)
    if asked is not None:  # vLLM's prompt_logprobs: the engine computes the larger top k
        prompt_lp = max(asked, prompt_lp or 0)
    score_only = body.max_tokens == 0  # prompt scoring: the echo, no output
    if score_only and not body.echo:
        raise APIError(400, "max_tokens: 0 is only allowed with echo=true (prompt scoring)",
                       "max_tokens", "invalid_value")
    params = _params(body, 1 if score_only else body.max_tokens, body.logprobs, prompt_lp,
                     _logit_bias(state, body.logit_bias), body_constraint(state, body))
    prompts = split_prompts(body.prompt)
    if not prompts:
        raise APIError(400, "prompt: must not be empty", "prompt", "invalid_value")
    whole = [state.llm.engine.encode_prompt(p) for p in prompts]
    encoded = [truncated(state, body, ids) for ids in whole]
    # a cut prompt is echoed as the tokens the model read
    prompts = [p if len(cut) == len(ids) else cut
               for p, ids, cut in zip(prompts, whole, encoded, strict=True)]
    for ids in encoded:
        _check_context(state, ids, params, "prompt")
    return params, prompts, encoded


def output_options(state: ServerState, body: P.CompletionRequest | P.ChatCompletionRequest,
                   include_usage: bool) -> dict:
    """The views' keyword fields for vLLM's output options (``vllm_fields``)."""
    as_ids = body.return_tokens_as_token_ids
    so = body.stream_options
    return {"tokens_as_ids": state.config.return_tokens_as_token_ids if as_ids is None else as_ids,
            "prompt_logprobs": prompt_logprobs_k(body, state.config.max_logprobs),
            "continuous_usage": include_usage and so is not None and so.continuous_usage_stats,
            "return_token_ids": bool(body.return_token_ids)}


def truncated(state: ServerState, body: P.SamplingRequest, ids: list[int]) -> list[int]:
    """vLLM's ``truncate_prompt_tokens``: the prompt's last k token ids (-1: the last
    ``max_model_len``; ``truncation_side: "right"``: the first k); None leaves it whole."""
    k = body.truncate_prompt_tokens
    if k is None:
        return ids
    if k == 0 or k < -1:
        raise APIError(400, f"truncate_prompt_tokens: must be -1 or >= 1, got {k}",
                       "truncate_prompt_tokens", "invalid_value")
    k = state.llm.engine.max_model_len if k == -1 else k
    return ids[:k] if body.truncation_side == "right" else ids[-k:]


def chat_params(state, body) -> tuple[SamplingParams, int | None]:
    """Sampling params of a chat-shaped body (chat completions, sessions): logprobs as
    ``top_logprobs``, ``max_completion_tokens`` before ``max_tokens``, the server's caps."""
    if body.top_logprobs is not None and not body.logprobs:
        raise APIError(400, "top_logprobs: needs logprobs=true", "top_logprobs", "invalid_value")
    logprobs = (body.top_logprobs or 0) if body.logprobs else None
    _check_caps(state, body, body.top_logprobs, "top_logprobs")
    max_tokens = body.max_completion_tokens if body.max_completion_tokens is not None \
        else body.max_tokens
    return _params(body, max_tokens, logprobs, None, _logit_bias(state, body.logit_bias),
                   body_constraint(state, body)), logprobs


@dataclasses.dataclass
class PreparedChat:
    """A chat-shaped request ready for the engine: prompt ids, params, how to parse."""

    ids: list[int]
    params: SamplingParams
    logprobs: int | None
    parser: ParserSpec


def prepare_chat(state: ServerState, body: P.ChatCompletionRequest,
                 constraint: StructuredOutputsParams | None = None) -> PreparedChat:
    """Template, tools, params and context checks of a chat request (chat completions and
    the Responses API). A required or named tool call's schema (``chat_tools``) goes to
    ``structured_outputs`` before ``constraint`` (the Responses API's ``text.format``,
    checked by the caller) and the body's own (``response_format``, ``guided_*``...)."""
    if not body.messages:
        raise APIError(400, "messages: must not be empty", "messages", "invalid_value")
    params, logprobs = chat_params(state, body)
    tokenizer, cfg = state.llm.tokenizer, state.config
    asked = prompt_logprobs_k(body, cfg.max_logprobs)
    if asked is not None:  # vLLM's prompt_logprobs
        params = dataclasses.replace(params, prompt_logprobs=asked)
    plan = plan_tools(body, tokenizer.chat_template, cfg.tool_prompt)
    constraint = checked_tools(state, plan.constraint, plan.constrained_schemas()) or constraint
    answer = constraint or params.structured_outputs
    if plan.choice == "auto" and plan.parses_calls and answer is not None \
            and cfg.tool_call_parser == "hermes":  # a tool call stays possible
        tools = plan.template_tools or plan.prompt_tools or []
        constraint = checked_tools(state, call_or_answer(tools, answer, plan.parallel),
                                   plan.constrained_schemas()) or constraint
    if constraint is not None:
        params = dataclasses.replace(params, structured_outputs=constraint)
    ids = render_chat(tokenizer, body,
                          state.llm.engine.config.allow_special_tokens_in_content, plan)
    if not ids:
        raise APIError(400, "messages: the rendered prompt is empty", "messages", "invalid_value")
    try:
        ids = truncated(state, body, state.llm.engine.encode_prompt(ids))
    except RequestError as exc:
        raise APIError(400, str(exc).replace("prompt", "messages", 1), "messages") from None
    _check_context(state, ids, params, "messages")
    spec = plan.parser_spec(cfg.tool_call_parser, cfg.reasoning_parser,
                            opens_reasoning(tokenizer, ids))
    return PreparedChat(ids, params, logprobs, spec)


@router.post("/v1/chat/completions", openapi_extra=body_doc(P.ChatCompletionRequest),
             responses={200: {"model": P.ChatCompletionResponse}, **ERRORS})
@wrap_errors
async def chat_completions(request: Request) -> Response:
    """OpenAI chat completions through the model's chat template (``tools``: calls parsed
    into ``tool_calls``; a reasoning parser splits off ``reasoning_content``)."""
    state = server_state(request)
    body = await parse_body(request, P.ChatCompletionRequest)
    check_model(state, body.model)
    sent = {"max_tokens": "max_completion_tokens"} if body.max_completion_tokens is not None else {}
    legacy = uses_functions(body)  # OpenAI's deprecated functions / function_call
    if legacy:
        sent |= renamed_fields(body)
        body = as_tools(body)
    with field_names(sent):
        chat = await run_in_threadpool(prepare_chat, state, body)  # off the event loop
    parallel = parallel_config(chat.params, body.parallel, state.config.max_n)
    if parallel is not None:  # paths that could never all run: a 400 before any stream
        await run_in_threadpool(check_paths_room, state.llm.engine, len(chat.ids), chat.params,
                                parallel)
    job = Job(state, public_id(request, body, "chatcmpl-"), [chat.ids], chat.params,
              request_owner(request.scope), salt=body.prefix_salt(), parallel=parallel)
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    options = output_options(state, body, include_usage)
    # include_reasoning false: with a reasoning parser, logprobs and ids would spell it out
    hidden = not body.include_reasoning and state.config.reasoning_parser is not None
    view = fmt.ChatView(job.public_id, state.config.served_model_name, state.llm.tokenizer,
                        len(chat.ids), None if hidden else chat.logprobs, chat.params.n,
                        chat.parser, echo=chat_echo(body.messages, body.add_generation_prompt)
                        if body.echo else "", prompt_token_ids=chat.ids,
                        role=response_role(body.messages, body.add_generation_prompt),
                        **{**options, "return_token_ids": options["return_token_ids"]
                           and not hidden})

    def chunks() -> AsyncIterator[dict]:
        out = view.chunks(job.outputs(), include_usage)
        out = legacy_chunks(out) if legacy else out
        return out if body.include_reasoning else chunks_without_reasoning(out)

    def collect(finals: list[RequestOutput]) -> dict:
        out = view.response(finals)
        out = legacy_response(out) if legacy else out
        return out if body.include_reasoning else without_reasoning(out)

    stream = (lambda: _sse(job, chunks())) if body.stream else None
    return await run_job(request, job, stream, collect)


@router.post("/v1/requests/{request_id}/cancel", responses=ERRORS)
async def cancel_request(request_id: str, request: Request) -> Response:
    """Abort a running request by its id (the response ``id`` / ``X-Request-Id``); only
    the API key that made it may (another key's request is a 404)."""
    job = server_state(request).live.get((request_owner(request.scope), request_id))
    if job is None or not await job.cancel():
        return JSONResponse(P.ErrorResponse(error=P.ErrorDetail(
            message="no running request with this id", type="not_found_error",
            param="request_id", code="request_not_found")).model_dump(), 404)
    return JSONResponse({"id": request_id, "object": "request.cancelled", "cancelled": True})

