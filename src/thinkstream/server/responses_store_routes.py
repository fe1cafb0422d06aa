"""Stored Responses API responses read back, as OpenAI serves them (``responses_store``):

- ``GET /v1/responses/{id}``: the response object (the one its create returned, or for a
  background one its state now); with ``stream=true`` a streamed background response's
  events after ``starting_after`` (the SDK's ``responses.retrieve(id, stream=True)``);
- ``DELETE /v1/responses/{id}``: forgets it (aborting it if it still runs);
  ``{"id", "object": "response", "deleted": true}``;
- ``GET /v1/responses/{id}/input_items``: its request's input items as an OpenAI list
  (``order`` ``desc`` by default, ``after`` an item id, ``limit`` 1 to 100, default 20).

Only the API key that made a response reaches it: another key's id is a 404, as an unknown
or forgotten one (``Response with id '...' not found.``).
"""

from __future__ import annotations

import re

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from thinkstream.server.auth import request_owner
from thinkstream.server.errors import APIError
from thinkstream.server.openai_routes import ERRORS, server_state
from thinkstream.server.responses_background import tail
from thinkstream.server.responses_store import StoredResponse

router = APIRouter()


def _stored(request: Request, response_id: str) -> StoredResponse:
    entry = server_state(request).store.get((request_owner(request.scope), response_id))
    if entry is None:
        raise APIError(404, f"Response with id '{response_id}' not found.", None, None,
                       type="invalid_request_error")
    return entry


def _query(request: Request, name: str, default: str) -> str:
    return request.query_params.get(name, default)


def _query_int(request: Request, name: str, default: int) -> int:
    text = _query(request, name, str(default))
    if re.fullmatch(r"-?[0-9]{1,18}", text) is None:
        raise APIError(400, f"{name}: must be an integer, got {text[:40]!r}", name,
                       "invalid_type")
    return int(text)


def _choice(request: Request, name: str, default: str, choices: tuple[str, ...]) -> str:
    value = _query(request, name, default).lower()
    if value not in choices:
        raise APIError(400, f"{name}: must be one of {', '.join(choices)}, got "
                       f"{value[:40]!r}", name, "invalid_value")
    return value


@router.get("/v1/responses/{response_id}", responses=ERRORS)
async def retrieve_response(request: Request, response_id: str) -> Response:
    """The stored response; ``stream=true``: its events (a background response created with
    ``stream``) after ``starting_after``, those still to come as they come."""
    entry = _stored(request, response_id)
    if _choice(request, "stream", "false", ("true", "false")) == "false":
        return JSONResponse(entry.body)
    after = _query_int(request, "starting_after", -1)
    if entry.events is None:
        raise APIError(400, "stream: only a response created with background and stream can "
                       "be streamed again", "stream", "invalid_value")
    return StreamingResponse(tail(entry, after), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache"})


@router.delete("/v1/responses/{response_id}", responses=ERRORS)
async def delete_response(request: Request, response_id: str) -> Response:
    """Forget a stored response; one still running is aborted."""
    state, key = server_state(request), (request_owner(request.scope), response_id)
    _stored(request, response_id)
    state.store.pop(key)
    job = state.live.get(key)
    if job is not None:
        await job.cancel()
    return JSONResponse({"id": response_id, "object": "response", "deleted": True})


@router.get("/v1/responses/{response_id}/input_items", responses=ERRORS)
async def list_input_items(request: Request, response_id: str) -> Response:
    """The input items of a stored response's request, a page at a time."""
    items = _stored(request, response_id).input_items
    order = _choice(request, "order", "desc", ("asc", "desc"))
    after, limit = request.query_params.get("after"), _query_int(request, "limit", 20)
    if not 1 <= limit <= 100:
        raise APIError(400, f"limit: must be in [1, 100], got {limit}", "limit", "invalid_value")
    items = items if order == "asc" else items[::-1]
    start = 0
    if after is not None:
        start = next((i + 1 for i, item in enumerate(items) if item["id"] == after), -1)
        if start < 0:
            raise APIError(400, f"after: no input item with id {after!r} in this response",
                           "after", "invalid_value")
    page = items[start:start + limit]
    return JSONResponse({"object": "list", "data": page,
                         "first_id": page[0]["id"] if page else None,
                         "last_id": page[-1]["id"] if page else None,
                         "has_more": start + limit < len(items)})
