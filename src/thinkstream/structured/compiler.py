"""Constraints to grammars: a ``StructuredOutputsParams`` becomes an llguidance grammar,
validated against the model's tokenizer once and cached by the (frozen, hashable) params.

llguidance was chosen over xgrammar by measurement (``python -m thinkstream.bench.grammar``,
docs/benchmarks.md): it compiles a schema in about 1 ms where xgrammar takes 6-27 ms (a
cost every new schema pays before admission), its per-token masks (tens of microseconds)
hide under the forward pass, and it adds no dependencies (xgrammar needs transformers and
triton). The grammar text is what llguidance takes:

    json         the JSON schema (compact output: ``", "`` between items, ``": "`` after
                 keys, no other whitespace: free whitespace lets small models loop on it)
    json_object  the schema ``{"type": "object"}``
    regex        the regex (Rust ``regex`` syntax), matched against the whole output
    choice       one of the strings, exactly
    grammar      Lark, or GBNF / EBNF (``root ::= ...``) converted to Lark

A compiled grammar keeps one matcher at the start state, never advanced; every sequence
gets its own deep copy (microseconds; building a matcher takes hundreds).
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import llguidance

from thinkstream.sampling_params import StructuredOutputsParams

if TYPE_CHECKING:
    from thinkstream.loading import Tokenizer

JSON_OPTIONS = {"item_separator": ", ", "key_separator": ": ", "whitespace_flexible": False}
CACHE_SIZE = 256  # compiled grammars kept (least recently used dropped first)


class ConstraintError(ValueError):
    """A constraint that does not compile; ``field`` is the ``StructuredOutputsParams`` field
    at fault (``json``, ``json_object``, ``regex``, ``choice`` or ``grammar``)."""

    def __init__(self, field: str, message: str) -> None:
        # llguidance's panics carry a native backtrace (file paths of the build): keep
        # only the assertion, which is what the client may read
        message = message.split("<backtrace>", 1)[0].strip()
        super().__init__(f"{field}: {message}")
        self.field = field
        self.reason = message


def constraint_field(so: StructuredOutputsParams) -> str:
    """The one field ``so`` sets."""
    if so.json_object:
        return "json_object"
    return next(n for n in ("json", "regex", "choice", "grammar") if getattr(so, n) is not None)


def grammar_text(so: StructuredOutputsParams) -> str:
    """The llguidance grammar of a constraint (not validated yet); raises ``ConstraintError``
    for text that is not even of the right kind (a schema that is not a JSON object, a grammar
    that is neither Lark nor GBNF)."""
    field = constraint_field(so)
    try:
        if so.json is not None:
            return llguidance.LLMatcher.grammar_from_json_schema(so.json, overrides=JSON_OPTIONS)
        if so.json_object:
            return llguidance.LLMatcher.grammar_from_json_schema('{"type": "object"}',
                                                                  overrides=JSON_OPTIONS)
        if so.regex is not None:
            return llguidance.LLMatcher.grammar_from_regex(so.regex)
        if so.choice is not None:
            return llguidance.LLMatcher.grammar_from_lark(_choice_lark(so.choice))
        return llguidance.grammar_from("grammar", str(so.grammar))
    except (ValueError, TypeError) as exc:
        raise ConstraintError(field, str(exc)) from None


def _choice_lark(choices: Iterable[object]) -> str:
    if not all(isinstance(c, str) for c in choices):
        raise ValueError("choices must be strings")
    return "start: " + " | ".join(json.dumps(c) for c in choices)


@dataclass(frozen=True)
class CompiledGrammar:
    constraint: StructuredOutputsParams
    template: llguidance.LLMatcher  # at the start state; copied, never advanced

    def matcher(self) -> llguidance.LLMatcher:
        """A matcher of its own at the start state."""
        return self.template.deep_copy()


class GrammarCompiler:
    """Compiles constraints for one model's tokenizer, caching the results (thread-safe: the
    server compiles while validating a request, the engine thread copies matchers)."""

    def __init__(self, tokenizer: Tokenizer, vocab_size: int, eos_ids: Iterable[int],
                 cache_size: int = CACHE_SIZE) -> None:
        self.tokenizer = tokenizer
        # the mask width: the model's logits, or the tokenizer's ids if it has more
        self.vocab_size = max(vocab_size, tokenizer.vocab_size)
        self.eos_ids = sorted(eos_ids)
        self.cache_size = cache_size
        self._cache: OrderedDict[StructuredOutputsParams, CompiledGrammar] = OrderedDict()
        self._lock = threading.Lock()
        self._lltok: llguidance.LLTokenizer | None = None

    def lltokenizer(self) -> llguidance.LLTokenizer:
        """llguidance's view of the vocabulary (built on first use: ~0.35 s for 49k tokens)."""
        with self._lock:
            if self._lltok is None:
                self._lltok = llguidance.LLTokenizer(
                    self.tokenizer.backend.to_str(), n_vocab=self.vocab_size,
                    eos_token=self.eos_ids)
            return self._lltok

    def compile(self, so: StructuredOutputsParams) -> CompiledGrammar:
        """The compiled grammar of ``so`` (cached); raises ``ConstraintError``."""
        with self._lock:
            hit = self._cache.get(so)
            if hit is not None:
                self._cache.move_to_end(so)
                return hit
        compiled = self._compile(so)
        with self._lock:
            self._cache[so] = compiled
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return compiled

    def _compile(self, so: StructuredOutputsParams) -> CompiledGrammar:
        grammar = grammar_text(so)
        tok = self.lltokenizer()
        error = llguidance.LLMatcher.validate_grammar(grammar, tok)
        if error:
            raise ConstraintError(constraint_field(so), error.strip())
        template = llguidance.LLMatcher(tok, grammar, log_level=0)
        if template.is_error():
            raise ConstraintError(constraint_field(so), template.get_error().strip())
        # the first mask builds the lexer: pay for it here, not in an engine step
        template.compute_bitmask()
        return CompiledGrammar(so, template)

    def __len__(self) -> int:
        return len(self._cache)
