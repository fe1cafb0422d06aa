"""thinkstream: an LLM inference engine for streaming input and parallel generation."""

import os

# OpenMP threads that wait passively instead of spinning: on a machine shared with other
# jobs, spinning workers make every small op wait for a descheduled thread (measured on 2
# cores with one busy: decode fell from ~50 to under 1 token/s). Read when torch loads, so
# it only takes effect if thinkstream is imported first; set the variable to override.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from thinkstream.config import EngineConfig, ModelConfig  # noqa: E402
from thinkstream.engine import LLMEngine, RequestError  # noqa: E402
from thinkstream.llm import LLM  # noqa: E402
from thinkstream.request import CompletionOutput, RequestOutput  # noqa: E402
from thinkstream.sampling_params import ParamError, SamplingParams  # noqa: E402

__all__ = [
    "LLM", "LLMEngine", "SamplingParams", "EngineConfig", "ModelConfig", "RequestOutput",
    "CompletionOutput", "RequestError", "ParamError",
]
__version__ = "0.1.0"
