"""The execution core above the KV cache: requests and their sequences (``request``), the
scheduler and its priority policy, output processing (``output``, ``detokenize``), the
fixed points where features plug in (``hooks``) and the synchronous ``LLMEngine``
(``llm_engine``). The front-ends with features (``thinkstream.llm``, ``thinkstream.async_llm``)
sit above it.

Lazy: ``from thinkstream.engine import LLMEngine`` loads torch; ``thinkstream.engine.scheduler``
and ``thinkstream.engine.request`` import without it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

_EXPORTS = {"LLMEngine": "llm_engine", "RequestError": "llm_engine"}
__all__ = ["LLMEngine", "RequestError"]

if TYPE_CHECKING:
    from thinkstream.engine.llm_engine import LLMEngine, RequestError


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'thinkstream.engine' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"thinkstream.engine.{_EXPORTS[name]}"), name)
    globals()[name] = value
    return value
