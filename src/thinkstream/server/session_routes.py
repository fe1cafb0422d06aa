"""Streaming-input session routes: the HTTP API and a WebSocket doing the same.

    POST   /v1/sessions                 open (model, prompt or messages, sampling params)
    POST   /v1/sessions/{id}/append     {"text" | "token_ids", "seq"}   -> acknowledgement
    PUT    /v1/sessions/{id}/input      update mode: the whole input    -> acknowledgement
    POST   /v1/sessions/{id}/close      {"stream", "seq"?, "text"?} -> the answer (chat.completion,
                                        or SSE chat.completion.chunk events ending in [DONE])
    GET    /v1/sessions/{id}            state, tokens received / computed, next seq
    DELETE /v1/sessions/{id}            abort, blocks freed
    WS     /v1/sessions/ws              one session at a time over one connection

Sequence numbers count input updates from 0: the expected one is applied, a repeated one is
acknowledged without change (``duplicate: true``), a gap or any input after close is 409
naming the expected number. Limits and ownership live in ``SessionHub``. A client that
disconnects while its answer streams (SSE or WebSocket), or a WebSocket that drops at any
time, has its session aborted and its blocks freed; a silent HTTP client is closed by the
idle timeout.

WebSocket messages (JSON text frames; a binary frame is raw UTF-8 appended as the next chunk,
and may end inside a character)::

    -> {"type": "open", ...same body as POST /v1/sessions}   <- {"type": "opened", "session": {...}}
    -> {"type": "append", "text": "...", "seq": 0}          <- {"type": "ack", "seq": 0, ...}
    -> {"type": "replace", "text": "...", "seq": 1}         <- {"type": "ack", ...}
    -> {"type": "close", "text"?: "last chunk"}  <- {"type": "chunk", ...chat.completion.chunk} ... {"type": "done"}
    -> {"type": "abort"}        <- {"type": "aborted"}
    errors: <- {"type": "error", "error": {"message", "type", "param", "code"}}

Think while reading (``"thinking": {...}`` in the open body) keeps the reasoning apart from
the answer, as ``reasoning_content`` (the field chat clients read), before the input ends:

- HTTP: ``GET .../events`` streams chunks whose delta is ``{"reasoning_content": ...}`` while
  the input is open and until the session ends. The close stream carries the whole reasoning
  (from the first note) as ``delta.reasoning_content`` chunks, then the answer as
  ``delta.content`` chunks; no chunk carries both. Without ``stream``, the answer's
  ``message`` has ``reasoning_content`` beside ``content``.
- WebSocket: the server pushes ``{"type": "reasoning", "delta": "..."}`` as notes are
  written, between the acks, while the client still sends; after close, the rest of the
  reasoning (last note, passes) comes the same way, then the answer as ``chunk`` messages
  whose deltas hold ``content`` only. The reasoning deltas concatenate to the answer's
  ``reasoning_content``.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request, WebSocket
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool

from thinkstream.engine.request import RequestOutput
from thinkstream.server import formatting as fmt
from thinkstream.server.auth import request_owner
from thinkstream.server.errors import to_api_error
from thinkstream.server.openai_routes import parse_body
from thinkstream.server.serving import ClientGone, until_disconnect
from thinkstream.server.session_hub import SessionHub
from thinkstream.server.session_protocol import (
    SessionCloseRequest,
    SessionCreateRequest,
    SessionInputRequest,
    ack_body,
    open_args,
    output_pairs,
    session_body,
)
from thinkstream.server.session_ws import WsSession


def _error(exc: BaseException) -> JSONResponse:
    err = to_api_error(exc)
    return JSONResponse(err.body(), err.status, headers=err.headers)


# ------------------------------------------------------------------ router
def session_router() -> APIRouter:
    """The session routes; include beside the OpenAI ones (``app.include_router``). They use
    the app's ``SessionHub`` (``ServerState.hub``)."""
    router = APIRouter()

    def ctx(request: Request) -> tuple[Any, SessionHub, str]:
        state = request.app.state.server
        return state, state.hub, request_owner(request.scope)

    @router.post("/v1/sessions")
    async def open_session(request: Request) -> Response:
        """Open a streaming-input session."""
        try:
            state, hub, key = ctx(request)
            body = await parse_body(request, SessionCreateRequest)
            prompt, messages, params, logprobs = await run_in_threadpool(open_args, state, body)
            thinking = body.thinking.config() if body.thinking is not None else None
            info = await hub.open(key, prompt, messages, params, thinking,
                                  (logprobs, params.n, thinking is not None),
                                  salt=body.prefix_salt())
            return JSONResponse(session_body(info))
        except Exception as exc:  # noqa: BLE001 - every refusal is an error body
            return _error(exc)

    async def update(request: Request, sid: str, replace: bool) -> Response:
        try:
            _, hub, key = ctx(request)
            body = await parse_body(request, SessionInputRequest)
            data = body.data()
            op = hub.replace if replace else hub.append
            return JSONResponse(ack_body(await op(key, sid, data, body.seq)))
        except Exception as exc:  # noqa: BLE001
            return _error(exc)

    @router.post("/v1/sessions/{session_id}/append")
    async def append(session_id: str, request: Request) -> Response:
        """Append a chunk (``text`` or ``token_ids``) numbered ``seq``."""
        return await update(request, session_id, replace=False)

    @router.put("/v1/sessions/{session_id}/input")
    async def replace_input(session_id: str, request: Request) -> Response:
        """Update mode: the whole input is replaced; the KV of the common prefix is kept."""
        return await update(request, session_id, replace=True)

    @router.post("/v1/sessions/{session_id}/close")
    async def close(session_id: str, request: Request) -> Response:
        """End the input; answers like /v1/chat/completions (SSE when ``stream``)."""
        try:
            state, hub, key = ctx(request)
            raw = await request.body()
            body = await parse_body(request, SessionCloseRequest) if raw.strip() else SessionCloseRequest()
            logprobs, n, thinking = hub.view(key, session_id)
            stream = await hub.close(key, session_id, body.seq, body.data())
        except Exception as exc:  # noqa: BLE001
            return _error(exc)
        view = fmt.ChatView(session_id, state.config.served_model_name, state.llm.tokenizer,
                            0, logprobs, n)
        if body.stream:
            usage = bool(body.stream_options and body.stream_options.include_usage)
            return StreamingResponse(_sse(view.chunks(output_pairs(stream, view), usage)),
                                     media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache"})
        try:
            final = await until_disconnect(request, _last(output_pairs(stream, view)))
        except ClientGone:
            await hub.abort(key, session_id, "client_gone")
            return Response(status_code=499)
        except Exception as exc:  # noqa: BLE001
            return _error(exc)
        answer = view.response([final])
        for choice in answer["choices"] if thinking else ():  # the same shape, reasoning or not
            choice["message"].setdefault("reasoning_content", "")
        return JSONResponse(answer)

    @router.get("/v1/sessions/{session_id}/events")
    async def events(session_id: str, request: Request) -> Response:
        """SSE of a thinking session's reasoning while its input streams: chunks whose delta
        is ``{"reasoning_content": ...}``, the first with all the reasoning so far (join at
        any time); ends when the session ends. Leaving it early aborts nothing."""
        try:
            state, hub, key = ctx(request)
            await hub.info(key, session_id)  # exists and is this key's
        except Exception as exc:  # noqa: BLE001
            return _error(exc)
        view = fmt.ChatView(session_id, state.config.served_model_name, state.llm.tokenizer, 0)

        async def chunks() -> AsyncIterator[dict]:
            sent = 0
            async for out in state.llm.session_events(session_id):
                text = out.outputs[0].reasoning_content if out.outputs else ""
                if len(text) > sent:
                    yield view.chunk([{"index": 0, "delta": {"reasoning_content": text[sent:]},
                                        "logprobs": None, "finish_reason": None}])
                    sent = len(text)

        return StreamingResponse(_sse(chunks()), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache"})

    @router.get("/v1/sessions/{session_id}")
    async def get_session(session_id: str, request: Request) -> Response:
        """State (open / answering / finished / aborted), tokens received and computed."""
        try:
            _, hub, key = ctx(request)
            return JSONResponse(session_body(await hub.info(key, session_id)))
        except Exception as exc:  # noqa: BLE001
            return _error(exc)

    @router.delete("/v1/sessions/{session_id}")
    async def delete_session(session_id: str, request: Request) -> Response:
        """Abort the session (open or answering) and free its blocks."""
        try:
            _, hub, key = ctx(request)
            aborted = await hub.abort(key, session_id)
            return JSONResponse({"id": session_id, "object": "session.deleted", "deleted": True,
                                 "aborted": aborted})
        except Exception as exc:  # noqa: BLE001
            return _error(exc)

    @router.websocket("/v1/sessions/ws")
    async def websocket(ws: WebSocket) -> None:
        await WsSession(ws, ws.app.state.server.hub).run()

    return router


async def _last(pairs) -> RequestOutput:
    final = None
    async for _, out in pairs:
        final = out
    return final  # type: ignore[return-value]


async def _sse(chunks: AsyncIterator[dict]) -> AsyncIterator[str]:
    try:
        async for chunk in chunks:
            yield f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n"
    except Exception as exc:  # noqa: BLE001 - reported in-band, then the stream ends
        yield f"data: {json.dumps(to_api_error(exc).body())}\n\n"
    yield "data: [DONE]\n\n"
