"""Errors of session operations; each names the parameter at fault and, for conflicts, the
sequence number the session expects next (the HTTP layer turns them into 404 / 409)."""

from __future__ import annotations


class SessionError(ValueError):
    """A session operation the engine refuses (HTTP 400 unless a subclass says otherwise)."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class SessionNotFoundError(SessionError):
    """No such session (never opened, or forgotten long after it ended)."""


class SessionConflictError(SessionError):
    """The request does not fit the session's state; ``expected_seq`` is the next number."""

    def __init__(self, message: str, expected_seq: int, param: str | None = "seq") -> None:
        super().__init__(message, param)
        self.expected_seq = expected_seq


class SequenceGapError(SessionConflictError):
    """A chunk numbered past the next expected one: an earlier chunk is missing."""


class SessionClosedError(SessionConflictError):
    """Input sent to a session whose input is closed (answered, aborted or timed out)."""


class SessionLimitError(SessionError):
    """A session limit refused the request; ``status`` is the HTTP status to answer."""

    def __init__(self, message: str, param: str | None, code: str, status: int = 400) -> None:
        super().__init__(message, param)
        self.code = code
        self.status = status


class SessionTooLongError(SessionLimitError):
    """The session's input (at close, with the chat template's end) exceeds the session's
    token limit, or with the answer's ``max_tokens`` the KV pool: HTTP 413. Raised by the
    open, append or replace that makes it so (that update changes nothing) and by close."""

    def __init__(self, message: str) -> None:
        super().__init__(message, "input", "session_tokens_exceeded", 413)
