"""Request side of the OpenAI routes: a completion's prompt forms as a list of prompts, and
a chat request's messages rendered to prompt ids by the model's chat template (the output
side is ``formatting``)."""

from __future__ import annotations

from thinkstream.server import protocol as P
from thinkstream.server.chat_tools import ToolPlan, template_messages
from thinkstream.server.errors import APIError


def split_prompts(prompt) -> list[str | list[int]]:
    """The four OpenAI prompt forms as a list of prompts (text or token ids)."""
    if isinstance(prompt, str):
        return [prompt]
    if prompt and all(isinstance(p, int) for p in prompt):
        return [list(prompt)]
    return list(prompt)


_RESERVED_TEMPLATE_KWARGS = ("messages", "tools", "documents", "add_generation_prompt",
                             "continue_final_message")


def render_chat(tokenizer, body: P.ChatCompletionRequest,
                allow_special_tokens_in_content: bool = False,
                plan: ToolPlan | None = None) -> list[int]:
    """The prompt ids of a chat request; special-token text in messages is plain text
    unless the operator allows it (``EngineConfig.allow_special_tokens_in_content``).
    ``plan`` says how the request's tools reach the template (``chat_tools``)."""
    if tokenizer.chat_template is None:
        raise APIError(400, "messages: this model has no chat template; use /v1/completions",
                       "messages", "no_chat_template")
    plan = plan or ToolPlan(None, None, "auto", None)
    kwargs = dict(body.chat_template_kwargs or {})
    for key in _RESERVED_TEMPLATE_KWARGS:
        if key in kwargs:
            raise APIError(400, f"chat_template_kwargs: {key!r} is set by the request's own "
                           "fields", "chat_template_kwargs", "invalid_value")
    if body.continue_final_message:
        if body.add_generation_prompt:
            raise APIError(400, "continue_final_message: needs add_generation_prompt=false",
                           "continue_final_message", "invalid_value")
        kwargs["continue_final_message"] = True
    if plan.template_tools:
        kwargs["tools"] = plan.template_tools
    if body.reasoning_effort is not None:  # as vLLM gives it to the template
        kwargs.setdefault("reasoning_effort", body.reasoning_effort)
        kwargs.setdefault("enable_thinking", body.reasoning_effort != "none")
    messages = template_messages(body.messages, plan)
    try:
        return tokenizer.encode_chat(
            messages, body.add_generation_prompt,
            allow_special_tokens_in_content=allow_special_tokens_in_content, **kwargs)
    except ValueError as exc:
        if str(exc).startswith("continue_final_message"):
            raise APIError(400, str(exc), "continue_final_message", "invalid_value") from None
        if str(exc).startswith("messages"):  # loading.chat_template.check_messages
            raise APIError(400, str(exc), "messages", "invalid_value") from None
        raise APIError(400, f"messages: the chat template rejected them ({type(exc).__name__})",
                       "messages", "invalid_value") from None
    except Exception as exc:  # noqa: BLE001 - a template that rejects these messages
        reason = type(exc).__name__
        raise APIError(400, f"messages: the chat template rejected them ({reason})",
                       "messages", "invalid_value") from None
