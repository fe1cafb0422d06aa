"""LLMEngine: the synchronous core. ``add_request`` / ``step`` / ``abort``.

A step reads in four lines: the scheduler picks tokens to compute, the runner computes
them and samples, the scheduler records the tokens, the output processor turns them into
text. Features plug in at fixed points of those phases (``engine.hooks``: step hooks and
the owners of attached sequences), never as a branch here. Everything the engine owns (KV
pool, scheduler, model) is created here and passed down; nothing is global, and torch's
thread count is changed only for the duration of a step (``intra_op_threads``)."""

from __future__ import annotations

import contextlib
import logging
import operator
import os
import random
import uuid
from collections.abc import Iterable, Iterator
from collections.abc import Sequence as Seq
from dataclasses import dataclass, replace

import torch

from thinkstream.attention.metadata import AttentionConfig
from thinkstream.config import EngineConfig, context_len
from thinkstream.engine.errors import RequestError
from thinkstream.engine.heap import trim_heap
from thinkstream.engine.hooks import SequenceOwner, StepHook, token_mask
from thinkstream.engine.open_input import OpenInputs
from thinkstream.engine.output import RequestState
from thinkstream.engine.policy import policy_key
from thinkstream.engine.request import RequestOutput, SeqStatus, Sequence
from thinkstream.engine.scheduler import Scheduler, SchedulerConfig, SchedulerOutput
from thinkstream.kv.manager import KVCacheManager
from thinkstream.loading import LoadedCheckpoint, load_checkpoint
from thinkstream.models import precision as mp
from thinkstream.models.registry import build_model
from thinkstream.sampling_params import ParamError, SamplingParams
from thinkstream.speculative.decoder import load_draft, make_decoder, pool_models
from thinkstream.structured.compiler import GrammarCompiler
from thinkstream.structured.outputs import StructuredOutputs
from thinkstream.worker.runner import DTYPES, ModelRunner, kv_bytes_per_block

log = logging.getLogger("thinkstream.engine.llm_engine")


@dataclass(frozen=True)
class EngineUsage:
    """What the engine holds at one moment (``LLMEngine.usage``)."""

    num_running: int
    num_waiting: int
    kv_blocks_used: int
    kv_blocks_total: int
    prefix_hit_rate: float
    num_preemptions: int


@dataclass(frozen=True)
class _Samples:
    """What a step sampled: per sequence its new tokens (one, or accepted drafts and one)
    and their logprobs (None entries where not asked)."""

    seqs: list[Sequence]
    token_ids: list[list[int]]
    logprobs: list[list]


@contextlib.contextmanager
def intra_op_threads(n: int | None) -> Iterator[None]:
    """torch's intra-op threads set to ``n`` for the block, then restored (``None``: as
    they are). Constructing or stepping an engine changes nothing for the rest of the
    process; the CLI and server set the process's threads once, so this is then a no-op."""
    prev = torch.get_num_threads()
    if n is None or n == prev:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(prev)


class LLMEngine(OpenInputs):
    def __init__(
        self, model: str | os.PathLike | None = None, config: EngineConfig | None = None,
        checkpoint: LoadedCheckpoint | None = None,
    ) -> None:
        self.config = cfg = config or EngineConfig()
        self.device = mp.resolve_device(cfg.device)  # a bad device fails before the weights load
        distributed = cfg.tensor_parallel_size > 1 or cfg.max_weight_memory_mb is not None
        ckpt = checkpoint or load_checkpoint(  # GGUF linears dense only where needed (build_model)
            model, tensors=cfg.max_weight_memory_mb is None, dense_linears=distributed)
        self.model_path = ckpt.path
        self.model_config = mcfg = ckpt.config
        self.tokenizer = ckpt.tokenizer
        # "auto" dtype / quantization resolved for this machine (models/precision.py); the
        # distributed runners shard dense weights, so they never take the GGUF blocks
        self.precision, kernels = mp.resolve_precision(cfg.dtype, cfg.quantization, cfg.device,
                                                       {} if distributed else ckpt.blocks,
                                                       cfg.kv_cache_dtype)
        dtype, kv_dtype = DTYPES[self.precision.dtype], DTYPES[self.precision.kv_dtype]
        # the context a request may ask for, and the longest sequence the KV pool can hold
        self.context_len = context_len(cfg.max_model_len, mcfg.max_position_embeddings)
        spec = load_draft(cfg.speculative)  # a draft model's KV shares the pool's blocks
        block_bytes = sum(kv_bytes_per_block(m, cfg.block_size, kv_dtype)
                          for m in [mcfg, *pool_models(spec)])
        num_blocks = cfg.num_blocks or max(1, cfg.kv_cache_memory // block_bytes)
        self.max_model_len = min(self.context_len, num_blocks * cfg.block_size)
        if self.max_model_len < self.context_len:  # a warning only against an asked length
            (log.info if cfg.max_model_len is None else log.warning)("the KV cache holds %d "
                "tokens (%d blocks): sequences are capped at that", self.max_model_len, num_blocks)
        self.kv = KVCacheManager(num_blocks, cfg.block_size, cfg.enable_prefix_caching)
        self.scheduler = Scheduler(
            SchedulerConfig(cfg.max_num_seqs, cfg.max_num_batched_tokens, self.max_model_len,
                            cfg.enable_prefix_caching),
            self.kv, priority=policy_key(cfg.session_policy),
        )
        with intra_op_threads(cfg.num_threads):
            if distributed:
                from thinkstream.distributed.tp import start_tp_runner  # ranks, streaming

                resolved = replace(cfg, dtype=self.precision.dtype,
                                   quantization=self.precision.quantization,
                                   kv_cache_dtype=self.precision.kv_dtype)
                self.runner: ModelRunner = start_tp_runner(ckpt, resolved, num_blocks)
            else:
                model = build_model(mcfg, ckpt.tensors, dtype, self.device, self.precision.quantization,
                                    ckpt.blocks, kernels, DTYPES[self.precision.dense_dtype])
                self.runner = ModelRunner(model, mcfg, num_blocks, cfg.block_size, dtype,
                                          self.device, cfg.compile_decode, cfg.max_num_seqs,
                                          AttentionConfig.for_engine(
                                              cfg.attention_precision, dtype,
                                              mp.fused_attention_available(self.device)),
                                          kv_dtype)
        self.model = self.runner.model
        self.eos_ids = frozenset(mcfg.eos_token_ids) | frozenset(self.tokenizer.eos_token_ids)
        self.requests: dict[str, RequestState] = {}
        self._rng = random.Random(cfg.seed)
        self.num_preemptions = 0
        self.last_step_progress = True  # the last step computed, preempted or ended something
        self.structured = StructuredOutputs(GrammarCompiler(self.tokenizer, mcfg.vocab_size,
                                                            self.eos_ids))  # grammar masks
        self.speculative = make_decoder(self, spec)  # draft tokens, or None
        self._hooks: list[StepHook] = [self.structured, *filter(None, [self.speculative])]
        # attach(): scheduled as any other, not outputs of their request, ended with it
        self._attached: dict[str, list[Sequence]] = {}
        self._owners: dict[str, SequenceOwner] = {}
        del ckpt, checkpoint  # the loader's float32 tensors the model did not keep are freed
        trim_heap()  # ... and their pages handed back (engine/heap.py: ~430 MB for SmolLM2)

    # ------------------------------------------------------------------ requests
    def encode_prompt(self, prompt: str | Seq[int], allow_empty: bool = False) -> list[int]:
        if isinstance(prompt, str):
            ids = self.tokenizer.encode(prompt, add_special_tokens=True)
        elif isinstance(prompt, bytes | bytearray | memoryview) or not isinstance(prompt, Iterable):
            # bytes (decode them first), None, a number (was a bare TypeError)
            raise RequestError("prompt", f"prompt: text (str) or token ids, not {type(prompt).__name__}")
        else:
            try:  # ints, numpy / torch integers; never a float cut to an int
                ids = [operator.index(t) for t in prompt]
            except TypeError:
                raise RequestError("prompt", "prompt: token ids must be integers") from None
            if bad := [t for t in ids if not 0 <= t < self.model_config.vocab_size]:
                raise RequestError("prompt", f"prompt: token id {bad[0]} is outside the vocabulary "
                                   f"(0..{self.model_config.vocab_size - 1})")
        if not ids and not allow_empty:
            raise RequestError("prompt", "prompt: must not be empty")
        return ids

    def make_request(
        self, request_id: str | None, prompt: str | Seq[int], params: SamplingParams | None = None,
        *, input_closed: bool = True, salt: object = None,
    ) -> RequestState:
        """Validate and tokenize a request without touching engine state (safe from any
        thread). Raises ``RequestError`` / ``ParamError`` before any block is taken."""
        params = params or SamplingParams()
        request_id = request_id or f"req-{uuid.uuid4().hex}"  # never one a caller chose
        ids = self.encode_prompt(prompt, allow_empty=not input_closed)
        self.check_params(params)
        self.check_length(len(ids), params)
        max_tokens = self.resolve_max_tokens(params, len(ids))
        base_seed = params.seed if params.seed is not None else self._rng.getrandbits(63)
        seqs = []
        for i in range(params.n):
            gen = torch.Generator(device=self.device).manual_seed(base_seed + i)
            seqs.append(Sequence(
                seq_id=f"{request_id}#{i}", request_id=request_id, index=i, token_ids=list(ids),
                num_prompt_tokens=len(ids), params=params, generator=gen, max_tokens=max_tokens,
                input_closed=input_closed, salt=salt,
            ))
        seqs[0].fork_children = seqs[1:]
        return RequestState.create(request_id, prompt if isinstance(prompt, str) else None, seqs,
                                   self.tokenizer)

    def add(self, state: RequestState) -> str:
        """Queue a request made by ``make_request``."""
        if state.request_id in self.requests:
            raise RequestError("request_id", f"request_id: {state.request_id!r} is already in use")
        self.requests[state.request_id] = state
        self.scheduler.add(state.seqs[0])
        return state.request_id

    def add_request(
        self, request_id: str | None, prompt: str | Seq[int], params: SamplingParams | None = None,
        *, input_closed: bool = True, salt: object = None,
    ) -> str:
        """Queue a request; returns its id. Raises ``RequestError`` before taking any block."""
        return self.add(self.make_request(request_id, prompt, params, input_closed=input_closed,
                                          salt=salt))

    def check_params(self, params: SamplingParams) -> None:
        """What ``SamplingParams`` cannot check alone: ``n`` at most ``config.max_n``;
        ``logit_bias`` and ``stop_token_ids`` in the vocabulary, ``logprobs`` / ``prompt_logprobs``
        at most its size; a ``structured_outputs`` constraint that compiles (cached)."""
        if params.n > self.config.max_n:  # its n sequences are made at once: never an OOM
            raise ParamError("n", f"must be <= {self.config.max_n} (EngineConfig.max_n), got {params.n}")
        vocab = self.model_config.vocab_size
        if any(t >= vocab for t, _ in params.logit_bias):
            raise ParamError("logit_bias", f"token ids must be in the vocabulary (0..{vocab - 1})")
        if bad := [t for t in params.stop_token_ids if t >= vocab]:  # never sampled: never stops
            raise ParamError("stop_token_ids", f"token id {bad[0]} is outside the vocabulary (0..{vocab - 1})")
        for name in ("logprobs", "prompt_logprobs"):
            if (getattr(params, name) or 0) > vocab:
                raise ParamError(name, f"must be <= the vocabulary's {vocab} tokens, got {getattr(params, name)}")
        self.structured.check_params(params)

    def resolve_max_tokens(self, params: SamplingParams, num_prompt_tokens: int) -> int:
        """Output tokens a sequence may generate: ``params.max_tokens``, or (unset) what the
        context and the KV pool leave (``max_model_len``: a sequence never outgrows the
        pool, it ends with "length")."""
        return min(params.max_tokens or self.max_model_len, self.max_model_len - num_prompt_tokens)

    def check_length(self, num_prompt_tokens: int, params: SamplingParams) -> None:
        """Raise ``RequestError`` for a prompt with no room to generate, or a ``max_tokens``
        the KV pool could never hold."""
        if num_prompt_tokens >= self.max_model_len:
            where = (f"the context of {self.max_model_len} tokens"
                     if self.max_model_len == self.context_len else
                     f"the KV cache's {self.max_model_len} tokens ({self.kv.num_blocks} blocks)")
            raise RequestError("prompt", f"prompt: {num_prompt_tokens} tokens leave no room to "
                               f"generate within {where}")
        blocks = self.blocks_needed(num_prompt_tokens, params.max_tokens)
        if blocks > self.kv.num_blocks:
            raise RequestError("max_tokens", f"max_tokens: prompt + max_tokens needs {blocks} KV blocks "
                               f"but the cache has {self.kv.num_blocks}")

    def blocks_needed(self, num_prompt_tokens: int, max_tokens: int | None) -> int:
        """KV blocks a sequence of ``num_prompt_tokens`` input tokens may come to need with
        ``max_tokens`` (None: unbounded) output tokens, capped at the context (the last sampled
        token is never computed: prompt + max_tokens == ``max_model_len`` fits the pool)."""
        return self.kv.blocks_for(min(num_prompt_tokens + (max_tokens or 0), self.context_len))

    def abort(self, request_id: str) -> bool:
        """Stop a request wherever it is and free all its blocks. False if unknown."""
        state = self.requests.pop(request_id, None)
        if state is None:
            return False
        for seq in state.seqs:
            self.scheduler.finish(seq, SeqStatus.FINISHED_ABORTED)
        self._ended(request_id, SeqStatus.FINISHED_ABORTED)
        return True

    def _ended(self, request_id: str, status: SeqStatus) -> None:
        """A request left ``requests``: its attached sequences end too, hooks forget it."""
        for seq in self._attached.pop(request_id, []):
            self.scheduler.finish(seq, status)
            self._owners.pop(seq.seq_id, None)
        for hook in self._hooks:
            hook.on_finish(request_id)

    # ------------------------------------------------------------ features' surface
    def add_hook(self, hook: StepHook) -> None:
        """Plug a feature into every step (``engine.hooks.StepHook``)."""
        self._hooks.append(hook)

    def attach(self, request_id: str, seq: Sequence, owner: SequenceOwner) -> None:
        """Schedule ``seq`` as part of request ``request_id`` without being one of its
        outputs; ``owner`` hears of its tokens and of its starvation (``SequenceOwner``).
        It ends when the request ends."""
        if request_id not in self.requests:
            raise RequestError("request_id", f"request_id: unknown request {request_id!r}")
        self._attached.setdefault(request_id, []).append(seq)
        self._owners[seq.seq_id] = owner
        self.scheduler.add(seq, volatile=True)  # a feature may change its key while it waits

    def finish_sequence(self, seq: Sequence) -> None:
        """End ``seq`` now with "stop" and free its blocks (a feature decided it is done: a
        vote over parallel paths). Its request reports it when next touched."""
        self.scheduler.finish(seq, SeqStatus.FINISHED_STOPPED)

    def wake(self, seq: Sequence) -> None:
        """``seq`` has tokens to compute again: a sequence parked while idle recomputes."""
        self.scheduler.wake(seq)

    def truncate_kv(self, seq: Sequence, num_tokens: int) -> None:
        """Drop ``seq``'s computed KV past ``num_tokens`` (its tokens are the caller's)."""
        if seq.num_computed_tokens > num_tokens:
            self.scheduler.truncate(seq, num_tokens)

    @property
    def num_kv_blocks(self) -> int:
        return self.kv.num_blocks

    @contextlib.contextmanager
    def scratch_kv(self, want: dict[str, int]) -> Iterator[dict[str, list[int]] | None]:
        """Block tables covering the first ``want[seq_id]`` tokens of each sequence, for
        the block only: a drafter writes KV past a sequence's computed tokens (which the
        next forward overwrites), then every table is cut back to what it held; an id with
        no table gets one, freed after. Yields None (taking nothing) when the pool cannot
        spare the blocks."""
        held = {sid: self.kv.num_tokens(sid) if self.kv.has(sid) else None for sid in want}
        grown: list[str] = []
        try:
            for sid, n in want.items():
                if not self.kv.allocate(sid, n):
                    yield None
                    return
                grown.append(sid)
            yield {sid: self.kv.block_table(sid) for sid in want}
        finally:
            for sid in grown:
                if held[sid] is None:
                    self.kv.free(sid)
                else:
                    self.kv.truncate(sid, held[sid])

    def kv_tokens(self, seq_id: str) -> int:
        """Token slots ``seq_id``'s blocks cover now (0 without a table)."""
        return self.kv.num_tokens(seq_id) if self.kv.has(seq_id) else 0

    @property
    def block_size(self) -> int:
        return self.kv.block_size

    def blocks_for(self, num_tokens: int) -> int:
        """KV blocks that ``num_tokens`` tokens of one sequence take."""
        return self.kv.blocks_for(num_tokens)

    def has_work(self) -> bool:
        """Whether a step could compute something now."""
        return self.scheduler.has_work()

    def is_parked(self, seq: Sequence) -> bool:
        """An idle open input preempted under pressure (recomputes once its input changes)."""
        return seq in self.scheduler.parked

    def input_ids(self, request_id: str) -> list[int]:
        """The prompt (input) ids a request holds now."""
        seq = state.seqs[0] if (state := self.requests.get(request_id)) is not None else None
        return list(seq.token_ids[: seq.num_prompt_tokens]) if seq is not None else []

    def sequence_ids(self, request_id: str) -> list[str]:
        state = self.requests.get(request_id)
        return [q.seq_id for q in state.seqs] if state is not None else []

    def usage(self) -> EngineUsage:
        """Sequences and KV blocks held now. Each field is one read, so another thread
        (a metrics scrape) gets a consistent-enough snapshot without waiting for a step."""
        return EngineUsage(
            num_running=len(self.scheduler.running), num_waiting=len(self.scheduler.waiting),
            kv_blocks_used=self.kv.num_blocks - self.kv.num_free_blocks,
            kv_blocks_total=self.kv.num_blocks, prefix_hit_rate=self.kv.prefix_hit_rate,
            num_preemptions=self.num_preemptions)

    def has_unfinished_requests(self) -> bool:
        return bool(self.requests)

    # ---------------------------------------------------------------------- step
    def step(self) -> list[RequestOutput]:
        out, touched = self._schedule()  # what to compute; starved sequences shrunk or ended
        samples = self._execute(out)  # forward, prompt logprobs, hooks' vetoes, sampling
        self._update(samples, touched)  # tokens appended, token-level stops, owners told
        return self._outputs(touched.values())  # text, deltas, finished requests

    def _schedule(self) -> tuple[SchedulerOutput, dict[str, RequestState]]:
        with intra_op_threads(self.config.num_threads):
            for hook in self._hooks:  # optional pending work: draft tokens
                hook.before_schedule(self.scheduler.running)
        out = self.scheduler.schedule()
        self.num_preemptions += len(out.preempted)
        self.last_step_progress = bool(out.scheduled or out.preempted or out.starved
                                       or out.num_admitted_idle)
        touched: dict[str, RequestState] = {}
        for seq in out.starved:  # can never fit beside what it views: its owner shrinks it
            owner = self._owners.get(seq.seq_id)
            state = self.requests.get(seq.request_id)
            if owner is not None:
                owner.on_starved(seq)
            elif state is not None:  # or it ends, keeping what it generated
                for q in state.seqs:
                    self.scheduler.finish(q, SeqStatus.FINISHED_LENGTH)
                touched[seq.request_id] = state
        if touched:  # an ended request computes nothing more (its attached views are gone)
            out.scheduled = [s for s in out.scheduled if s.seq.request_id not in touched]
        return out, touched

    def _execute(self, out: SchedulerOutput) -> _Samples:
        """Run the step's forward; record prompt logprobs; sample every sequence whose
        last token was computed (and the children it forks), unless a hook voids it."""
        if not out.scheduled:
            return _Samples([], [], [])
        seq_ids = {s.seq.seq_id for s in out.scheduled}
        seq_ids |= {sid for s in out.scheduled for sid, *_ in s.seq.kv_prefix}
        # a source may be evicted while its viewer computes tokens that do not see it
        tables = {sid: self.kv.block_table(sid) for sid in seq_ids if self.kv.has(sid)}
        with intra_op_threads(self.config.num_threads):
            for hook in self._hooks:  # work that overlaps the forward (grammar masks)
                hook.before_forward(out.scheduled)
            logits, last_rows, prompt_rows = self.runner.forward(out, tables)
            self.scheduler.commit(out)
            void = set().union(*(h.after_forward(out.scheduled) for h in self._hooks))
            samplers, rows = [], []
            for s, row, (first, count) in zip(out.scheduled, last_rows, prompt_rows, strict=True):
                seq = s.seq
                if seq.seq_id in void or row < 0:
                    self.scheduler.settle_drafts(seq, 0)  # drafts last one step
                if seq.seq_id in void:
                    continue
                if count:
                    start = seq.num_computed_tokens - s.num_new_tokens
                    seq.prompt_logprobs = (seq.prompt_logprobs or []) + self.runner.prompt_logprobs(
                        logits, seq, first, count, start)
                if row >= 0:
                    for sampler in [seq, *self.scheduler.fork_children(seq)]:
                        samplers.append(sampler)
                        rows.append(row)
            token_ids, logprobs = self.runner.sample(logits, rows, samplers, self.eos_ids,
                                                     token_mask(self._hooks, samplers))
        return _Samples(samplers, token_ids, logprobs)

    def _update(self, samples: _Samples, touched: dict[str, RequestState]) -> None:
        """Append each sampled token (finishing on token-level stops); an attached
        sequence's owner says which request's output the token changes."""
        for seq, token_ids, lps in zip(samples.seqs, samples.token_ids, samples.logprobs,
                                       strict=True):
            drafted = seq.num_verified_drafts
            self.scheduler.settle_drafts(seq, len(token_ids) - 1)  # rejected drafts rolled back
            for hook in self._hooks if drafted else ():
                hook.on_verified(seq, drafted, len(token_ids) - 1)
            for token_id, lp in zip(token_ids, lps, strict=True):
                if seq.status.finished:  # a stop among accepted drafts ends the rest
                    break
                if lp is not None:
                    seq.logprobs.append(lp)
                self.scheduler.append_token(seq, token_id, self.eos_ids)
                if any([h.on_token(seq, token_id) for h in self._hooks]):  # grammar complete
                    self.scheduler.finish(seq, SeqStatus.FINISHED_STOPPED)
                owner = self._owners.get(seq.seq_id)
                rid = owner.on_token(seq, token_id) if owner is not None else seq.request_id
                if rid is not None and rid in self.requests:
                    touched[rid] = self.requests[rid]

    def _outputs(self, states) -> list[RequestOutput]:
        outputs = []
        for state in states:
            for i, seq in enumerate(state.seqs):
                if state.update_text(i):
                    self.scheduler.finish(seq, SeqStatus.FINISHED_STOPPED)
                    state.update_text(i)
            outputs.append(state.make_output())
            if state.finished:
                del self.requests[state.request_id]
                self._ended(state.request_id, SeqStatus.FINISHED_STOPPED)
        return outputs

    def check_health(self) -> None:
        """Raise if a part the engine runs on has failed (a tensor-parallel rank died)."""
        self.runner.check_health()

    def close(self) -> None:
        """Stop what the engine started besides threads (tensor-parallel worker ranks)."""
        self.runner.close()

    # ------------------------------------------------------------------- checks
    def check_integrity(self) -> None:
        """Block accounting holds and every live sequence's table matches its tokens."""
        self.kv.check_integrity()
        for seq in self.scheduler.running:
            if self.kv.has(seq.seq_id):
                table = self.kv.block_table(seq.seq_id)
                assert len(table) * self.kv.block_size >= seq.num_computed_tokens, seq.seq_id
        live = {s.seq_id: s for s in self.scheduler.sequences()}
        for seq in live.values():  # views: see scheduler.py; sources outlive their viewers
            for sid, k, *_ in seq.kv_prefix:
                src = live.get(sid)
                assert src is not None, f"{seq.seq_id} views {sid}, which is not live"
                assert k <= src.num_tokens, f"{seq.seq_id} views {k} tokens of {sid} ({src.num_tokens})"
                assert all(v <= seq.prefix_len for v in seq.kv_prefix_visible)
        for rid, seqs in self._attached.items():
            assert rid in self.requests and seqs, f"attached sequences outlive request {rid}"
        for hook in self._hooks:
            hook.check(self.requests.keys())
        if not self.requests:
            assert not self._attached, "attached sequences with no requests"
            assert self.kv.num_free_blocks == self.kv.num_blocks, "blocks leaked with no requests"


__all__ = ["LLMEngine", "RequestError", "ParamError"]
