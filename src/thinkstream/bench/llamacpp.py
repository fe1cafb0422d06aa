"""llama.cpp through llama-cpp-python's low-level batch API (the ``[bench]`` extra).

Continuous batching over ``max_batch`` sequence slots, like llama-server: every
``llama_decode`` carries one token of each decoding slot plus prompt chunks of the
slots still prefilling, up to ``n_batch`` tokens; greedy argmax on the returned logits.
A prefix common to all requests (the shared-prefix mix) is evaluated once into sequence 0
and shared with ``llama_memory_seq_cp`` (llama-server's prompt cache does the same); that
needs the unified KV cache, every other workload uses per-sequence caches
(``kv_unified=False``), whose outputs do not depend on the batch.

Two settings are forced (see /work/shared/MEASURED.md): ``use_extra_bufts=False`` (the
AMX repacking path segfaults on this CPU for any evaluation of 2+ tokens, llama.cpp
issue #20824) and the thread count of the other peers.

Contexts are kept and reused (``_Contexts``): creating one allocates its KV cache and runs a
512-token warm-up evaluation, about 4 s on one thread. The bench used to rebuild the context
whenever the workload's batch or length changed, so a caller timing ``generate`` from the
outside (``side_by_side.py``) counted that on every workload switch: 16 tok/s at batch-1
decode against 72 tok/s for llama-cpp-python's own ``Llama`` loop. Per token, the batch loop
here is as fast as that loop (measured in CPU time, same process, same file).
"""

from __future__ import annotations

import ctypes
import os
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from thinkstream.bench.peers import Timing
from thinkstream.bench.workloads import Request

N_BATCH = 512
MAX_CACHED_CELLS = 32768  # KV cells kept in idle contexts (SmolLM2: 23 KiB each in f16)


@dataclass
class _Slot:
    pending: list[int]  # prompt tokens not yet evaluated
    pos: int  # position of the next token
    remaining: int  # tokens still to generate
    last: int = -1  # last generated token (fed back while decoding)
    started: bool = False
    outputs: list[int] = field(default_factory=list)  # generated tokens


def common_prefix_len(requests: list[Request]) -> int:
    """Length of the longest token prefix every request's prompt starts with."""
    first = requests[0].prompt
    n = len(first)
    for r in requests[1:]:
        limit, n = min(n, len(r.prompt)), 0
        while n < limit and r.prompt[n] == first[n]:
            n += 1
    return n


class LlamaCppPeer:
    name = "llamacpp"

    def __init__(self, gguf_path: Path, max_batch: int = 32, threads: int | None = None) -> None:
        import llama_cpp as lc

        self.lc = lc
        self.threads = threads or len(os.sched_getaffinity(0))
        self.max_batch = max_batch
        self._quiet = lc.llama_log_callback(lambda level, text, user: None)
        lc.llama_log_set(self._quiet, ctypes.c_void_p())
        lc.llama_backend_init()
        params = lc.llama_model_default_params()
        params.use_extra_bufts = False  # AMX repacking segfaults here (llama.cpp #20824)
        self.model = lc.llama_model_load_from_file(str(gguf_path).encode(), params)
        if not self.model:
            raise RuntimeError(f"llama.cpp could not load {gguf_path}")
        self.vocab_size = lc.llama_vocab_n_tokens(lc.llama_model_get_vocab(self.model))
        self._ctxs: dict[tuple[int, bool], tuple[int, Any]] = {}  # (slots, unified) -> (cells, ctx)
        self._settings = {"llama_cpp_python": lc.__version__, "threads": self.threads,
                          "use_extra_bufts": False, "n_batch": N_BATCH,
                          "batching": f"continuous, {max_batch} sequence slots",
                          "kv_unified": "only for the shared-prefix mix"}

    def settings(self) -> dict[str, Any]:
        return self._settings

    def _context(self, n_seq: int, n_ctx: int, unified: bool):
        """A context with ``n_seq`` sequence slots and at least ``n_ctx`` KV cells: a kept
        one if it is big enough, else a new one (warmed up, replacing the kept one of that
        shape; the least recently used are freed beyond ``MAX_CACHED_CELLS``)."""
        key = (n_seq, unified)
        kept = self._ctxs.pop(key, None)
        if kept is not None and kept[0] >= n_ctx:
            self._ctxs[key] = kept  # most recently used last
            return kept[1]
        if kept is not None:
            self.lc.llama_free(kept[1])
        while self._ctxs and sum(c for c, _ in self._ctxs.values()) + n_ctx > MAX_CACHED_CELLS:
            self.lc.llama_free(self._ctxs.pop(next(iter(self._ctxs)))[1])
        ctx = self._new_context(n_seq, n_ctx, unified)
        self._ctxs[key] = (n_ctx, ctx)
        return ctx

    def _new_context(self, n_seq: int, n_ctx: int, unified: bool):
        p = self.lc.llama_context_default_params()
        p.n_ctx, p.n_batch, p.n_ubatch, p.n_seq_max = n_ctx, N_BATCH, N_BATCH, n_seq
        p.n_threads = p.n_threads_batch = self.threads
        p.kv_unified, p.no_perf = unified, True
        ctx = self.lc.llama_init_from_model(self.model, p)
        if not ctx:
            raise RuntimeError("llama.cpp could not create a context")
        batch = self.lc.llama_batch_init(N_BATCH, 0, 1)
        try:  # first evaluations on a fresh context allocate: keep that out of the timing
            for n in (min(N_BATCH, n_ctx // n_seq - 1), 1):
                warm = {0: _Slot([self.vocab_size // 2] * n, 0, 1)}
                self._decode(ctx, batch, warm, want_logits=True)
                self.lc.llama_memory_clear(self.lc.llama_get_memory(ctx), True)
        finally:
            self.lc.llama_batch_free(batch)
        return ctx

    def prepare(self, requests: list[Request]) -> None:
        """Create (or find) the context ``generate(requests)`` will use, untimed."""
        self._context(*self._shape(requests))

    def _shape(self, requests: list[Request]) -> tuple[int, int, bool]:
        """(sequence slots, KV cells, unified) for ``requests``; see the module docstring."""
        shared = self._shared(requests)
        n_seq = min(self.max_batch, len(requests)) + (1 if shared else 0)
        longest = max(len(r.prompt) - shared + r.max_tokens for r in requests)
        if shared:
            n_ctx = shared + n_seq * longest
        else:
            n_ctx = n_seq * (-(-longest // 256) * 256)
        return n_seq, -(-n_ctx // 256) * 256, bool(shared)

    @staticmethod
    def _shared(requests: list[Request]) -> int:
        shared = common_prefix_len(requests) if len(requests) > 1 else 0
        return shared if shared >= 64 else 0

    def generate(self, requests: list[Request]) -> Timing:
        lc = self.lc
        ctx = self._context(*self._shape(requests))
        mem = lc.llama_get_memory(ctx)
        lc.llama_memory_clear(mem, True)
        batch = lc.llama_batch_init(N_BATCH, 0, 1)
        try:
            return self._run(ctx, mem, batch, requests, self._shared(requests))
        finally:
            lc.llama_batch_free(batch)

    def _run(self, ctx, mem, batch, requests: list[Request], shared: int) -> Timing:
        lc = self.lc
        t0 = time.perf_counter()
        if shared:  # the common prefix once, into sequence 0
            prefix = _Slot(list(requests[0].prompt[:shared]), 0, 0)
            while prefix.pending:
                self._decode(ctx, batch, {0: prefix}, want_logits=False)
        queue = deque(enumerate(requests))
        self.last_tokens: list[list[int]] = [[] for _ in requests]  # for parity checks
        free = list(range(self.max_batch, 0, -1) if shared else range(self.max_batch - 1, -1, -1))
        slots: dict[int, _Slot] = {}
        first = None
        generated = 0
        while queue or slots:
            while queue and free:
                seq, (i, r) = free.pop(), queue.popleft()
                if shared:
                    lc.llama_memory_seq_cp(mem, 0, seq, -1, -1)
                slots[seq] = _Slot(list(r.prompt[shared:]), shared, r.max_tokens,
                                   outputs=self.last_tokens[i])
            for seq, token in self._decode(ctx, batch, slots, want_logits=True):
                slot = slots[seq]
                slot.started, slot.last, slot.remaining = True, token, slot.remaining - 1
                slot.outputs.append(token)
                generated += 1
                if slot.remaining == 0:
                    lc.llama_memory_seq_rm(mem, seq, -1, -1)
                    del slots[seq]
                    free.append(seq)
            if first is None and all(s.started for s in slots.values()):
                first = time.perf_counter() - t0
        total = time.perf_counter() - t0
        return Timing(first if first is not None else total, total, generated)

    def _decode(self, ctx, batch, slots: dict[int, _Slot], want_logits: bool):
        """One ``llama_decode``: a token per decoding slot, then prompt chunks; returns
        (seq, greedy token) for every slot whose logits were computed."""
        n, out = 0, []
        entries = [(seq, s) for seq, s in slots.items() if not s.pending]
        entries += [(seq, s) for seq, s in slots.items() if s.pending]
        for seq, s in entries:
            if n == N_BATCH:
                break
            tokens = s.pending[:N_BATCH - n] if s.pending else [s.last]
            del s.pending[:len(tokens)]
            for j, tok in enumerate(tokens):
                last = j == len(tokens) - 1 and not s.pending
                batch.token[n], batch.pos[n] = tok, s.pos + j
                batch.n_seq_id[n], batch.seq_id[n][0] = 1, seq
                batch.logits[n] = want_logits and last
                if want_logits and last:
                    out.append((seq, n))
                n += 1
            s.pos += len(tokens)
        batch.n_tokens = n
        if self.lc.llama_decode(ctx, batch) != 0:
            raise RuntimeError("llama_decode failed (KV cache full?)")
        return [(seq, self._argmax(ctx, i)) for seq, i in out]

    def _argmax(self, ctx, i: int) -> int:
        row = self.lc.llama_get_logits_ith(ctx, i)
        return int(np.ctypeslib.as_array(row, shape=(self.vocab_size,)).argmax())
