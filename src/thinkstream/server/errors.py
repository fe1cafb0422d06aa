"""OpenAI-style error bodies, and the exception handlers that turn every failure into one.

Every error the server answers has the shape OpenAI clients parse::

    {"error": {"message": str, "type": str, "param": str | null, "code": str | null}}

Messages are built from our own text only (never an exception's ``repr`` or a traceback),
so they cannot leak a file path, and they are capped so a body stays well under 32 KB.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Iterator

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from thinkstream.async_llm import EngineDeadError
from thinkstream.engine.llm_engine import RequestError
from thinkstream.sampling_params import ParamError

log = logging.getLogger("thinkstream.server")
MAX_MESSAGE_CHARS = 2000

_TYPES = {
    400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
    405: "invalid_request_error", 413: "invalid_request_error", 415: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error", 503: "service_unavailable",
}


class APIError(Exception):
    """An error answered to the client as is."""

    def __init__(self, status: int, message: str, param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None,
                 type: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.headers, self.type = headers, type

    def body(self) -> dict:
        return error_body(self.status, self.message, self.param, self.code, self.type)


def error_body(status: int, message: str, param: str | None = None,
               code: str | None = None, type: str | None = None) -> dict:
    """``type`` defaults to the status's (OpenAI answers some 404s, an unknown model's,
    as ``invalid_request_error``)."""
    message = message if len(message) <= MAX_MESSAGE_CHARS else message[:MAX_MESSAGE_CHARS] + "..."
    return {"error": {"message": message,
                      "type": type or _TYPES.get(status, "invalid_request_error"),
                      "param": param, "code": code}}


def error_response(status: int, message: str, param: str | None = None, code: str | None = None,
                   headers: dict[str, str] | None = None, type: str | None = None) -> JSONResponse:
    return JSONResponse(error_body(status, message, param, code, type), status, headers=headers)


def to_api_error(exc: BaseException) -> APIError:
    """Map any exception to what the client is told (unknown ones become a bare 500)."""
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, ParamError | RequestError):
        return APIError(400, str(exc), exc.param, "invalid_value")
    if isinstance(exc, EngineDeadError):
        cause = exc.__cause__  # a failure safe to name (a tensor-parallel rank died)
        reason = f": {cause}" if getattr(cause, "public_reason", False) else ""
        return APIError(500, f"the engine failed while serving this request{reason}", None,
                        "engine_error")
    log.error("internal error: %s", type(exc).__name__, exc_info=exc)
    return APIError(500, "internal server error", None, "internal_error")


@contextlib.contextmanager
def field_names(names: dict[str, str]) -> Iterator[None]:
    """Report a refusal in the names the client sent: the chat pipeline checks
    ``max_tokens`` and ``messages``, while a client may have sent ``max_completion_tokens``
    (chat) or ``max_output_tokens`` and ``input`` (the Responses API)."""
    try:
        yield
    except (ParamError, RequestError, APIError) as exc:
        err = to_api_error(exc)
        name = names.get(err.param or "")
        if name is None:
            raise
        message = re.sub(rf"\b{re.escape(err.param)}\b", name, err.message)
        raise APIError(err.status, message, name, err.code, err.headers, err.type) from None


def install_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api(_: Request, exc: APIError) -> JSONResponse:
        return JSONResponse(exc.body(), exc.status, headers=exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = exc.detail if isinstance(exc.detail, str) else "request refused"
        if exc.status_code == 404 and message == "Not Found":  # no such route: OpenAI's words
            url = f"{request.method} {request.url.path[:200]}"
            return error_response(404, f"Invalid URL ({url})", None, None, exc.headers,
                                  type="invalid_request_error")
        return error_response(exc.status_code, message, None, None, exc.headers)

    @app.exception_handler(Exception)
    async def _any(_: Request, exc: Exception) -> JSONResponse:
        err = to_api_error(exc)
        return error_response(err.status, err.message, err.param, err.code)
