"""The session WebSocket ``/v1/sessions/ws``: the HTTP session API over one connection
(the message shapes are in ``session_routes``' docstring). One connection holds at most one
session at a time; a connection that drops has its session aborted and its blocks freed.
Frames go out one at a time (``_sending``): acks and errors from the reader, reasoning from
the follower while the input is open, then the answer.

Before the handshake a browser's ``Origin`` must be in ``allowed_origins`` (no ``Origin``:
not a browser, allowed); the key comes in a header or as ``?api_key=`` (redacted from logs,
``redact``) and makes the connection's sessions its own. While the server drains an open
is refused (``shutting_down``); a session already open may still be closed."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

from fastapi import WebSocket, WebSocketDisconnect
from pydantic import BaseModel, ValidationError
from starlette import websockets as starlette_ws
from starlette.concurrency import run_in_threadpool
from starlette.websockets import WebSocketState

from thinkstream.engine.request import RequestOutput
from thinkstream.server import formatting as fmt
from thinkstream.server.auth import origin_allowed, presented_key
from thinkstream.server.errors import APIError, to_api_error
from thinkstream.server.protocol import describe_error
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
from thinkstream.server.vllm_fields import refuse_unhonoured, refused_for

# the client is gone: a receive says so (WebSocketDisconnect); a send after it, in starlette
# (recent versions) raises WebSocketDisconnected (it escaped as "Exception in ASGI application")
_GONE = (WebSocketDisconnect, getattr(starlette_ws, "WebSocketDisconnected", WebSocketDisconnect))


async def _parse_ws(obj: dict, model: type[BaseModel]) -> Any:
    refuse_unhonoured(obj, refused_for(model))
    try:
        return model.model_validate(obj)
    except ValidationError as exc:
        param, message = describe_error(exc)
        raise APIError(400, message, param, "invalid_type") from None


class WsSession:
    """One WebSocket connection: at most one session at a time; dropped -> aborted."""

    def __init__(self, ws: WebSocket, hub: SessionHub) -> None:
        self.ws = ws
        self.state = ws.app.state.server
        self.hub = hub
        raw = presented_key(ws.scope.get("headers", []))
        if raw is None and "api_key" in ws.query_params:
            raw = ws.query_params["api_key"].encode()
        self.key = self.state.keys.owner(raw)  # None: not authorized
        self.sid: str | None = None
        self.answer: asyncio.Task | None = None
        self.follower: asyncio.Task | None = None  # reasoning pushed while the input is open
        self.reasoned = 0  # reasoning characters sent for the current session
        self.logprobs: tuple[int | None, int] = (None, 1)
        self._sending = asyncio.Lock()  # one frame at a time from the reader and the tasks

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
        if not origin_allowed(self.ws.scope.get("headers", []), self.state.config.allowed_origins):
            await self.ws.close(code=1008)  # before the handshake: the server answers 403
            return
        await self.ws.accept()
        if self.key is None:
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
                    if self.ws.application_state == WebSocketState.DISCONNECTED:
                        break  # the client left while this was handled: no one to tell
                    await self.send_error(exc)
        except _GONE:
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
        except RecursionError:  # valid JSON, maybe: deeper than the parser goes
            raise APIError(400, "a text frame is nested too deeply", None, "invalid_body") from None
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
            await self._close(body.seq, body.data())
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
        # a session that ended under the connection (idle timeout, a DELETE) frees it
        if self.sid is not None and self.hub.is_live(self.sid) \
                and (self.answer is None or not self.answer.done()):
            raise APIError(409, "this connection already has a session", None, "session_open")
        body = await _parse_ws(obj, SessionCreateRequest)
        prompt, messages, params, logprobs = await run_in_threadpool(open_args, self.state, body)
        thinking = body.thinking.config() if body.thinking is not None else None
        info = await self.hub.open(self.key, prompt, messages, params, thinking,
                                   salt=body.prefix_salt())
        await self._stop_follower()
        self.sid, self.answer, self.logprobs = info.session_id, None, (logprobs, params.n)
        self.reasoned = 0
        await self.send({"type": "opened", "session": session_body(info)})
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
        await self.send({"type": "ack", **ack_body(result)})

    async def _close(self, seq: int | None, data: str | list[int] | None) -> None:
        sid = self._current()
        stream = await self.hub.close(self.key, sid, seq, data)
        await self._stop_follower()  # from here on one task sends reasoning, then the answer
        view = fmt.ChatView(sid, self.state.config.served_model_name, self.state.llm.tokenizer,
                            0, *self.logprobs)

        async def answer_only() -> AsyncIterator[tuple[int, RequestOutput]]:
            async for i, out in output_pairs(stream, view):
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
