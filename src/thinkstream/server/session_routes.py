"""Streaming-input session routes: the HTTP API and a WebSocket doing the same.

    POST   /v1/sessions                 open (model, prompt or messages, sampling params)
    POST   /v1/sessions/{id}/append     {"text" | "token_ids", "seq"}   -> acknowledgement
    PUT    /v1/sessions/{id}/input      update mode: the whole input    -> acknowledgement
    POST   /v1/sessions/{id}/close      {"stream", "seq"?} -> the answer (chat.completion,
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
    -> {"type": "close"}        <- {"type": "chunk", ...chat.completion.chunk} ... {"type": "done"}
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

import asyncio
import contextlib
import hmac
import json
import time
from collections.abc import AsyncIterator
from dataclasses import asdict, replace
from typing import Any

from fastapi import APIRouter, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ValidationError

from thinkstream.request import RequestOutput
from thinkstream.server import formatting as fmt
from thinkstream.server import protocol as P
from thinkstream.server.auth import _digest, presented_key
from thinkstream.server.errors import APIError, to_api_error
from thinkstream.server.openai_routes import _check_caps, _check_model, _params, parse_body
from thinkstream.server.serving import ClientGone, until_disconnect
from thinkstream.server.session_hub import SessionHub, SessionLimits, key_id
from thinkstream.streaming.sessions import SessionInfo, UpdateResult


class SessionThinking(P._Body):
    """Think while reading (``thinking.ThinkConfig``): notes on each input unit while the
    input streams, reported as ``reasoning_content`` deltas."""

    layout: str = "gap"
    gap: int = 48
    depth: str = "D1"
    unit: str = "sentence"
    note_tokens: int = 24
    pass_tokens: int = 64
    max_reasoning_tokens: int = 512

    def config(self):
        from thinkstream.thinking import Layout, ThinkConfig, UnitPolicy

        try:
            return ThinkConfig(layout=Layout(self.layout, self.gap), units=UnitPolicy(self.unit),
                               depth=self.depth, note_tokens=self.note_tokens,
                               pass_tokens=self.pass_tokens,
                               max_reasoning_tokens=self.max_reasoning_tokens)
        except ValueError as exc:
            raise APIError(400, f"thinking: {exc}", "thinking", "invalid_value") from None


class SessionCreateRequest(P._Sampling):
    """``POST /v1/sessions``: ``prompt`` (text or token ids received so far) or ``messages``
    (the streamed text becomes a new user message after them; ``prompt`` is its start)."""

    prompt: P.Text | P.TokenIds | None = None
    messages: list[P.ChatMessage] | None = None
    thinking: SessionThinking | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    logprobs: bool = False
    top_logprobs: int | None = None


class SessionInputRequest(P._Body):
    """An append, or (``PUT .../input``) the whole new input."""

    text: P.Text | None = None
    token_ids: P.TokenIds | None = None
    seq: int | None = None

    def data(self) -> str | list[int]:
        if (self.text is None) == (self.token_ids is None):
            raise APIError(400, "text or token_ids: give exactly one", "text", "invalid_value")
        return self.text if self.text is not None else self.token_ids  # type: ignore[return-value]


class SessionCloseRequest(P._Body):
    stream: bool = False
    stream_options: P.StreamOptions | None = None
    seq: int | None = None


# ------------------------------------------------------------------ plumbing
def _hub(app: Any, limits: SessionLimits | None) -> SessionHub:
    hub = getattr(app.state, "session_hub", None)
    if hub is None:
        hub = app.state.session_hub = SessionHub(app.state.server.llm, limits)
    return hub


def _info(info: SessionInfo) -> dict:
    d = asdict(info)
    return {"id": d.pop("session_id"), "object": "session", **d}


def _ack(r: UpdateResult) -> dict:
    return {"id": r.session_id, "object": "session.ack", "seq": r.seq, "duplicate": r.duplicate,
            "next_seq": r.next_seq, "tokens_received": r.tokens_received,
            "tokens_kept": r.tokens_kept, "tokens_added": r.tokens_added}


def _error(exc: BaseException) -> JSONResponse:
    err = to_api_error(exc)
    return JSONResponse(err.body(), err.status, headers=err.headers)


async def _parse_ws(obj: dict, model: type[BaseModel]) -> Any:
    try:
        return model.model_validate(obj)
    except ValidationError as exc:
        e = exc.errors(include_url=False, include_input=False)[0]
        param = ".".join(str(p) for p in e["loc"]) or None
        raise APIError(400, f"{param or 'message'}: {e['msg']}", param, "invalid_type") from None


def _open_args(state, body: SessionCreateRequest):
    _check_model(state, body.model)
    if body.top_logprobs is not None and not body.logprobs:
        raise APIError(400, "top_logprobs: needs logprobs=true", "top_logprobs", "invalid_value")
    logprobs = (body.top_logprobs or 0) if body.logprobs else None
    _check_caps(state, body, body.top_logprobs, "top_logprobs")
    max_tokens = body.max_completion_tokens if body.max_completion_tokens is not None \
        else body.max_tokens
    params = _params(body, max_tokens, logprobs)
    messages = None
    if body.messages is not None:
        if state.llm.tokenizer.chat_template is None:
            raise APIError(400, "messages: this model has no chat template; stream a prompt",
                           "messages", "no_chat_template")
        messages = [{"role": m.role, "content": m.text(), **({"name": m.name} if m.name else {})}
                    for m in body.messages]
    return body.prompt, messages, params, logprobs


async def _pairs(stream: AsyncIterator[RequestOutput], view: fmt.ChatView):
    async for out in stream:
        view.num_prompt_tokens = len(out.prompt_token_ids)
        yield 0, out


# ------------------------------------------------------------------ router
def session_router(limits: SessionLimits | None = None) -> APIRouter:
    """The session routes; include beside the OpenAI ones (``app.include_router``)."""
    router = APIRouter()
    views: dict[str, tuple[int | None, int, bool]] = {}  # session id -> (logprobs, n, thinking)

    def ctx(request: Request) -> tuple[Any, SessionHub, str]:
        state = request.app.state.server
        return state, _hub(request.app, limits), key_id(presented_key(request.scope["headers"]))

    @router.post("/v1/sessions")
    async def open_session(request: Request) -> Response:
        """Open a streaming-input session."""
        try:
            state, hub, key = ctx(request)
            body = await parse_body(request, SessionCreateRequest)
            prompt, messages, params, logprobs = _open_args(state, body)
            thinking = body.thinking.config() if body.thinking is not None else None
            info = await hub.open(key, prompt, messages, params, thinking)
            views[info.session_id] = (logprobs, params.n, thinking is not None)
            return JSONResponse(_info(info))
        except Exception as exc:  # noqa: BLE001 - every refusal is an error body
            return _error(exc)

    async def update(request: Request, sid: str, replace: bool) -> Response:
        try:
            _, hub, key = ctx(request)
            body = await parse_body(request, SessionInputRequest)
            data = body.data()
            op = hub.replace if replace else hub.append
            return JSONResponse(_ack(await op(key, sid, data, body.seq)))
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
            stream = await hub.close(key, session_id, body.seq)
        except Exception as exc:  # noqa: BLE001
            return _error(exc)
        logprobs, n, thinking = views.pop(session_id, (None, 1, False))
        view = fmt.ChatView(session_id, state.config.served_model_name, state.llm.tokenizer,
                            0, logprobs, n)
        if body.stream:
            usage = bool(body.stream_options and body.stream_options.include_usage)
            return StreamingResponse(_sse(view.chunks(_pairs(stream, view), usage)),
                                     media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache"})
        try:
            final = await until_disconnect(request, _last(_pairs(stream, view)))
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
                    yield view._chunk([{"index": 0, "delta": {"reasoning_content": text[sent:]},
                                        "logprobs": None, "finish_reason": None}])
                    sent = len(text)

        return StreamingResponse(_sse(chunks()), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache"})

    @router.get("/v1/sessions/{session_id}")
    async def get_session(session_id: str, request: Request) -> Response:
        """State (open / answering / finished / aborted), tokens received and computed."""
        try:
            _, hub, key = ctx(request)
            return JSONResponse(_info(await hub.info(key, session_id)))
        except Exception as exc:  # noqa: BLE001
            return _error(exc)

    @router.delete("/v1/sessions/{session_id}")
    async def delete_session(session_id: str, request: Request) -> Response:
        """Abort the session (open or answering) and free its blocks."""
        try:
            _, hub, key = ctx(request)
            aborted = await hub.abort(key, session_id)
            views.pop(session_id, None)
            return JSONResponse({"id": session_id, "object": "session.deleted", "deleted": True,
                                 "aborted": aborted})
        except Exception as exc:  # noqa: BLE001
            return _error(exc)

    @router.websocket("/v1/sessions/ws")
    async def websocket(ws: WebSocket) -> None:
        await _WsSession(ws, limits).run()

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


class _WsSession:
    """One WebSocket connection: at most one session at a time; dropped -> aborted."""

    def __init__(self, ws: WebSocket, limits: SessionLimits | None) -> None:
        self.ws = ws
        self.state = ws.app.state.server
        self.hub = _hub(ws.app, limits)
        raw = presented_key(ws.scope.get("headers", []))
        if raw is None and "api_key" in ws.query_params:
            raw = ws.query_params["api_key"].encode()
        self.raw_key = raw
        self.key = key_id(raw)
        self.sid: str | None = None
        self.answer: asyncio.Task | None = None
        self.follower: asyncio.Task | None = None  # reasoning pushed while the input is open
        self.reasoned = 0  # reasoning characters sent for the current session
        self.logprobs: tuple[int | None, int] = (None, 1)
        self._sending = asyncio.Lock()  # one frame at a time from the reader and the tasks

    def _authorized(self) -> bool:
        want = self.state.config.api_key
        if want is None:
            return True
        return self.raw_key is not None and hmac.compare_digest(_digest(self.raw_key),
                                                                _digest(want.encode()))

    async def send(self, msg: dict) -> None:
        async with self._sending:
            await self.ws.send_json(msg)

    async def send_error(self, exc: BaseException) -> None:
        await self.send({"type": "error", **to_api_error(exc).body()})

    async def send_reasoning(self, out: RequestOutput) -> None:
        """The reasoning of ``out`` not sent yet, as one ``reasoning`` message. The cursor
        moves under the send lock, so a follower stopped while waiting loses nothing."""
        text = out.outputs[0].reasoning_content if out.outputs else ""
        async with self._sending:
            if len(text) > self.reasoned:
                await self.ws.send_json({"type": "reasoning", "delta": text[self.reasoned:]})
                self.reasoned = len(text)

    async def run(self) -> None:
        await self.ws.accept()
        if not self._authorized():
            await self.send_error(APIError(401, "missing or invalid API key", None, "invalid_api_key"))
            await self.ws.close(code=1008)
            return
        try:
            while True:
                msg = await self.ws.receive()
                if msg["type"] == "websocket.disconnect":
                    break
                try:
                    await self.handle(msg)
                except Exception as exc:  # noqa: BLE001 - reported, the connection stays
                    await self.send_error(exc)
        except WebSocketDisconnect:
            pass
        finally:
            await self._drop()

    async def _drop(self, reason: str = "client_gone") -> None:
        await self._stop_follower()
        if self.answer is not None:
            self.answer.cancel()
            with contextlib.suppress(BaseException):
                await self.answer
        if self.sid is not None:
            with contextlib.suppress(Exception):
                await self.hub.abort(self.key, self.sid, reason)

    async def handle(self, msg: dict) -> None:
        if msg.get("bytes") is not None:
            await self._update("append", msg["bytes"], None)
            return
        try:
            obj = json.loads(msg.get("text") or "")
        except ValueError:
            raise APIError(400, "a text frame must be a JSON object", None, "invalid_json") from None
        if not isinstance(obj, dict):
            raise APIError(400, "a text frame must be a JSON object", None, "invalid_json")
        kind = obj.pop("type", None)
        if kind == "open":
            await self._open(obj)
        elif kind in ("append", "replace"):
            body = await _parse_ws(obj, SessionInputRequest)
            await self._update(kind, body.data(), body.seq)
        elif kind == "close":
            body = await _parse_ws(obj, SessionCloseRequest)
            await self._close(body.seq)
        elif kind == "abort":
            await self._drop("abort")
            self.sid, self.answer = None, None
            await self.send({"type": "aborted"})
        else:
            raise APIError(400, f"type: unknown message type {kind!r}", "type", "invalid_value")

    def _current(self) -> str:
        if self.sid is None:
            raise APIError(400, "no open session on this connection: send an open message",
                           None, "no_session")
        return self.sid

    async def _open(self, obj: dict) -> None:
        if self.sid is not None and (self.answer is None or not self.answer.done()):
            raise APIError(409, "this connection already has a session", None, "session_open")
        body = await _parse_ws(obj, SessionCreateRequest)
        prompt, messages, params, logprobs = _open_args(self.state, body)
        thinking = body.thinking.config() if body.thinking is not None else None
        info = await self.hub.open(self.key, prompt, messages, params, thinking)
        await self._stop_follower()
        self.sid, self.answer, self.logprobs = info.session_id, None, (logprobs, params.n)
        self.reasoned = 0
        await self.send({"type": "opened", "session": _info(info)})
        if thinking is not None:
            self.follower = asyncio.ensure_future(self._follow(info.session_id))

    async def _follow(self, sid: str) -> None:
        """Push the reasoning while the input streams; stopped at close (the answer's
        forwarder takes over) or when the session ends."""
        try:
            async for out in self.state.llm.session_events(sid):
                await self.send_reasoning(out)
        except Exception as exc:  # noqa: BLE001 - the engine died: tell the client
            with contextlib.suppress(Exception):
                await self.send_error(exc)

    async def _stop_follower(self) -> None:
        task, self.follower = self.follower, None
        if task is None:
            return
        async with self._sending:  # never cut a frame: the follower is not inside a send
            task.cancel()
        with contextlib.suppress(BaseException):
            await task

    async def _update(self, kind: str, data, seq: int | None) -> None:
        op = self.hub.replace if kind == "replace" else self.hub.append
        result = await op(self.key, self._current(), data, seq)
        await self.send({"type": "ack", **_ack(result)})

    async def _close(self, seq: int | None) -> None:
        sid = self._current()
        stream = await self.hub.close(self.key, sid, seq)
        await self._stop_follower()  # from here on one task sends reasoning, then the answer
        view = fmt.ChatView(sid, self.state.config.served_model_name, self.state.llm.tokenizer,
                            0, *self.logprobs)

        async def answer_only() -> AsyncIterator[tuple[int, RequestOutput]]:
            async for i, out in _pairs(stream, view):
                if out.outputs and out.outputs[0].reasoning_content:
                    await self.send_reasoning(out)  # before any answer text
                    out = replace(out, outputs=[replace(o, reasoning_content="",
                                                        new_reasoning_content="")
                                                for o in out.outputs])
                yield i, out

        async def forward() -> None:
            started = time.monotonic()
            async for chunk in view.chunks(answer_only(), True):
                await self.send({"type": "chunk", **chunk})
            await self.send({"type": "done", "seconds": round(time.monotonic() - started, 4)})
            self.sid = None  # finished: nothing to abort on disconnect

        self.answer = asyncio.ensure_future(forward())
