"""``SpeculativeConfig``: how an engine drafts and verifies tokens (``EngineConfig.speculative``,
``LLM(..., speculative=...)``, ``--speculative-method`` / ``--num-speculative-tokens``).

This module imports no torch.
"""

from __future__ import annotations

from dataclasses import dataclass

METHODS = ("ngram", "early_exit", "fused", "draft_model")
# default maxima: adaptive lengths stop where the measured step cost says (a long verbatim
# copy pays 16-32 drafts where a step may take that many rows: decoder.row_caps), a fixed
# length drafts this many always
ADAPTIVE_MAX_TOKENS = 32
FIXED_TOKENS = 5


@dataclass(frozen=True)
class SpeculativeConfig:
    """Speculative decoding settings; every field a user can set is checked here.

    ``method``: "ngram" (prompt lookup: the continuation of the latest earlier match of the
    last tokens), "early_exit" (the target's first ``early_exit_layer`` layers, then its
    final norm and LM head), "fused" (both; at each position the more confident draft),
    "draft_model" (``draft_model``, a smaller model with the target's tokenizer).
    ``num_speculative_tokens``: the most drafts per sequence and step (None: 32 when
    adaptive, where the measured cost of a step decides how many pay; 5 fixed). ``adaptive``: each
    request's length follows its recent acceptance and the batch's phase
    (``speculative.adaptive``); False drafts ``num_speculative_tokens`` whenever a proposer
    has them. ``compute_bound_tokens``: the tokens per step past which a step costs about
    as much again as an empty one (the batch's knee); the cost of a draft token rises
    with the batch toward it, so a large batch drafts less (None: measured as the engine
    runs, from each forward's time against its tokens, ``adaptive.StepCost``; 16 until the
    fit is usable). ``ngram_min`` /
    ``ngram_max``: the match lengths prompt lookup tries, longest first.
    ``early_exit_layer``: None = a quarter of the layers (``bench speculative
    --choose-layer`` measures the best one).
    """

    method: str = "ngram"
    num_speculative_tokens: int | None = None  # resolved in __post_init__
    adaptive: bool = True
    compute_bound_tokens: int | None = None
    ngram_min: int = 2
    ngram_max: int = 4
    early_exit_layer: int | None = None
    probe_interval: int = 16  # steps between probes of a request whose length fell to 0
    # method "draft_model": a model file / alias sharing the target's tokenizer (or a
    # LoadedCheckpoint, for tests); its KV lives in the target's block pool
    draft_model: object = None

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"speculative method must be one of {', '.join(METHODS)}, "
                             f"got {self.method!r}")
        if self.num_speculative_tokens is None:  # frozen: resolve the default once
            object.__setattr__(self, "num_speculative_tokens",
                               ADAPTIVE_MAX_TOKENS if self.adaptive else FIXED_TOKENS)
        if not 1 <= self.num_speculative_tokens <= 64:
            raise ValueError("num_speculative_tokens must be in 1..64")
        if self.compute_bound_tokens is not None and self.compute_bound_tokens < 1:
            raise ValueError("compute_bound_tokens must be >= 1")
        if not 1 <= self.ngram_min <= self.ngram_max:
            raise ValueError("ngram_min and ngram_max must satisfy 1 <= ngram_min <= ngram_max")
        if self.early_exit_layer is not None and self.early_exit_layer < 1:
            raise ValueError("early_exit_layer must be >= 1")
        if self.probe_interval < 1:
            raise ValueError("probe_interval must be >= 1")
        if (self.method == "draft_model") != (self.draft_model is not None):
            raise ValueError("draft_model is needed with method draft_model (and only then)")

    @property
    def knee(self) -> int:
        return self.compute_bound_tokens or 16

    @classmethod
    def coerce(cls, value: SpeculativeConfig | dict | str | None) -> SpeculativeConfig | None:
        """A config from what a caller passed: itself, a dict of fields, a method name."""
        if value is None or isinstance(value, SpeculativeConfig):
            return value
        if isinstance(value, str):
            return cls(method=value)
        if isinstance(value, dict):
            unknown = set(value) - set(cls.__dataclass_fields__)
            if unknown:
                raise ValueError(f"speculative: unknown field(s) {', '.join(sorted(unknown))}")
            return cls(**value)
        raise ValueError(f"speculative must be a SpeculativeConfig, a dict or a method name, "
                         f"got {type(value).__name__}")
