"""The session API's message shapes and the plumbing its HTTP routes and WebSocket share:
request bodies (open, input, close, thinking), the session and acknowledgement bodies,
the arguments an open turns into, and an answer stream as (choice, output) pairs."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import asdict
from typing import ClassVar

from thinkstream.engine.request import RequestOutput
from thinkstream.server import formatting as fmt
from thinkstream.server import protocol as P
from thinkstream.server.chat_tools import ToolPlan, template_messages
from thinkstream.server.errors import APIError
from thinkstream.server.openai_routes import chat_params, check_model
from thinkstream.server.vllm_fields import REFUSED_SESSION
from thinkstream.streaming.sessions import SessionInfo, UpdateResult


class SessionThinking(P.StrictBody):
    """Think while reading (``thinking.ThinkConfig``): notes on each input unit while the
    input streams, reported as ``reasoning_content`` deltas."""

    layout: str = "gap"
    gap: int = 48
    depth: str = "D1"
    unit: str = "sentence"
    note_tokens: int = 24
    pass_tokens: int = 64
    max_reasoning_tokens: int = 512
    answer_request: str | None = None  # None: ThinkConfig's default; "": none
    fold_last_unit: bool = True

    def config(self):
        from thinkstream.thinking import Layout, ThinkConfig, UnitPolicy

        extra = {} if self.answer_request is None else {"answer_request": self.answer_request}
        try:
            return ThinkConfig(layout=Layout(self.layout, self.gap), units=UnitPolicy(self.unit),
                               depth=self.depth, note_tokens=self.note_tokens,
                               pass_tokens=self.pass_tokens,
                               max_reasoning_tokens=self.max_reasoning_tokens,
                               fold_last_unit=self.fold_last_unit, **extra)
        except ValueError as exc:
            raise APIError(400, f"thinking: {exc}", "thinking", "invalid_value") from None


class SessionCreateRequest(P.SamplingRequest):
    """``POST /v1/sessions``: ``prompt`` (text or token ids received so far) or ``messages``
    (the streamed text becomes a new user message after them; ``prompt`` is its start).
    Chat's tools, ``echo`` and template options are refused (``REFUSED_SESSION``), never
    silently ignored."""

    vllm_refused: ClassVar[dict] = REFUSED_SESSION

    prompt: P.Text | P.TokenIds | None = None
    messages: list[P.ChatMessage] | None = None
    thinking: SessionThinking | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    logprobs: bool = False
    top_logprobs: int | None = None


class SessionInputRequest(P.StrictBody):
    """An append, or (``PUT .../input``) the whole new input."""

    text: P.Text | None = None
    token_ids: P.TokenIds | None = None
    seq: int | None = None

    def data(self) -> str | list[int]:
        if (self.text is None) == (self.token_ids is None):
            raise APIError(400, "text or token_ids: give exactly one", "text", "invalid_value")
        return self.text if self.text is not None else self.token_ids  # type: ignore[return-value]


class SessionCloseRequest(P.StrictBody):
    """A close, optionally with a last chunk (``text`` or ``token_ids``, numbered ``seq``;
    the close takes the next number): computed in the answer's first step."""

    vllm_refused: ClassVar[dict] = {  # ``vllm_fields.refused_for``: not on a close's stream
        "stream_options.continuous_usage_stats": ((False,), "not supported on a session")}
    stream: bool = False
    stream_options: P.StreamOptionsField = None
    seq: int | None = None
    text: P.Text | None = None
    token_ids: P.TokenIds | None = None

    def data(self) -> str | list[int] | None:
        if self.text is not None and self.token_ids is not None:
            raise APIError(400, "text or token_ids: give at most one", "text", "invalid_value")
        return self.text if self.text is not None else self.token_ids


# ------------------------------------------------------------------ plumbing
def session_body(info: SessionInfo) -> dict:
    """A session's state as JSON; ``created`` (integer) and ``last_activity`` in Unix
    seconds, as OpenAI's objects give times (the engine keeps monotonic ones)."""
    d = asdict(info)
    to_unix = time.time() - time.monotonic()
    d["created"] = int(d["created"] + to_unix)
    d["last_activity"] = round(d["last_activity"] + to_unix, 3)
    return {"id": d.pop("session_id"), "object": "session", **d}


def ack_body(r: UpdateResult) -> dict:
    return {"id": r.session_id, "object": "session.ack", "seq": r.seq, "duplicate": r.duplicate,
            "next_seq": r.next_seq, "tokens_received": r.tokens_received,
            "tokens_kept": r.tokens_kept, "tokens_added": r.tokens_added}


def open_args(state, body: SessionCreateRequest):
    check_model(state, body.model)
    params, logprobs = chat_params(state, body)
    messages = None
    if body.messages is not None:
        if state.llm.tokenizer.chat_template is None:
            raise APIError(400, "messages: this model has no chat template; stream a prompt",
                           "messages", "no_chat_template")
        # as a chat request without tools renders them: legacy function turns as tool turns,
        # calls and results written as text (``chat_tools.template_messages``)
        messages = template_messages(body.messages, ToolPlan(None, None, "auto", None))
    return body.prompt, messages, params, logprobs


async def output_pairs(stream: AsyncIterator[RequestOutput], view: fmt.ChatView):
    async for out in stream:
        view.num_prompt_tokens = len(out.prompt_token_ids)
        yield 0, out
