"""Structured outputs: the output's text is held to a JSON schema, any JSON object, a regex,
a fixed choice or a grammar (``SamplingParams.structured_outputs``).

``compiler.py`` turns a ``StructuredOutputsParams`` into an llguidance grammar, validated
against the model's tokenizer and cached by the params (the server compiles while it
validates a request, so a bad schema is a 400 before admission); ``outputs.py`` is the
engine's step hook: one matcher per constrained sequence, its next-token mask computed on a
worker thread while the forward runs, advanced by each sampled token, dropped when the
request ends; ``mask.py`` applies packed token masks to logits (pure torch; the sampler
calls it).

Lazy: ``thinkstream.structured.mask`` imports without llguidance.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from thinkstream.lazy import lazy_exports

_EXPORTS = {"ConstraintError": "thinkstream.structured.compiler", "GrammarCompiler": "thinkstream.structured.compiler",
            "StructuredOutputs": "thinkstream.structured.outputs"}
__all__ = ["ConstraintError", "GrammarCompiler", "StructuredOutputs"]

if TYPE_CHECKING:
    from thinkstream.structured.compiler import ConstraintError, GrammarCompiler
    from thinkstream.structured.outputs import StructuredOutputs


__getattr__ = lazy_exports(__name__, _EXPORTS)
