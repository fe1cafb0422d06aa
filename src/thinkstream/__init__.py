"""thinkstream: an LLM inference engine for streaming input and parallel generation."""

from thinkstream.config import EngineConfig, ModelConfig
from thinkstream.engine import LLMEngine, RequestError
from thinkstream.llm import LLM
from thinkstream.request import CompletionOutput, RequestOutput
from thinkstream.sampling_params import ParamError, SamplingParams

__all__ = [
    "LLM", "LLMEngine", "SamplingParams", "EngineConfig", "ModelConfig", "RequestOutput",
    "CompletionOutput", "RequestError", "ParamError",
]
__version__ = "0.1.0"
