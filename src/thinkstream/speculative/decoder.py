"""Speculative decoding in the engine step: a ``StepHook`` that gives running sequences
draft tokens before each step and learns from their verification.

    before_schedule  drafts cleared; each eligible sequence's length chosen
                     (``adaptive.LengthController``: its acceptance, the batch's phase),
                     trimmed to the step's token budget and to the free KV blocks
                     (``adaptive.fit_to_blocks``); the proposer fills them
                     (``Sequence.draft_token_ids``). The scheduler computes them like any
                     pending tokens, in the same forward as the rest of the batch.
    (sample)         the runner verifies them (``speculative.verify``); the engine rolls
                     the rejected ones back (``Scheduler.settle_drafts``)
    on_verified      the request's acceptance is updated; counters for the metrics
    on_token         a shadow draft (a free proposer's guess for a request at length 0) is
                     compared with the token sampled
    on_finish        per-request state dropped

Eligible: a running sequence whose input is closed, that has sampled at least one token
and has only its last token to compute, owns no KV views (reasoning streams, answers
reading notes) and has no structured-output constraint (its grammar masks one position
at a time). Everything else decodes as before, in the same batch.
"""

from __future__ import annotations

import time
from collections.abc import Collection
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from thinkstream.engine.hooks import StepHook
from thinkstream.speculative.adaptive import LengthController, StepCost, fit_to_blocks
from thinkstream.speculative.config import SpeculativeConfig
from thinkstream.speculative.proposer import Proposer

if TYPE_CHECKING:
    from thinkstream.engine.llm_engine import LLMEngine
    from thinkstream.engine.request import Sequence
    from thinkstream.engine.scheduler import ScheduledSeq


@dataclass
class SpeculativeStats:
    """Counters since the engine started (Prometheus: drafted, accepted, mean length)."""

    num_drafts: int = 0  # verifications (a sequence's drafts in one step)
    num_draft_tokens: int = 0
    num_accepted_tokens: int = 0
    propose_s: float = 0.0  # seconds spent proposing

    @property
    def acceptance_rate(self) -> float:
        return self.num_accepted_tokens / self.num_draft_tokens if self.num_draft_tokens else 0.0

    @property
    def mean_accepted_length(self) -> float:
        """Tokens gained per verification: accepted drafts plus the target's own token."""
        return 1 + self.num_accepted_tokens / self.num_drafts if self.num_drafts else 0.0


class SpeculativeDecoder(StepHook):
    """The engine's speculative-decoding hook (see the module doc)."""

    def __init__(self, engine: LLMEngine, cfg: SpeculativeConfig, proposer: Proposer) -> None:
        self.engine = engine
        self.cfg = cfg
        self.proposer = proposer
        # the forward's cost against its tokens, measured, gives the cost curve and the knee
        # (a config's compute_bound_tokens fixes the knee and the line instead)
        self.cost = None if cfg.compute_bound_tokens else StepCost(cfg.knee)
        self.lengths = LengthController(cfg.num_speculative_tokens, cfg.knee,
                                        proposer.cost_per_token, cfg.adaptive, cfg.probe_interval,
                                        self.cost)
        self._forward: tuple[int, float] | None = None  # (tokens, start) of the running forward
        self.stats = SpeculativeStats()
        self._shadow: dict[str, tuple[int, int]] = {}  # seq id -> (position, guessed token)
        self._seqs: dict[str, str] = {}  # seq id -> request id, for on_finish
        self._drafted: dict[str, list[int]] = {}  # seq id -> this step's drafts

    # --------------------------------------------------------------- planning
    def eligible(self, seq: Sequence) -> bool:
        return (seq.input_closed and not seq.status.finished and seq.num_output_tokens >= 1
                and seq.num_computed_tokens == seq.num_tokens - 1 and not seq.kv_prefix
                and not seq.positions and seq.compute_limit is None
                and seq.params.structured_outputs is None)

    def before_schedule(self, running: list[Sequence]) -> None:
        self._drafted.clear()
        for seq in running:
            seq.draft_token_ids = []
        seqs = [s for s in running if self.eligible(s)]
        if not seqs:
            return
        for s in seqs:
            self._seqs[s.seq_id] = s.request_id
        lengths = self._plan(seqs, running)
        t0 = time.perf_counter()
        real = [i for i, k in enumerate(lengths) if k > 0]
        drafts = self.proposer.propose([seqs[i] for i in real], [lengths[i] for i in real])
        for i, d in zip(real, drafts, strict=True):
            seqs[i].draft_token_ids = list(d.tokens[: lengths[i]])
            self._drafted[seqs[i].seq_id] = seqs[i].draft_token_ids
        free = self.proposer.free_part()
        shadow = [s for k, s in zip(lengths, seqs, strict=True)
                  if k == 0 and free is not None and self.lengths.shadow_wanted(s.seq_id)]
        for s, d in zip(shadow, free.propose(shadow, [1] * len(shadow)) if shadow else [],
                        strict=True):
            if d.tokens:
                self._shadow[s.seq_id] = (s.num_tokens, d.tokens[0])
        self.stats.propose_s += time.perf_counter() - t0

    def _plan(self, seqs: list[Sequence], running: list[Sequence]) -> list[int]:
        """Each sequence's length, surest sequences first: its own (adaptive: priced at the
        step's tokens so far, the real ones and the drafts of surer sequences), capped by
        what it may still generate, then by the step's token budget (within ``row_caps``
        when the batch fits them) and the free KV blocks."""
        engine, batch = self.engine, len(running)
        states = self.lengths.states
        order = sorted(range(len(seqs)), key=lambda i: -(
            states[seqs[i].seq_id].alpha if seqs[i].seq_id in states else 0.5))
        pending = sum(s.num_pending_tokens for s in running)
        if self.cfg.adaptive and pending >= self.lengths.knee:
            # compute-bound without drafts (FASER): a draft row costs what a real one does,
            # and the rows' fixed part the pricing counts on is already shared by the batch
            # (measured at batch 32 on Zen 4: drafting at high acceptance still lost 4-24%)
            return [0] * len(seqs)
        budget = engine.config.max_num_batched_tokens - pending
        for cap in self.row_caps():  # drafts never push a step that fits a cap past it
            if cap is not None and pending <= cap:
                budget = min(budget, cap - pending)
        lengths = [0] * len(seqs)
        tokens = pending
        for i in order:
            s = seqs[i]
            cont = self.proposer.continuing(s.seq_id, s.token_ids, self.cfg.num_speculative_tokens)
            k = self.lengths.length(s.seq_id, batch, tokens, cont)
            room = min(s.max_tokens - s.num_output_tokens, engine.max_model_len - s.num_tokens) - 1
            lengths[i] = max(min(k, room, budget), 0)
            budget -= lengths[i]
            tokens += lengths[i]
        bs = engine.block_size
        usage = engine.usage()
        free = usage.kv_blocks_total - usage.kv_blocks_used
        # the batch's real next tokens come first; waiting requests keep every free block
        free -= sum(engine.blocks_for(s.num_computed_tokens + s.num_pending_tokens)
                    - engine.blocks_for(s.num_computed_tokens) for s in running)
        if usage.num_waiting:
            free = 0
        spare = [engine.blocks_for(s.num_tokens) * bs - s.num_tokens for s in seqs]
        return fit_to_blocks(lengths, spare, free, bs, order)

    def row_caps(self) -> tuple[int | None, int | None]:
        """Rows a step keeps within when it fits them without drafts: the rows whose logits
        are bitwise a one-row step's (the GGUF kernels' dot products, 12 rows; the GEMM past
        them sums in another order, which can flip a greedy near tie: the output would not
        be token for token the one without speculation), and the native decoder stack's rows
        (``models/fused_decode.py``: a step past them runs the dense path, several times
        more per row). None: no cap (no stack, a GPU)."""
        fused = getattr(self.engine.model, "fused", None)
        return getattr(fused, "exact_rows", None), getattr(fused, "max_rows", None)

    def before_forward(self, scheduled: list[ScheduledSeq]) -> None:
        # decode and verification steps only: a prompt chunk runs another regime (many rows)
        if self.cost is not None and all(s.seq.num_computed_tokens >= s.seq.num_prompt_tokens
                                         for s in scheduled):
            self._forward = (sum(s.num_new_tokens for s in scheduled), time.perf_counter())

    def after_forward(self, scheduled: list[ScheduledSeq]) -> set[str]:
        if self.cost is not None and self._forward is not None:
            tokens, start = self._forward
            self.cost.observe(tokens, time.perf_counter() - start)
            self.lengths.knee = self.cost.knee
            self._forward = None
        return set()

    # ------------------------------------------------------------- outcomes
    def on_verified(self, seq: Sequence, drafted: int, accepted: int) -> None:
        self.lengths.update(seq.seq_id, drafted, accepted)
        self.proposer.observe(seq.seq_id, self._drafted.pop(seq.seq_id, [])[:drafted], accepted)
        self.stats.num_drafts += 1
        self.stats.num_draft_tokens += drafted
        self.stats.num_accepted_tokens += accepted

    def on_token(self, seq: Sequence, token_id: int) -> bool:
        guess = self._shadow.pop(seq.seq_id, None)
        if guess is not None and guess[0] == seq.num_tokens - 1:
            self.lengths.update(seq.seq_id, 1, int(guess[1] == token_id), real=False)
        return False

    def on_finish(self, request_id: str) -> None:
        for sid in [s for s, r in self._seqs.items() if r == request_id]:
            del self._seqs[sid]
            self._shadow.pop(sid, None)
            self.lengths.forget(sid)
            self.proposer.forget(sid)

    def check(self, live_requests: Collection[str]) -> None:
        stale = {r for r in self._seqs.values() if r not in live_requests}
        assert not stale, f"speculative state outlives requests {sorted(stale)}"
        assert self.proposer.tracked() <= set(self._seqs), "proposer state for unknown sequences"


def load_draft(cfg: SpeculativeConfig | None) -> SpeculativeConfig | None:
    """``cfg`` with a draft model named by path or alias loaded (once: the engine sizes its
    KV pool with the draft's layers before it builds the decoder)."""
    if cfg is None or not isinstance(cfg.draft_model, str):
        return cfg
    from thinkstream.loading import load_checkpoint

    return replace(cfg, draft_model=load_checkpoint(cfg.draft_model))


def pool_models(cfg: SpeculativeConfig | None) -> list:
    """Model configs, besides the target's, whose KV lives in the target's block pool (each
    block holds their KV for the same token slots): the draft model's, or none."""
    if cfg is None or cfg.draft_model is None:
        return []
    return [cfg.draft_model.config]


def make_decoder(engine: LLMEngine, cfg: SpeculativeConfig | None) -> SpeculativeDecoder | None:
    """The hook for ``cfg`` (None: no speculation), with its proposer built on ``engine``."""
    if cfg is None:
        return None
    from thinkstream.speculative.ngram import NgramProposer

    if cfg.method == "draft_model":
        from thinkstream.speculative.draft_model import DraftModelProposer

        cfg = load_draft(cfg)
        return SpeculativeDecoder(engine, cfg, DraftModelProposer(engine, cfg.draft_model))
    proposers: list[Proposer] = []
    if cfg.method in ("ngram", "fused"):
        proposers.append(NgramProposer(cfg.ngram_min, cfg.ngram_max))
    if cfg.method in ("early_exit", "fused"):
        from thinkstream.speculative.early_exit import EarlyExitProposer

        proposers.append(EarlyExitProposer.for_engine(engine, cfg.early_exit_layer))
    if len(proposers) == 1:
        return SpeculativeDecoder(engine, cfg, proposers[0])
    from thinkstream.speculative.fused import FusedProposer

    return SpeculativeDecoder(engine, cfg, FusedProposer(proposers))
