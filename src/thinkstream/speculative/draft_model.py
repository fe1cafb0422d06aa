"""A small draft model that shares the target's tokenizer (classic speculative decoding,
Leviathan et al. 2023), its KV in the target's block pool.

The draft keeps its own cache tensors, one slot per slot of the target's pool, addressed by
the target's block tables: a block holds a position's keys and values of both models, so
the pool's block accounting covers the draft too (freeing, preempting, sharing a prefix
block frees or shares both). Per sequence the drafter remembers up to where its KV is
valid; each step it first computes the tokens after that (the prompt on the first step,
then the tokens accepted since), ending on the sequence's last token, whose logits give
the first draft, then one decode step per further draft (greedy: the argmax, its
probability the confidence). Draft positions past the sequence's blocks go into blocks
lent for the step (``LLMEngine.scratch_kv``); those are given back, so the drafter's KV is
trusted only up to the blocks the sequence held and the tokens the target accepted.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from thinkstream.attention.metadata import SeqSlice, allocate_kv_caches, build_attention_metadata
from thinkstream.speculative.early_exit import layer_cost
from thinkstream.speculative.proposer import NO_DRAFT, Draft, Proposer

if TYPE_CHECKING:
    from thinkstream.engine.llm_engine import LLMEngine
    from thinkstream.engine.request import Sequence
    from thinkstream.loading import LoadedCheckpoint


@dataclass
class _DraftState:
    valid: int = 0  # positions whose draft KV is right
    written: list[int] = field(default_factory=list)  # tokens written from ``valid`` on
    preemptions: int = 0  # the sequence's count when last seen (a preemption drops it all)


class DraftModelProposer(Proposer):
    """Drafts with ``checkpoint`` (a ``LoadedCheckpoint`` of a model with the target's
    vocabulary)."""

    name = "draft_model"

    def __init__(self, engine: LLMEngine, checkpoint: LoadedCheckpoint) -> None:
        from thinkstream.models.registry import build_model
        from thinkstream.worker.runner import DTYPES

        cfg, target = checkpoint.config, engine.model_config
        if cfg.vocab_size != target.vocab_size:
            raise ValueError(f"draft_model: its vocabulary ({cfg.vocab_size}) must be the "
                             f"target's ({target.vocab_size})")
        if checkpoint.tokenizer.eos_token_ids != engine.tokenizer.eos_token_ids:
            raise ValueError("draft_model: its tokenizer must be the target's")
        runner = engine.runner
        dtype = DTYPES[engine.precision.dtype]  # the target's, resolved (never "auto")
        self.engine, self.cfg = engine, cfg
        self.model = build_model(cfg, checkpoint.tensors, dtype, runner.device)
        slots = engine.num_kv_blocks * engine.block_size
        # the target's cache dtype (the pool's blocks are sized with it)
        self.kv_caches = allocate_kv_caches(cfg.num_layers, slots, cfg.num_kv_heads,
                                            cfg.head_dim, runner.kv_dtype, runner.device)
        target_cost = layer_cost(engine.model, len(engine.model.layers))
        draft_size = sum(p.numel() for p in self.model.parameters())
        self.cost_per_token = target_cost * draft_size / max(
            sum(p.numel() for p in engine.model.parameters()), 1)
        self._states: dict[str, _DraftState] = {}

    @torch.inference_mode()
    def propose(self, seqs: list[Sequence], lengths: list[int]) -> list[Draft]:
        active = [i for i, k in enumerate(lengths) if k > 0]
        if not active:
            return [NO_DRAFT] * len(seqs)
        held = {seqs[i].seq_id: self.engine.kv_tokens(seqs[i].seq_id) for i in active}
        want = {seqs[i].seq_id: seqs[i].num_tokens - 1 + lengths[i] for i in active}
        drafts: list[tuple[list[int], list[float]]] = [([], []) for _ in seqs]
        with self.engine.scratch_kv(want) as tables:
            if tables is None:
                return [NO_DRAFT] * len(seqs)
            starts = [self._valid(seqs[i]) for i in active]
            # catch up on the tokens after the valid KV, ending on the last token
            chunks = [seqs[i].token_ids[s:] for i, s in zip(active, starts, strict=True)]
            ids, conf = self._forward([seqs[i] for i in active], chunks, starts, tables)
            step = 0
            while active:
                for i, t, c in zip(active, ids, conf, strict=True):
                    drafts[i][0].append(t)
                    drafts[i][1].append(c)
                step += 1
                active = [i for i in active if step < lengths[i]]
                if not active:
                    break
                ids, conf = self._forward(
                    [seqs[i] for i in active], [[drafts[i][0][-1]] for i in active],
                    [seqs[i].num_tokens - 1 + step for i in active], tables)
        bs = self.engine.block_size
        for i, (toks, _) in enumerate(drafts):
            if toks:  # KV written from ``valid`` on; blocks past the held ones were lent
                st = self._states[seqs[i].seq_id]
                cap = self.engine.blocks_for(held[seqs[i].seq_id]) * bs - st.valid
                st.written = (seqs[i].token_ids[st.valid :] + toks[:-1])[: max(cap, 0)]
        return [Draft(t, c) if t else NO_DRAFT for t, c in drafts]

    def _valid(self, seq: Sequence) -> int:
        """Positions of ``seq`` whose draft KV is right now (written tokens the sequence
        kept), at most its last token's (which is always recomputed)."""
        st = self._states.setdefault(seq.seq_id, _DraftState(preemptions=seq.num_preemptions))
        if st.preemptions != seq.num_preemptions or self.engine.kv_tokens(seq.seq_id) < st.valid:
            st.valid, st.written, st.preemptions = 0, [], seq.num_preemptions
        kept = 0
        real = seq.token_ids[st.valid :]
        while kept < min(len(st.written), len(real)) and st.written[kept] == real[kept]:
            kept += 1
        st.valid = min(st.valid + kept, seq.num_tokens - 1)
        st.written = []
        return st.valid

    def _forward(self, seqs: list[Sequence], chunks: list[list[int]], starts: list[int],
                 tables: dict[str, list[int]]) -> tuple[list[int], list[float]]:
        """Each sequence's chunk at context ``starts[i]`` through the draft model: the
        argmax after its last token, and that token's probability."""
        model, runner = self.model, self.engine.runner
        slices = [SeqSlice(tables[s.seq_id], c, len(ch))
                  for s, c, ch in zip(seqs, starts, chunks, strict=True)]
        meta = build_attention_metadata(slices, runner.block_size, self.kv_caches,
                                        self.cfg.sliding_window, runner.device, runner.attention)
        ids = torch.tensor([t for ch in chunks for t in ch], device=runner.device)
        pos = torch.tensor([c + j for c, ch in zip(starts, chunks, strict=True)
                            for j in range(len(ch))], device=runner.device)
        hidden = model(ids, pos, meta)
        last = torch.tensor([sum(map(len, chunks[: i + 1])) - 1 for i in range(len(chunks))],
                            device=runner.device)
        probs = model.compute_logits(hidden[last]).softmax(dim=-1)
        top = probs.max(dim=-1)
        return top.indices.tolist(), top.values.tolist()

    def forget(self, seq_id: str) -> None:
        self._states.pop(seq_id, None)

    def tracked(self) -> set[str]:
        return set(self._states)
