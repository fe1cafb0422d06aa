"""The execution core above the KV cache: requests and their sequences (``request``), the
scheduler and its priority policy, output processing (``output``, ``detokenize``), the
fixed points where features plug in (``hooks``) and the synchronous ``LLMEngine``
(``llm_engine``). The front-ends with features (``thinkstream.llm``, ``thinkstream.async_llm``)
sit above it.

Lazy: ``from thinkstream.engine import LLMEngine`` loads torch; ``thinkstream.engine.scheduler``
and ``thinkstream.engine.request`` import without it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from thinkstream.lazy import lazy_exports

_EXPORTS = {"LLMEngine": "thinkstream.engine.llm_engine",
            "RequestError": "thinkstream.engine.llm_engine"}
__all__ = ["LLMEngine", "RequestError"]

if TYPE_CHECKING:
    from thinkstream.engine.llm_engine import LLMEngine, RequestError


__getattr__ = lazy_exports(__name__, _EXPORTS)
