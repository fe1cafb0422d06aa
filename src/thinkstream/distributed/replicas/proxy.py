"""The router's HTTP front: one OpenAI-compatible endpoint over N replica servers.

Every route is forwarded as is (headers, body, status; streams chunk by chunk) to the
replica ``routing.Router`` picks; the answer carries ``X-Thinkstream-Replica``. What the
router adds:

- ``POST /v1/sessions`` opens on the least-loaded replica and pins the session there;
  ``/v1/sessions/{id}/...`` goes where it was pinned (unknown: 404; replica dead: 410
  ``session_lost`` naming the replica and why). A session WebSocket is relayed, frame by
  frame, to the least-loaded replica for its whole life (one connection, one replica);
  if that replica dies the client gets an ``error`` message (``session_lost``) and the
  socket closes (1011).
- completions / chat / responses are routed by the prompt's first KV blocks (the
  tokenizer runs here), else to the least-loaded replica; 429 when every replica is at
  its cap; 503 when none is alive.
- a replica whose connection fails is checked at once (a Ray ping); a dead one takes
  only its own requests with it: a request in flight there gets a 502 JSON error (or,
  once streaming, an SSE error event and ``[DONE]``), its sessions turn 410.
- ``GET /health``: 200 while a replica lives, with each replica's state; ``GET /metrics``:
  every live replica's metrics with a ``replica`` label, plus the router's own.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import AsyncIterator, Callable, Sequence

import httpx
from fastapi import FastAPI, Request, WebSocket
from fastapi.responses import JSONResponse, Response, StreamingResponse

from thinkstream.distributed.replicas.routing import (
    NoReplicaError,
    ReplicaState,
    Router,
    SessionLostError,
)
from thinkstream.server.errors import error_body

SESSION_PATH = re.compile(r"^/v1/sessions/([^/]+)(/.*)?$")
PROMPT_ROUTES = ("/v1/completions", "/v1/chat/completions", "/v1/responses")
HOP = {"host", "content-length", "connection", "keep-alive", "transfer-encoding", "upgrade"}
PING_TIMEOUT_S = 5.0


def _error(status: int, message: str, code: str | None = None, type: str | None = None,
           replica: ReplicaState | None = None) -> JSONResponse:
    headers = {} if replica is None else {"X-Thinkstream-Replica": str(replica.index)}
    return JSONResponse(error_body(status, message, None, code, type), status, headers=headers)


class ReplicaProxy:
    """Forwards requests; ``ping(i)`` is an awaitable returning None or why replica i is
    dead (raising counts as dead)."""

    def __init__(self, router: Router, tokenizer, ping: Callable[[int], object]) -> None:
        self.router = router
        self.tokenizer = tokenizer
        self.ping = ping
        self._client: httpx.AsyncClient | None = None

    @property
    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=httpx.Timeout(None, connect=10.0),
                                             limits=httpx.Limits(max_connections=None))
        return self._client

    async def check(self, replica: ReplicaState) -> bool:
        """Ask Ray whether the replica lives; mark it dead if not. True if alive."""
        if replica.dead is not None:
            return False
        try:
            reason = await asyncio.wait_for(self.ping(replica.index), PING_TIMEOUT_S)
        except Exception as exc:  # RayActorError, timeout: the process is gone or stuck
            reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        if reason is not None:
            self.router.mark_dead(replica, str(reason))
        return reason is None

    # ------------------------------------------------------------------ routing
    def prompt_ids(self, path: str, body: dict) -> list[int] | None:
        """The prompt's token ids when cheap to know (for prefix routing)."""
        try:
            if path == "/v1/completions":
                prompt = body.get("prompt")
                if isinstance(prompt, list) and prompt and not isinstance(prompt[0], int):
                    prompt = prompt[0]
                if isinstance(prompt, str):
                    return self.tokenizer.encode(prompt, add_special_tokens=True)
                return [int(t) for t in prompt] if isinstance(prompt, list) else None
            if path == "/v1/chat/completions" and isinstance(body.get("messages"), list):
                return self.tokenizer.encode_chat(body["messages"], True)
            if path == "/v1/responses" and isinstance(body.get("input"), str):
                return self.tokenizer.encode(body["input"], add_special_tokens=True)
        except Exception:  # a malformed body: the replica answers it with a proper 400
            return None
        return None

    async def handle(self, request: Request) -> Response:
        path, body = request.url.path, await request.body()
        m = SESSION_PATH.match(path)
        try:
            if m and m.group(1) != "ws":
                sid = m.group(1)
                replica = self.router.for_session(sid)
                if replica is None:
                    return _error(404, f"session {sid!r} not found", "session_not_found")
                ends = request.method == "DELETE" or (m.group(2) or "").startswith("/close")
                return await self.forward(request, replica, body,
                                          lambda status: self._session_done(sid, status, ends))
            if path == "/v1/sessions" and request.method == "POST":
                replica = self.router.least_loaded()
                return await self.forward(request, replica, body, None, opens_session=True)
            parsed = _json(body) if path in PROMPT_ROUTES else None
            ids = self.prompt_ids(path, parsed) if isinstance(parsed, dict) else None
            replica = self.router.for_prompt(ids)
            return await self.forward(request, replica, body, None)
        except SessionLostError as exc:
            return _error(410, str(exc), "replica_died", "session_lost")
        except NoReplicaError as exc:
            if exc.overloaded:
                return _error(429, str(exc), "replicas_busy")
            return _error(503, str(exc), "no_replica")

    def _session_done(self, sid: str, status: int, ends: bool) -> None:
        if ends or status == 404:  # closed, deleted, or the replica no longer knows it
            self.router.ended(sid)

    # ---------------------------------------------------------------- forwarding
    async def forward(self, request: Request, replica: ReplicaState, body: bytes,
                      done: Callable[[int], None] | None, opens_session: bool = False) -> Response:
        url = replica.url + request.url.path + (f"?{request.url.query}" if request.url.query else "")
        headers = [(k, v) for k, v in request.headers.items() if k.lower() not in HOP]
        replica.in_flight += 1
        replica.routed += 1
        req = self.client.build_request(request.method, url, headers=headers, content=body)
        try:
            resp = await self.client.send(req, stream=True)
        except httpx.TransportError as exc:
            replica.in_flight -= 1
            return await self._failed(replica, exc)
        out_headers = {"X-Thinkstream-Replica": str(replica.index)}
        for k in ("content-type", "x-request-id", "retry-after"):
            if k in resp.headers:
                out_headers[k] = resp.headers[k]
        if not resp.headers.get("content-type", "").startswith("text/event-stream"):
            try:
                data = await resp.aread()
            except httpx.TransportError as exc:
                return await self._failed(replica, exc)
            finally:
                replica.in_flight -= 1
                await resp.aclose()
            if opens_session and resp.status_code == 200:
                self.router.opened(json.loads(data)["id"], replica)
            if done is not None:
                done(resp.status_code)
            return Response(data, resp.status_code, headers=out_headers)
        return StreamingResponse(self._relay(resp, replica, done), resp.status_code,
                                 headers=out_headers)

    async def _relay(self, resp: httpx.Response, replica: ReplicaState,
                     done: Callable[[int], None] | None) -> AsyncIterator[bytes]:
        try:
            async for chunk in resp.aiter_raw():
                yield chunk
        except httpx.TransportError as exc:
            await self.check(replica)
            err = error_body(502, f"replica {replica.index} failed mid-stream: {exc!r}", None,
                             "replica_failed")
            yield f"\n\ndata: {json.dumps(err)}\n\ndata: [DONE]\n\n".encode()
        finally:
            replica.in_flight -= 1
            await resp.aclose()
            if done is not None:
                done(resp.status_code)

    async def _failed(self, replica: ReplicaState, exc: Exception) -> Response:
        alive = await self.check(replica)
        why = "is not answering" if alive else f"died ({replica.dead})"
        return _error(502, f"replica {replica.index} {why}: {type(exc).__name__}",
                      "replica_failed", replica=replica)

    # ----------------------------------------------------------------- websocket
    async def relay_ws(self, ws: WebSocket) -> None:
        """Pipe a session WebSocket to one replica (it counts as a session there)."""
        import websockets

        try:
            replica = self.router.least_loaded()
        except NoReplicaError as exc:
            await ws.close(1013, str(exc)[:120])
            return
        headers = [(k, v) for k, v in ws.headers.items() if k.lower() == "authorization"]
        url = "ws" + replica.url.removeprefix("http") + "/v1/sessions/ws"
        key = f"ws-{id(ws)}"
        self.router.opened(key, replica)
        broken: Exception | None = None
        try:
            async with websockets.connect(url, additional_headers=headers,
                                          max_size=None) as upstream:
                await ws.accept()
                tasks = {asyncio.create_task(_pump_up(ws, upstream)),
                         asyncio.create_task(_pump_down(upstream, ws))}
                done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
                for t in pending:
                    t.cancel()
                broken = next((t.exception() for t in done if t.exception() is not None), None)
        except (OSError, websockets.WebSocketException) as exc:
            broken = exc
        finally:
            self.router.ended(key)
        if broken is not None:
            await self._ws_failed(ws, replica, broken)

    async def _ws_failed(self, ws: WebSocket, replica: ReplicaState, exc: Exception) -> None:
        """The replica's side broke: tell the client why (410 if the replica died)."""
        if await self.check(replica):
            err = error_body(502, f"replica {replica.index} connection failed: "
                             f"{type(exc).__name__}", None, "replica_failed")
        else:
            err = error_body(410, f"session lost: replica {replica.index} died ({replica.dead})",
                             None, "replica_died", "session_lost")
        with contextlib.suppress(Exception):
            if ws.client_state.name == "CONNECTING":
                await ws.accept()
            await ws.send_json({"type": "error", **err})
            await ws.close(1011)

    # ------------------------------------------------------------ health, metrics
    async def health(self) -> Response:
        await asyncio.gather(*(self.check(r) for r in self.router.live()))
        replicas = [{"index": r.index, "url": r.url, "alive": r.dead is None, "dead": r.dead,
                     "in_flight": r.in_flight, "sessions": len(r.sessions), "routed": r.routed}
                    for r in self.router.replicas]
        live = self.router.live()
        status = "ok" if len(live) == len(replicas) else "degraded" if live else "dead"
        return JSONResponse({"status": status, "replicas": replicas}, 200 if live else 503)

    async def metrics(self, request: Request) -> Response:
        headers = {k: v for k, v in request.headers.items() if k.lower() == "authorization"}

        async def scrape(r: ReplicaState) -> str:
            try:
                resp = await self.client.get(r.url + "/metrics", headers=headers, timeout=10)
                return resp.text if resp.status_code == 200 else ""
            except httpx.TransportError:
                return ""

        live = self.router.live()
        texts = await asyncio.gather(*(scrape(r) for r in live))
        lines = relabel([(r.index, t) for r, t in zip(live, texts, strict=True)])
        lines += ["# TYPE thinkstream_router_replica_alive gauge"]
        lines += [f'thinkstream_router_replica_alive{{replica="{r.index}"}} {int(r.dead is None)}'
                  for r in self.router.replicas]
        lines += ["# TYPE thinkstream_router_routed_total counter"]
        lines += [f'thinkstream_router_routed_total{{replica="{r.index}"}} {r.routed}'
                  for r in self.router.replicas]
        return Response("\n".join(lines) + "\n", media_type="text/plain; version=0.0.4")


def relabel(texts: Sequence[tuple[int, str]]) -> list[str]:
    """Prometheus text of several replicas as one: each sample gains ``replica="i"``;
    HELP / TYPE lines are kept once."""
    out, seen = [], set()
    for index, text in texts:
        for line in text.splitlines():
            if not line.strip():
                continue
            if line.startswith("#"):
                if line not in seen:
                    seen.add(line)
                    out.append(line)
                continue
            name, brace, rest = line.partition("{")
            if brace:
                out.append(f'{name}{{replica="{index}",{rest}')
            else:
                metric, _, value = line.partition(" ")
                out.append(f'{metric}{{replica="{index}"}} {value}')
    return out


async def _pump_up(ws: WebSocket, upstream) -> None:
    """Client -> replica until the client leaves (then the replica's socket closes)."""
    while True:
        msg = await ws.receive()
        if msg["type"] == "websocket.disconnect":
            return
        await upstream.send(msg["text"] if msg.get("text") is not None else msg["bytes"])


async def _pump_down(upstream, ws: WebSocket) -> None:
    """Replica -> client; a clean close of the replica's socket closes the client's (an
    abnormal one raises ``ConnectionClosedError``)."""
    async for frame in upstream:
        await (ws.send_text(frame) if isinstance(frame, str) else ws.send_bytes(frame))
    await ws.close()


def _json(body: bytes) -> object:
    try:
        return json.loads(body)
    except ValueError:
        return None


def create_router_app(proxy: ReplicaProxy) -> FastAPI:
    app = FastAPI(title="thinkstream router", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.proxy = proxy

    @app.get("/health")
    async def health() -> Response:
        return await proxy.health()

    @app.get("/metrics")
    async def metrics(request: Request) -> Response:
        return await proxy.metrics(request)

    @app.websocket("/v1/sessions/ws")
    async def session_ws(ws: WebSocket) -> None:
        await proxy.relay_ws(ws)

    @app.api_route("/{path:path}", methods=["GET", "POST", "PUT", "DELETE"])
    async def anything(request: Request, path: str) -> Response:
        return await proxy.handle(request)

    return app
