"""``POST /v1/responses``: the Responses API subset that the ``openai`` SDK's
``responses.create`` and openai-agents use, on the chat pipeline.

A request becomes the chat request it stands for (``responses_protocol``), runs through the
same template, tools, parsers and admission as ``/v1/chat/completions``, and comes back as
output items (``responses_format``): a body, or with ``stream`` the typed events as SSE
(``event: <type>`` + ``data: {...}``; no ``[DONE]``, as OpenAI streams them).
``POST /v1/responses/{id}/cancel`` aborts a running one (``responses_ledger``). With the
response store on (``responses_store``) a response is kept (``store``, default true), a
request may continue one (``previous_response_id``) and run detached from its connection
(``background``: ``responses_background``); ``responses_store_routes`` reads them back.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool

from thinkstream.server import formatting as fmt
from thinkstream.server import responses_background as background
from thinkstream.server import responses_protocol as R
from thinkstream.server.auth import request_owner
from thinkstream.server.constraints import checked
from thinkstream.server.errors import APIError, error_response, field_names, to_api_error
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
from thinkstream.server.responses_store import Key, StoredResponse
from thinkstream.server.serving import Job, ServerState

router = APIRouter()
CANCEL_WAIT_S = 10.0  # a cancelled response's final body comes within a step or two


def _echo(body: R.ResponsesRequest, store: bool) -> dict:
    """The request's settings a response repeats."""
    fmt = body.text.format.dump() if body.text and body.text.format else {"type": "text"}
    return {"instructions": body.instructions, "max_output_tokens": body.max_output_tokens,
            "temperature": body.temperature if body.temperature is not None else 1.0,
            "top_p": body.top_p if body.top_p is not None else 1.0,
            "tools": body.tools or [], "tool_choice": body.tool_choice or "auto",
            "parallel_tool_calls": body.parallel_tool_calls, "text": {"format": fmt},
            "metadata": body.metadata or {}, "user": body.user,
            "truncation": body.truncation or "disabled",
            "reasoning": {"effort": None, "summary": None}, "store": store,
            "background": bool(body.background),
            "previous_response_id": body.previous_response_id}


@router.post("/v1/responses", openapi_extra=body_doc(R.ResponsesRequest), responses=ERRORS)
@wrap_errors
async def responses(request: Request) -> Response:
    """OpenAI Responses API (``store``, ``previous_response_id`` and ``background`` with
    the response store on)."""
    state = server_state(request)
    body = await parse_body(request, R.ResponsesRequest)
    check_model(state, body.model)
    R.check_state(body, state.store.enabled)
    owner, keep = request_owner(request.scope), state.store.enabled and body.store is not False
    if state.store.enabled:
        body = R.resolve_references(body, lambda item_id: state.store.find_item(owner, item_id))
    items = R.input_items(body) if state.store.enabled else []
    context = previous_conversation(state, owner, body.previous_response_id)
    if body.previous_response_id is not None:
        body = R.with_context(body, context, items)
    names = {"max_tokens": "max_output_tokens", "messages": "input"} | {  # tools are flat
        f"tools[{i}].function.parameters": f"tools[{i}].parameters"
        for i in range(len(body.tools or []))}
    with field_names(names):
        chat = await run_in_threadpool(_prepare, state, body)  # off the event loop
    # resp_<hex> as OpenAI's: LangChain's use_previous_response_id chains only ids so shaped
    job = Job(state, public_id(request, body, "resp_"), [chat.ids], chat.params, owner,
              salt=body.prefix_salt())
    view = ResponsesView(job.public_id, state.config.served_model_name, _echo(body, keep),
                         chat.parser, len(chat.ids), logprobs=_logprobs(state, body))
    key = (job.owner, job.public_id)
    entry = StoredResponse(view.body("queued" if body.background else "in_progress", [], None),
                           items, context, [] if body.background and body.stream else None)
    if body.background:
        job.admit()
        state.store.put(key, entry)
        background.start(state, job, view, entry)
        if body.stream:
            return StreamingResponse(background.tail(entry), media_type="text/event-stream",
                                     headers={"X-Request-Id": job.public_id,
                                              "Cache-Control": "no-cache"})
        return JSONResponse(entry.body, headers={"X-Request-Id": job.public_id})
    return await _foreground(request, state, body, job, view,
                             (key, entry) if keep else None)


def previous_conversation(state: ServerState, owner: str, response_id: str | None) -> list[dict]:
    """The items a ``previous_response_id`` continues ([] without one); a 404 for an id
    this owner has no stored response of, a 400 while that response still runs."""
    if response_id is None:
        return []
    prev = state.store.get((owner, response_id))
    if prev is None:
        raise APIError(404, f"Previous response with id '{response_id}' not found.",
                       "previous_response_id", "previous_response_not_found",
                       type="invalid_request_error")
    if not prev.done:
        raise APIError(400, f"previous_response_id: response '{response_id}' is still "
                       f"{prev.body['status']}", "previous_response_id", "invalid_value")
    return prev.conversation()


async def _foreground(request: Request, state: ServerState, body: R.ResponsesRequest, job: Job,
                      view: ResponsesView, stored: tuple[Key, StoredResponse] | None
                      ) -> Response:
    """Run the response on this request (aborted if its client leaves); ``stored``: the
    key and entry to keep it under (in progress once admitted, final once done; dropped
    if it ends without a final object)."""
    ledger, key = state.responses, (job.owner, job.public_id)
    final = ledger.begin(key)  # the body a cancel (``cancel_response``) returns
    ended: dict = {}

    def admitted() -> None:
        if stored is not None:
            state.store.put(*stored)

    def done() -> None:
        ledger.end(key, final, ended.get("body"))
        if stored is None:
            return
        if ended.get("body") is not None:
            stored[1].update(ended["body"])
        else:
            state.store.discard(*stored)

    def collect(finals) -> dict:
        ended["body"] = view.response(finals)
        return ended["body"]

    async def stream() -> AsyncIterator[str]:
        try:
            async for text in _events(view.events(job.outputs()), ended):
                yield text
        finally:
            done()

    try:
        response = await run_job(request, job, stream if body.stream else None, collect,
                                 admitted)
    except BaseException:
        done()
        raise
    if not body.stream:
        done()
    return response


@router.post("/v1/responses/{response_id}/cancel", responses=ERRORS)
async def cancel_response(response_id: str, request: Request) -> Response:
    """OpenAI's cancel (the SDK's ``responses.cancel``) of a running response: it is
    aborted and its response object returned, status ``cancelled``; cancelling it again
    returns the same object; a response that finished otherwise is a 400, an unknown id
    (or another API key's) a 404. Only the API key that made it may."""
    state = server_state(request)
    key = (request_owner(request.scope), response_id)
    final, job = state.responses.running.get(key), state.live.get(key)
    if final is not None:
        if job is not None:
            await job.cancel()
        try:
            await asyncio.wait_for(asyncio.shield(final), CANCEL_WAIT_S)
        except TimeoutError:
            pass
    status, body = state.responses.finished.get(key, (None, None))
    if body is not None:
        return JSONResponse(body)
    stored = state.store.get(key)
    if status is None and stored is not None and stored.done:  # finished beyond the ledger
        status = stored.body["status"]
        if status == "cancelled":
            return JSONResponse(stored.body)
    if status is not None:
        return error_response(400, f"response_id: cannot cancel a response that is already "
                              f"{status}", "response_id", "response_not_cancellable")
    return error_response(404, f"response_id: no response with id {response_id!r} (running, "
                          "stored, or lately finished)", "response_id", "response_not_found",
                          type="invalid_request_error")


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


async def _events(events: AsyncIterator[dict], ended: dict) -> AsyncIterator[str]:
    """The events as SSE; ``ended["body"]``: the final response object, once sent."""
    seq = 0
    try:
        async for ev in events:
            seq = ev["sequence_number"] + 1
            if ev["type"] in ("response.completed", "response.incomplete"):
                ended["body"] = ev["response"]
            yield f"event: {ev['type']}\ndata: {json.dumps(ev, ensure_ascii=False)}\n\n"
    except Exception as exc:  # noqa: BLE001 - reported in-band, then the stream ends
        err = to_api_error(exc)
        data = {"type": "error", "sequence_number": seq, "code": err.code,
                "message": err.message, "param": err.param}
        yield f"event: error\ndata: {json.dumps(data)}\n\n"
