"""thinkstream: an LLM inference engine for streaming input and parallel generation.

The package is lazy: ``from thinkstream import LLM`` loads the engine (and torch) on first
use, so ``thinkstream.kv`` and ``thinkstream.engine.scheduler`` import without torch.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from thinkstream.lazy import lazy_exports

# OpenMP threads that wait passively instead of spinning: on a machine shared with other
# jobs, spinning workers make every small op wait for a descheduled thread (measured on 2
# cores with one busy: decode fell from ~50 to under 1 token/s). Read when torch loads, so
# it only takes effect if thinkstream is imported first; set the variable to override.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

_EXPORTS = {
    "LLM": "thinkstream.llm", "LLMEngine": "thinkstream.engine.llm_engine",
    "RequestError": "thinkstream.engine.llm_engine", "SamplingParams": "thinkstream.sampling_params",
    "ParamError": "thinkstream.sampling_params", "EngineConfig": "thinkstream.config",
    "ModelConfig": "thinkstream.config", "RequestOutput": "thinkstream.engine.request",
    "CompletionOutput": "thinkstream.engine.request", "Logprob": "thinkstream.engine.request",
    "SpeculativeConfig": "thinkstream.speculative.config",
}
__all__ = [
    "LLM", "LLMEngine", "SamplingParams", "EngineConfig", "ModelConfig", "RequestOutput",
    "CompletionOutput", "Logprob", "RequestError", "ParamError", "SpeculativeConfig",
]
__version__ = "0.1.0"

if TYPE_CHECKING:
    from thinkstream.config import EngineConfig, ModelConfig
    from thinkstream.engine.llm_engine import LLMEngine, RequestError
    from thinkstream.engine.request import CompletionOutput, Logprob, RequestOutput
    from thinkstream.llm import LLM
    from thinkstream.sampling_params import ParamError, SamplingParams
    from thinkstream.speculative.config import SpeculativeConfig


__getattr__ = lazy_exports(__name__, _EXPORTS)
