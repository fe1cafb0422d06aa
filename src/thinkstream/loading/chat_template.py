"""Chat templates rendered the way Hugging Face transformers renders them.

Same sandbox (``ImmutableSandboxedEnvironment``, ``trim_blocks`` and ``lstrip_blocks``), same
globals (``raise_exception``, ``strftime_now``, ``dict``, a ``namespace`` that refuses
underscore names), same ``tojson`` filter (no HTML escaping, ``ensure_ascii=False``), the
``{% generation %}`` tag as a pass-through, and the same variables: ``messages``, ``tools``,
``documents``, ``add_generation_prompt``, the named special tokens, then caller kwargs.
"""

from __future__ import annotations

import copy
import json
from datetime import datetime
from functools import lru_cache
from typing import Any

import jinja2
import jinja2.ext
import jinja2.nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment

from thinkstream.loading.errors import CorruptModelError

# Older names of a message's reasoning; templates read the first, gpt-oss ones read "thinking".
_REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")


class NoChatTemplateError(ValueError):
    """The model ships no chat template; pass plain text prompts instead."""


class _GenerationTag(jinja2.ext.Extension):
    """``{% generation %}...{% endgeneration %}`` marks assistant text; rendering ignores it."""

    tags = {"generation"}

    def parse(self, parser: Any) -> jinja2.nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

    def _body(self, caller: Any) -> str:
        return caller()


class _Namespace(jinja2.utils.Namespace):
    """``namespace()`` that refuses underscore-prefixed attributes (no reach into internals)."""

    def __init__(*args: Any, **kwargs: Any) -> None:  # noqa: N805 - jinja's own signature trick
        self, rest = args[0], args[1:]
        attrs = dict(*rest, **kwargs)
        for name in attrs:
            _check_name(name)
        jinja2.utils.Namespace.__init__(self, attrs)

    def __setitem__(self, name: str, value: Any) -> None:
        _check_name(name)
        jinja2.utils.Namespace.__setitem__(self, name, value)


def _check_name(name: Any) -> None:
    if isinstance(name, str) and name.startswith("_"):
        raise jinja2.exceptions.SecurityError(f"chat templates cannot set attribute {name!r}")


def _raise_exception(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def _tojson(x: Any, ensure_ascii: bool = False, indent: int | None = None,
            separators: Any = None, sort_keys: bool = False) -> str:
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                      sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


class _Dict:
    def __call__(self, *args: Any, **kwargs: Any) -> dict:
        return dict(*args, **kwargs)

    def fromkeys(self, *args: Any, **kwargs: Any) -> dict:
        return dict.fromkeys(*args, **kwargs)


@lru_cache(maxsize=16)
def compile_template(source: str) -> jinja2.Template:
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[_GenerationTag, jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = _tojson
    env.globals.update(raise_exception=_raise_exception, strftime_now=_strftime_now,
                       dict=_Dict(), namespace=_Namespace)
    return env.from_string(source)


def checked_template(source: str | None, where: str) -> str | None:
    """``source`` if it compiles (None passes); else ``CorruptModelError`` naming ``where``
    (the file that holds it), raised at load instead of a jinja traceback at the first chat."""
    if source is not None:
        try:
            compile_template(source)
        except jinja2.TemplateSyntaxError as err:
            raise CorruptModelError(f"{where}: invalid chat template (line {err.lineno}: "
                                    f"{err.message})") from err
    return source


def _alias_reasoning(message: dict) -> dict:
    reasoning = next((message[k] for k in _REASONING_FIELDS if message.get(k) is not None), None)
    if reasoning is None:
        return message
    return {"thinking": reasoning, **message, "reasoning_content": reasoning}


def final_message_end(rendered: str, messages: list[dict]) -> int:
    """Where ``rendered`` is cut to continue the last message (``continue_final_message``):
    just after that message's text, found from the end (as transformers finds it; a
    template that trims the text is matched on the trimmed text)."""
    content = messages[-1].get("content") if messages else None
    if isinstance(content, list | tuple):
        texts = [p["text"] for p in content if isinstance(p, dict) and "text" in p]
        content = texts[-1] if texts else None
    if not isinstance(content, str):
        raise ValueError("continue_final_message: the last message has no text to continue")
    core = content.strip()
    at = rendered.rfind(core)
    if at < 0:
        raise ValueError("continue_final_message: the chat template does not write the last "
                         "message's text as given")
    whole = content.lstrip()
    return at + (len(whole) if rendered.startswith(whole, at) else len(core))


def check_messages(messages: list[dict]) -> None:
    """A conversation a template can render: at least one message, each a dict with a
    ``role`` string and ``content`` (an assistant turn may carry ``tool_calls`` instead, as
    OpenAI's API allows). Raises TypeError (not a dict) or ValueError naming
    ``messages[i]``."""
    if not messages:
        raise ValueError("messages: must not be empty")
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise TypeError(f"chat messages must be dicts, got {message!r}")
        if not isinstance(message.get("role"), str):
            raise ValueError(f"messages[{i}].role: required (a string)")
        if message.get("content") is None and not (message["role"] == "assistant"
                                                   and message.get("tool_calls")):
            raise ValueError(f"messages[{i}].content: required (role {message['role']!r})")


def render_chat(
    source: str,
    messages: list[dict],
    add_generation_prompt: bool,
    special_tokens: dict[str, str],
    tools: list[dict] | None = None,
    documents: list[dict] | None = None,
    **kwargs: Any,
) -> str:
    """Render one conversation. ``special_tokens`` maps e.g. ``bos_token`` to its text.
    ``continue_final_message=True`` (with ``add_generation_prompt=False``) ends the text
    inside the last message, so the model continues it (an assistant prefill)."""
    check_messages(messages)
    continue_final = bool(kwargs.pop("continue_final_message", False))
    if continue_final and add_generation_prompt:
        raise ValueError("continue_final_message and add_generation_prompt cannot both be set")
    chat = [_alias_reasoning(m) for m in copy.deepcopy(messages)]
    variables = {**special_tokens, **kwargs}
    text = compile_template(source).render(
        messages=chat, tools=copy.deepcopy(tools), documents=copy.deepcopy(documents),
        add_generation_prompt=add_generation_prompt, **variables,
    )
    return text[: final_message_end(text, messages)] if continue_final else text
