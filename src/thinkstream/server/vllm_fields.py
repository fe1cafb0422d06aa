"""vLLM's request fields beyond OpenAI's, on ``/v1/completions`` and ``/v1/chat/completions``:
the output options this server honours as vLLM's ``entrypoints/openai`` serving does, and
the fields it cannot honour, refused with a 400 naming them (a silently ignored sampling
field would change a user's results without telling them).

Honoured (formatting here, used by ``server.formatting``):

    prompt_logprobs             each prompt token's log-probability and the top k, per
                                position ``{token id: {logprob, rank, decoded_token}}``,
                                None for the first token (chat: top-level; completions: on
                                each choice); with ``stream`` only 0 is accepted, as vLLM
                                answers, and nothing is streamed; unset, ``echo`` asks for
                                them (k: completions' ``logprobs``, chat's ``top_logprobs``)
    return_tokens_as_token_ids  logprobs' ``token`` strings become ``"token_id:N"`` (the
                                request's value, else ``serve --return-tokens-as-token-ids``)
    return_token_ids            each choice's ``token_ids`` (streamed: each chunk's new ones)
                                and the prompt's ``prompt_token_ids`` (chat: top-level, on the
                                role chunks; completions: on each choice, its first chunk)
    echo (chat)                 the last message's content before the answer when its role
                                is the response's (``assistant``, or the last message's own
                                role with ``add_generation_prompt: false``)
    reasoning_effort (chat)     to the chat template, with ``enable_thinking`` (``effort !=
                                "none"``) unless ``chat_template_kwargs`` sets it
    truncation_side             ``right``: ``truncate_prompt_tokens`` keeps the first k
    include_reasoning (chat)    false: no ``reasoning_content`` (nor parallel ``paths``) in
                                messages or deltas; with a reasoning parser, no logprobs or
                                token ids either (they would spell the reasoning out)
    stream_options.continuous_usage_stats
                                with ``include_usage``: every chunk carries ``usage`` (the
                                choice's tokens so far)

Refused unless they hold vLLM's default (``refused_for``): beam search, ``bad_words``,
``allowed_token_ids``, ``logits_processors``, ``priority``, ...; on the other routes that
take the sampling fields (sessions, the Responses API) the output options above too, and
thinkstream's ``parallel`` (reasoning paths run on chat and completions only); a
session's open also refuses chat's ``tools``, ``echo`` and template options. Chat
also refuses OpenAI's audio output (``audio``, ``modalities`` other than ``["text"]``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

from pydantic import BaseModel

from thinkstream.engine.request import Logprob
from thinkstream.server import protocol as P
from thinkstream.server.errors import APIError

# field -> (the values that ask for nothing, what the server cannot do)
_BOTH: dict[str, tuple[tuple, str]] = {
    "use_beam_search": ((False,), "beam search is not supported"),
    "bad_words": (([],), "not supported (no banned-word processor)"),
    "allowed_token_ids": (([],), "not supported (no token allow-list)"),
    "logits_processors": (([],), "custom logits processors are not supported"),
    "vllm_xargs": (({},), "not supported (no custom logits processors)"),
    "priority": ((0,), "priority scheduling is not enabled (first come, first served)"),
    "guided_whitespace_pattern": ((), "not supported (JSON constraints use a fixed layout)"),
    "logprob_token_ids": (([],), "not supported"),
    "watermarking": ((False,), "not supported"),
    "repetition_detection": ((), "not supported"),
    "thinking_token_budget": ((-1,), "not supported"),
    "structured_outputs.whitespace_pattern": ((), "not supported (JSON constraints use a "
                                                  "fixed layout)"),
    "structured_outputs.disable_additional_properties": (
        (False,), "not supported (a schema's own additionalProperties applies)"),
}
REFUSED_COMPLETION = {
    **_BOTH,
    "prompt_embeds": ((), "not supported (the prompt is text or token ids)"),
    "add_special_tokens": ((True,), "only true is supported (the tokenizer's BOS is added)"),
}
REFUSED_CHAT = {
    **_BOTH,
    "chat_template": ((), "a request's own chat template is not accepted (the model's is used)"),
    "documents": ((), "not supported"),
    "add_special_tokens": ((False,), "only false is supported (the template writes them)"),
    "return_prompt_text": ((False,), "not supported"),
    # OpenAI's audio output (gpt-4o-audio): this server writes text only
    "audio": ((), "this server has no audio output (the model writes text only)"),
    "modalities": ((["text"],), 'this server has no audio output: only ["text"] is accepted'),
}
_ELSEWHERE = {  # sessions, the Responses API: sampling fields, but no such outputs
    **_BOTH,
    "prompt_logprobs": ((), "not supported on this route (chat or completions return them)"),
    "return_tokens_as_token_ids": ((False,), "not supported on this route"),
    "return_token_ids": ((False,), "not supported on this route"),
    "stream_options.continuous_usage_stats": ((False,), "not supported on this route"),
    # thinkstream's own: reasoning paths run on chat and completions requests only
    "parallel": ((), "reasoning paths are not supported on this route (chat completions "
                     "and completions take them)"),
}


_NO_CHAT_EXTRAS = "not supported on a session (its answer is the model's plain text; " \
    "chat completions take it)"
REFUSED_SESSION = {  # a session's open: chat's own options it cannot honour
    **_ELSEWHERE,
    "tools": (([],), _NO_CHAT_EXTRAS),
    "tool_choice": (("none", "auto"), _NO_CHAT_EXTRAS),
    "functions": (([],), _NO_CHAT_EXTRAS),
    "function_call": (("none", "auto"), _NO_CHAT_EXTRAS),
    "echo": ((False,), _NO_CHAT_EXTRAS),
    "add_generation_prompt": ((True,), _NO_CHAT_EXTRAS),
    "continue_final_message": ((False,), _NO_CHAT_EXTRAS),
    "chat_template_kwargs": (({},), _NO_CHAT_EXTRAS),
    "reasoning_effort": ((), _NO_CHAT_EXTRAS),
    "chat_template": ((), _NO_CHAT_EXTRAS),
}


def refused_for(model: type[BaseModel]) -> dict[str, tuple[tuple, str]]:
    """The fields a request body of ``model`` may not ask for (none for non-sampling bodies,
    unless the model lists its own as ``vllm_refused``)."""
    if hasattr(model, "vllm_refused"):
        return model.vllm_refused
    if issubclass(model, P.ChatCompletionRequest):
        return REFUSED_CHAT
    if issubclass(model, P.CompletionRequest):
        return REFUSED_COMPLETION
    return _ELSEWHERE if issubclass(model, P.SamplingRequest) else {}


def _is_default(value: object, defaults: tuple) -> bool:
    """``value`` asks for nothing: null, or one of ``defaults`` of the same kind (``0`` is
    not ``false``)."""
    return value is None or any(value == d and isinstance(value, bool) == isinstance(d, bool)
                                for d in defaults)


def refuse_unhonoured(obj: dict, refused: dict[str, tuple[tuple, str]]) -> None:
    """A 400 naming the first field of ``obj`` (a parsed request body) the server cannot
    honour, unless it holds the value that asks for nothing."""
    for name, (defaults, why) in refused.items():
        outer, _, inner = name.rpartition(".")  # "structured_outputs.whitespace_pattern"
        where = obj.get(outer) if outer else obj
        if isinstance(where, dict) and inner in where and not _is_default(where[inner], defaults):
            raise APIError(400, f"{name}: {why}", name, "unsupported")


def prompt_logprobs_check(value: int | None, stream: bool, max_logprobs: int) -> int | None:
    """``prompt_logprobs`` checked as vLLM checks it (with ``stream`` only 0), capped like
    ``logprobs``; the value the engine must compute (None when nothing is returned)."""
    if value is None:
        return None
    if not 0 <= value <= max_logprobs:
        raise APIError(400, f"prompt_logprobs: must be in [0, {max_logprobs}], got {value}",
                       "prompt_logprobs", "invalid_value")
    if stream and value > 0:
        raise APIError(400, "prompt_logprobs: not available when stream is true",
                       "prompt_logprobs", "invalid_value")
    return None if stream else value


def prompt_logprobs_k(body: P.CompletionRequest | P.ChatCompletionRequest,
                      max_logprobs: int) -> int | None:
    """The top k of the ``prompt_logprobs`` a response carries (None: none): the request's,
    else with ``echo`` (not streamed) vLLM's echo default, completions' ``logprobs`` or
    chat's ``top_logprobs`` (0 when unset)."""
    k = prompt_logprobs_check(body.prompt_logprobs, body.stream, max_logprobs)
    if body.prompt_logprobs is None and body.echo and not body.stream:
        k = body.logprobs if isinstance(body, P.CompletionRequest) else body.top_logprobs or 0
    return k


def prompt_logprobs_body(entries: list[dict[int, Logprob] | None] | None, prompt_ids: list[int],
                         k: int, decoded: Callable[[int], str]) -> list[dict | None]:
    """vLLM's ``prompt_logprobs`` for one prompt: per position, the prompt token's entry and
    the ``k`` most likely (rank <= k), keyed by token id, None for the first position;
    log-probabilities that are not finite become -9999.0 (JSON has no infinity)."""
    entries = list(entries or [None] * len(prompt_ids))
    out: list[dict | None] = []
    for tid, entry in zip(prompt_ids, entries, strict=False):
        if entry is None:
            out.append(None)
            continue
        out.append({str(t): {"logprob": max(lp.logprob, -9999.0), "rank": lp.rank,
                             "decoded_token": lp.decoded_token if lp.decoded_token is not None
                             else decoded(t)}
                    for t, lp in entry.items()
                    if t == tid or (lp.rank is not None and lp.rank <= k)})
    return out


def token_id_name(token_id: int) -> str:
    """vLLM's name of a token in logprobs with ``return_tokens_as_token_ids``."""
    return f"token_id:{token_id}"


def running_usage(prompt_tokens: int, completion_tokens: int) -> dict:
    """The ``usage`` of a chunk under ``continuous_usage_stats``: one choice's tokens so far."""
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def response_role(messages: list, add_generation_prompt: bool) -> str:
    """The role of a chat answer (vLLM's ``get_chat_request_role``): ``assistant`` with
    ``add_generation_prompt``, else the last message's own (the text continues it)."""
    return "assistant" if add_generation_prompt else messages[-1].role


def chat_echo(messages: list, add_generation_prompt: bool) -> str:
    """What ``echo`` puts before a chat answer (vLLM's rule): the last message's content
    when its role is the response's role (``response_role``: always without
    ``add_generation_prompt``), else nothing."""
    last = messages[-1]
    return last.text() if last.role == response_role(messages, add_generation_prompt) else ""


_REASONING = ("reasoning_content", "paths", "path")


def without_reasoning(body: dict) -> dict:
    """A chat response body with its messages' reasoning taken out (``include_reasoning:
    false``)."""
    for choice in body["choices"]:
        for key in _REASONING:
            choice["message"].pop(key, None)
    return body


async def chunks_without_reasoning(chunks: AsyncIterator[dict]) -> AsyncIterator[dict]:
    """Chat stream chunks with the reasoning deltas taken out; a chunk left with nothing to
    say (an empty delta, no logprobs, no finish reason) is not sent."""
    async for chunk in chunks:
        for choice in chunk["choices"]:
            delta = choice["delta"]
            said = bool(delta)
            for key in _REASONING:
                delta.pop(key, None)
            if said and not delta and choice.get("logprobs") is None \
                    and choice.get("finish_reason") is None and not choice.get("token_ids"):
                break
        else:
            yield chunk
