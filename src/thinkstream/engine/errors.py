"""``RequestError``: a request (or an input update) the engine refuses, before it changes
anything. The server turns it into a 400 naming ``param``."""

from __future__ import annotations


class RequestError(ValueError):
    """A request the engine refuses; ``param`` names the offending input."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param
