"""``POST /v1/responses``: the Responses API subset that the ``openai`` SDK's
``responses.create`` and openai-agents use, on the chat pipeline.

A request becomes the chat request it stands for (``responses_protocol``), runs through the
same template, tools, parsers and admission as ``/v1/chat/completions``, and comes back as
output items (``responses_format``): a body, or with ``stream`` the typed events as SSE
(``event: <type>`` + ``data: {...}``; no ``[DONE]``, as OpenAI streams them).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from thinkstream.server import formatting as fmt
from thinkstream.server import responses_protocol as R
from thinkstream.server.auth import request_owner
from thinkstream.server.constraints import checked
from thinkstream.server.errors import APIError, field_names, to_api_error
from thinkstream.server.openai_routes import (
    ERRORS,
    PreparedChat,
    body_doc,
    check_model,
    parse_body,
    prepare_chat,
    public_id,
    run_job,
    server_state,
    wrap_errors,
)
from thinkstream.server.responses_format import ResponsesView
from thinkstream.server.serving import Job

router = APIRouter()


def _echo(body: R.ResponsesRequest) -> dict:
    """The request's settings a response repeats."""
    fmt = body.text.format.dump() if body.text and body.text.format else {"type": "text"}
    return {"instructions": body.instructions, "max_output_tokens": body.max_output_tokens,
            "temperature": body.temperature if body.temperature is not None else 1.0,
            "top_p": body.top_p if body.top_p is not None else 1.0,
            "tools": body.tools or [], "tool_choice": body.tool_choice or "auto",
            "parallel_tool_calls": body.parallel_tool_calls, "text": {"format": fmt},
            "metadata": body.metadata or {}, "user": body.user,
            "truncation": body.truncation or "disabled",
            "reasoning": {"effort": None, "summary": None}}


@router.post("/v1/responses", openapi_extra=body_doc(R.ResponsesRequest), responses=ERRORS)
@wrap_errors
async def responses(request: Request) -> Response:
    """OpenAI Responses API (stateless: no ``previous_response_id`` or ``store``)."""
    state = server_state(request)
    body = await parse_body(request, R.ResponsesRequest)
    check_model(state, body.model)
    R.check_stateless(body)
    names = {"max_tokens": "max_output_tokens", "messages": "input"} | {  # tools are flat
        f"tools[{i}].function.parameters": f"tools[{i}].parameters"
        for i in range(len(body.tools or []))}
    with field_names(names):
        chat = await run_in_threadpool(_prepare, state, body)  # off the event loop
    job = Job(state, public_id(request, body, "resp"), [chat.ids], chat.params,
              request_owner(request.scope), salt=body.prefix_salt())
    view = ResponsesView(job.public_id, state.config.served_model_name, _echo(body),
                         chat.parser, len(chat.ids), logprobs=_logprobs(state, body))
    stream = (lambda: _events(view.events(job.outputs()))) if body.stream else None
    return await run_job(request, job, stream, view.response)


def _logprobs(state, body: R.ResponsesRequest):
    """With ``include: ["message.output_text.logprobs"]``: chat's logprob items (token,
    logprob, bytes, top_logprobs), the shape of the Responses API's ``Logprob``."""
    if not body.wants_logprobs():
        return None
    chat = fmt.ChatView("", "", state.llm.tokenizer, logprobs=body.top_logprobs or 0)
    return lambda entries, ids: chat._logprobs(entries, ids)["content"]


def _prepare(state, body: R.ResponsesRequest) -> PreparedChat:
    """The chat request prepared; with ``truncation: "auto"`` the fewest leading items
    dropped that let it fit (a binary search over ``R.cut_points``; each try renders and
    checks the whole prompt), else the context's 400."""
    text_format = checked(state, R.text_constraint(body), "text.format.schema")
    cuts = R.cut_points(body) if body.truncation == "auto" else [0]
    lo, hi, fits = 0, len(cuts) - 1, None  # cuts[hi] is the last one worth trying
    while lo <= hi:
        mid = (lo + hi) // 2
        try:
            fits = prepare_chat(state, R.chat_request(body, cuts[mid]), text_format)
            hi = mid - 1
        except APIError as exc:
            if exc.code != "context_length_exceeded" or mid == len(cuts) - 1:
                raise
            lo = mid + 1
    return fits


async def _events(events: AsyncIterator[dict]) -> AsyncIterator[str]:
    seq = 0
    try:
        async for ev in events:
            seq = ev["sequence_number"] + 1
            yield f"event: {ev['type']}\ndata: {json.dumps(ev, ensure_ascii=False)}\n\n"
    except Exception as exc:  # noqa: BLE001 - reported in-band, then the stream ends
        err = to_api_error(exc)
        data = {"type": "error", "sequence_number": seq, "code": err.code,
                "message": err.message, "param": err.param}
        yield f"event: error\ndata: {json.dumps(data)}\n\n"
