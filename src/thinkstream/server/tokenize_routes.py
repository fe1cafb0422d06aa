"""vLLM's tokenizer endpoints: ``POST /tokenize``, ``POST /detokenize``, ``GET
/tokenizer_info``, so a client such as lm-eval's ``local-completions`` counts tokens with
the server's own tokenizer and needs no local copy. Same API key as the other routes.

``/tokenize`` takes a ``prompt`` (``add_special_tokens``, default true: the BOS token the
model's tokenizer adds) or ``messages`` rendered by the chat template as chat completions
renders them (``add_generation_prompt``, ``continue_final_message``, ``tools``,
``chat_template_kwargs``), and answers ``{"count", "max_model_len", "tokens",
"token_strs"}`` (``token_strs`` only with ``return_token_strs``).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from thinkstream.server import protocol as P
from thinkstream.server.chat_tools import plan_tools
from thinkstream.server.errors import APIError
from thinkstream.server.openai_routes import (
    ERRORS,
    body_doc,
    check_model,
    parse_body,
    server_state,
    wrap_errors,
)
from thinkstream.server.prompts import render_chat

router = APIRouter()


class TokenizeRequest(P.StrictBody):
    model: P.Text | None = None
    prompt: P.Text | None = None
    messages: list[P.ChatMessage] | None = None
    add_special_tokens: bool | None = None  # default: true for a prompt, false for messages
    add_generation_prompt: bool = True
    continue_final_message: bool = False
    chat_template_kwargs: dict[str, Any] | None = None
    tools: list[P.ToolDef] | None = None
    return_token_strs: bool = False


class DetokenizeRequest(P.StrictBody):
    model: P.Text | None = None
    tokens: P.TokenIds


@router.post("/tokenize", openapi_extra=body_doc(TokenizeRequest), responses=ERRORS)
@wrap_errors
async def tokenize(request: Request) -> Response:
    """Token ids of a prompt or of chat messages, with the server's tokenizer."""
    state = server_state(request)
    body = await parse_body(request, TokenizeRequest)
    check_model(state, body.model)
    if (body.prompt is None) == (body.messages is None):
        raise APIError(400, "prompt or messages: give exactly one", "prompt", "invalid_value")
    ids, strs = await run_in_threadpool(_tokenize, state, body)  # megabytes take seconds
    return JSONResponse({"count": len(ids), "max_model_len": state.llm.engine.max_model_len,
                         "tokens": ids, "token_strs": strs})


def _tokenize(state, body: TokenizeRequest) -> tuple[list[int], list[str] | None]:
    tokenizer = state.llm.tokenizer
    if body.prompt is not None:
        ids = tokenizer.encode(body.prompt, add_special_tokens=body.add_special_tokens
                               is not False)
    else:
        chat = P.ChatCompletionRequest.model_validate(
            body.model_dump(include={"messages", "add_generation_prompt", "tools",
                                     "continue_final_message", "chat_template_kwargs"},
                            exclude_none=True), strict=False)
        plan = plan_tools(chat, tokenizer.chat_template, state.config.tool_prompt)
        ids = render_chat(tokenizer, chat,
                              state.llm.engine.config.allow_special_tokens_in_content, plan)
        if body.add_special_tokens and tokenizer.bos_token_id is not None \
                and ids[:1] != [tokenizer.bos_token_id]:
            ids = [tokenizer.bos_token_id, *ids]
    return ids, tokenizer.convert_ids_to_tokens(ids) if body.return_token_strs else None


@router.post("/detokenize", openapi_extra=body_doc(DetokenizeRequest), responses=ERRORS)
@wrap_errors
async def detokenize(request: Request) -> Response:
    """The text of token ids."""
    state = server_state(request)
    body = await parse_body(request, DetokenizeRequest)
    check_model(state, body.model)
    vocab = state.llm.tokenizer.vocab_size
    bad = next((t for t in body.tokens if not 0 <= t < vocab), None)
    if bad is not None:
        raise APIError(400, f"tokens: {bad} is not a token id of this model (0 to {vocab - 1})",
                       "tokens", "invalid_value")
    return JSONResponse({"prompt": await run_in_threadpool(state.llm.tokenizer.decode, body.tokens)})


@router.get("/tokenizer_info", responses=ERRORS)
async def tokenizer_info(request: Request) -> Response:
    """The tokenizer's special tokens, chat template and limits."""
    state = server_state(request)
    tok = state.llm.tokenizer
    eos = tok.special_tokens.get("eos_token")
    if eos is None and tok.eos_token_ids:
        eos = tok.decode([tok.eos_token_ids[0]])
    return JSONResponse({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": tok.special_tokens.get("bos_token"), "eos_token": eos,
        "pad_token": tok.special_tokens.get("pad_token"),
        "unk_token": tok.special_tokens.get("unk_token"),
        "bos_token_id": tok.bos_token_id, "eos_token_ids": list(tok.eos_token_ids),
        "vocab_size": tok.vocab_size, "model_max_length": state.llm.engine.max_model_len,
        "chat_template": tok.chat_template,
    })
