"""The web playground: ``GET /`` serves a page (``static/``: HTML, three JavaScript modules,
one style sheet; no CDN, no build step) that talks to this server through its public API only: chat
completions (streamed), the session WebSocket for streaming input, ``/v1/models``,
``/health`` and ``/metrics``.

The files are read from the package once, at app creation, and served from memory under
fixed names (``PATHS``): nothing a client sends becomes a file path. They need no API key
(the page asks for one and keeps it in the browser's local storage); every API call the
page makes does.
"""

from __future__ import annotations

from importlib import resources

from fastapi import APIRouter
from fastapi.responses import Response

_FILES = {  # URL path -> (file in static/, media type)
    "/": ("index.html", "text/html; charset=utf-8"),
    "/playground/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/playground/api.js": ("api.js", "text/javascript; charset=utf-8"),
    "/playground/stream.js": ("stream.js", "text/javascript; charset=utf-8"),
    "/playground/style.css": ("style.css", "text/css; charset=utf-8"),
}
PATHS = frozenset(_FILES)  # open to a GET without a key (auth.ApiKeyMiddleware)
_HEADERS = {
    "Cache-Control": "no-cache",
    "X-Content-Type-Options": "nosniff",
    # Only this server's own scripts, styles and API (no inline script, no third party).
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
}


def playground_router() -> APIRouter:
    """The routes of the playground's files (kept out of the OpenAPI schema)."""
    static = resources.files("thinkstream.server") / "static"
    router = APIRouter(include_in_schema=False)
    for path, (name, media) in _FILES.items():
        body = (static / name).read_bytes()
        router.add_api_route(path, _responder(body, media), methods=["GET"])
    return router


def _responder(body: bytes, media: str):
    async def serve() -> Response:
        return Response(body, media_type=media, headers=_HEADERS)

    return serve
