"""A sequence being generated, and the outputs handed back to callers.

The scheduler's one principle lives here: a sequence has ``num_tokens`` (prompt + output
so far) and ``num_computed_tokens`` (those whose KV is in the cache). Each step computes
some of the difference; when the two meet, the next token is sampled.

    token_ids: | prompt ............................ | output ...... |
               | computed (KV cached)     | to compute this step / later |
                                          ^ num_computed_tokens         ^ num_tokens
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from thinkstream.sampling_params import SamplingParams


class SeqStatus(enum.IntEnum):
    """Ordered so that ``status >= FINISHED_STOPPED`` means finished."""

    WAITING = 0
    RUNNING = 1
    FINISHED_STOPPED = 2
    FINISHED_LENGTH = 3
    FINISHED_ABORTED = 4
    FINISHED_ERROR = 5

    @property
    def finished(self) -> bool:
        return self >= SeqStatus.FINISHED_STOPPED

    @property
    def finish_reason(self) -> str | None:
        return {
            SeqStatus.FINISHED_STOPPED: "stop",
            SeqStatus.FINISHED_LENGTH: "length",
            SeqStatus.FINISHED_ABORTED: "abort",
            SeqStatus.FINISHED_ERROR: "error",
        }.get(self)


@dataclass(frozen=True)
class TokenLogprob:
    """The engine's record of one position (turned into ``Logprob`` dicts for callers)."""

    token_id: int
    logprob: float
    top: tuple[tuple[int, float], ...]  # (token id, logprob), best first
    rank: int = 1  # of ``token_id`` among all tokens (its place in ``top`` if there)


@dataclass
class Logprob:
    """One token's log-probability at a position, as vLLM reports it: ``rank`` 1 is the
    most likely token; ``decoded_token`` is the token decoded alone."""

    logprob: float
    rank: int | None = None
    decoded_token: str | None = None


# vLLM's shapes: per position, the chosen token first, then the top tokens by rank
SampleLogprobs = list[dict[int, Logprob]]
PromptLogprobs = list[dict[int, Logprob] | None]  # None for the first prompt token


@dataclass(eq=False)
class Sequence:
    """One output stream of a request (a request with n > 1 has n sequences)."""

    seq_id: str
    request_id: str
    index: int
    token_ids: list[int]
    num_prompt_tokens: int
    params: SamplingParams
    generator: torch.Generator
    max_tokens: int  # resolved: params.max_tokens or what the context leaves
    arrival_time: float = field(default_factory=time.monotonic)
    status: SeqStatus = SeqStatus.WAITING
    num_computed_tokens: int = 0
    stop_reason: int | str | None = None
    logprobs: list[TokenLogprob] = field(default_factory=list)
    prompt_logprobs: list[TokenLogprob | None] | None = None
    # Children waiting to be forked from this sequence once its prompt is computed (n > 1).
    fork_children: list[Sequence] = field(default_factory=list)
    # False while a streaming session's input is still open: then the sequence is computed
    # up to its last token but nothing is sampled.
    input_closed: bool = True
    last_input_time: float = field(default_factory=time.monotonic)  # newest input change
    num_preemptions: int = 0
    # Prompt tokens served from the prefix cache when first scheduled (-1: not yet);
    # kept through preemption, as vLLM's ``num_cached_tokens``.
    num_cached_tokens: int = -1
    first_token_time: float | None = None
    salt: object = None  # prefix-cache salt (a position layout, say)
    # KV views: (seq_id, num_tokens) segments of other sequences' caches this sequence
    # attends to before its own tokens. ``kv_prefix_visible[i]`` (where given) is how many
    # prefix tokens own token i sees (a note written earlier saw less input); tokens past
    # the list see the whole prefix. RoPE position of own token i is ``positions[i]`` where
    # given, else ``position_offset + i`` (explicit positions serve position layouts).
    # A segment may also be ``(seq_id, stop, start, shift)``: the source's tokens
    # ``[start, stop)`` read at their positions + ``shift`` (``attention/shift.py``).
    #
    #     context of own token i: | prefix[:visible(i)] | (hidden) | own tokens 0..i |
    kv_prefix: list[tuple] = field(default_factory=list)
    kv_prefix_visible: list[int] = field(default_factory=list)
    position_offset: int = 0
    positions: list[int] = field(default_factory=list)
    # Sequences sharing an ``admit_group`` are admitted together or not at all (the
    # children of one fork, ``parallel.threads``). None: on its own.
    admit_group: str | None = None
    # Tokens past this index are not computed yet (a layout whose positions are not known
    # until something else finishes: interleaved reading waits for each note). None: no cap.
    compute_limit: int | None = None
    # Draft tokens (speculative decoding): guesses of the next outputs, pending tokens the
    # scheduler computes like any other; the sampler keeps those the model agrees with and
    # the rest are rolled back. Never part of ``token_ids``; set before each step.
    #
    #     | token_ids ...................... | draft_token_ids |
    #     | computed             | last token | d1 d2 ... dk    |
    draft_token_ids: list[int] = field(default_factory=list)
    # The scheduler's cache of this sequence's block hashes while it waits
    # (``kv.prefix.HashCache``: a lookup per step is then a dict probe per block); None
    # once admitted. Checked against the tokens, so any change to them is safe.
    prefix_hashes: object = field(default=None, repr=False, compare=False)

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens

    @property
    def output_token_ids(self) -> list[int]:
        return self.token_ids[self.num_prompt_tokens :]

    @property
    def num_pending_tokens(self) -> int:
        """Tokens to compute. While the input is open the last token is held back: it may
        still change (re-tokenization), and computing it at close yields the logits to
        sample from, so the work after close is one token whatever the input length."""
        held = 0 if self.input_closed else 1
        end = self.num_tokens + len(self.draft_token_ids) - held
        if self.compute_limit is not None:
            end = min(end, self.compute_limit)
        return max(end - self.num_computed_tokens, 0)

    def input_ids(self, start: int, n: int) -> list[int]:
        """Tokens ``start .. start + n - 1`` of ``token_ids`` followed by the drafts."""
        if not self.draft_token_ids or start + n <= self.num_tokens:
            return self.token_ids[start : start + n]
        return (self.token_ids + self.draft_token_ids)[start : start + n]

    @property
    def num_verified_drafts(self) -> int:
        """Drafts whose KV is computed (after a step's commit: the ones it verifies)."""
        return max(self.num_computed_tokens - self.num_tokens, 0)

    def position(self, i: int) -> int:
        """RoPE position of own token i."""
        return self.positions[i] if i < len(self.positions) else self.position_offset + i

    def visible_prefix(self, i: int) -> int:
        """How many tokens of the (concatenated) prefix segments own token i attends to."""
        total = self.prefix_len
        return min(self.kv_prefix_visible[i], total) if i < len(self.kv_prefix_visible) else total

    @property
    def prefix_len(self) -> int:
        """Tokens of the (concatenated) prefix segments."""
        return sum(e[1] - (e[2] if len(e) > 2 else 0) for e in self.kv_prefix)

    @property
    def num_shareable_tokens(self) -> int:
        """Leading tokens whose KV depends on this sequence's own tokens only (no view):
        only those may enter the prefix cache."""
        if not self.kv_prefix:
            return self.num_tokens
        n = 0
        while n < len(self.kv_prefix_visible) and self.kv_prefix_visible[n] == 0:
            n += 1
        return n

    @property
    def wants_sample(self) -> bool:
        """Sample a token once everything is computed (the input must be closed)."""
        return self.input_closed and not self.status.finished

    @property
    def wants_prompt_logprobs(self) -> bool:
        return self.params.prompt_logprobs is not None


@dataclass
class CompletionOutput:
    index: int
    text: str
    token_ids: list[int]
    logprobs: SampleLogprobs | None  # one dict per token of ``token_ids``
    finish_reason: str | None
    stop_reason: int | str | None = None
    new_text: str = ""  # delta since the previous output of this request
    new_token_ids: list[int] = field(default_factory=list)
    # Think while reading: the reasoning so far (notes, passes), apart from the answer.
    reasoning_content: str = ""
    new_reasoning_content: str = ""
    # Parallel paths (``parallel.paths``): each path's text, the (path, delta) pairs new
    # since the last output, and how many tokens the paths sampled.
    paths: list[str] = field(default_factory=list)
    new_paths: list[tuple[int, str]] = field(default_factory=list)
    num_path_tokens: int = 0
    # Think while reading: how many tokens the notes and passes sampled.
    num_reasoning_tokens: int = 0

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    @property
    def cumulative_logprob(self) -> float | None:
        """vLLM's: the sum of the chosen tokens' log-probabilities (None without ``logprobs``)."""
        if self.logprobs is None:
            return None
        return sum(entry[t].logprob for t, entry in zip(self.token_ids, self.logprobs, strict=False))


@dataclass
class RequestOutput:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    prompt_logprobs: PromptLogprobs | None
    outputs: list[CompletionOutput]
    finished: bool
    num_cached_tokens: int = 0
