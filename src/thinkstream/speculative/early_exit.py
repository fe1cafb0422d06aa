"""Early-exit self-drafting: the target's first k layers, then its final norm and LM head
(LayerSkip, Elhoushi et al. 2024; Draft & Verify / self-speculative decoding, Zhang et al.
2023; the early-exit signal Mirror Speculative Decoding drafts from). No second model and
no second cache: the first k layers' keys and values of every computed position are the
target's own (the same layers on the same tokens), so the drafter reads the sequence's
paged KV as it is. Its own positions (the last sampled token, then each draft) are written
into the sequence's blocks past its computed tokens, in blocks lent for the drafting
(``LLMEngine.scratch_kv``); the verifying forward overwrites them with the target's.

A draft step is a batched one-token decode through k layers for every drafting sequence;
k steps of it give k drafts (greedy: the exit head's argmax, its probability the
confidence). ``measure_exit_layers`` picks k per model: the agreement of each layer's exit
with the full model's next token on given text, weighed by that layer's cost.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from thinkstream.attention.metadata import SeqSlice, build_attention_metadata
from thinkstream.speculative.proposer import NO_DRAFT, Draft, Proposer

if TYPE_CHECKING:
    from thinkstream.engine.llm_engine import LLMEngine
    from thinkstream.engine.request import Sequence


def layer_cost(model: torch.nn.Module, k: int) -> float:
    """Cost of k layers plus the head as a fraction of the whole model's forward, by
    parameter count (a decode step reads every weight once: bandwidth-bound)."""
    def size(m: torch.nn.Module) -> int:
        return sum(t.numel() for t in [*m.parameters(), *m.buffers()] if t.dim() >= 2)

    layers = [size(layer) for layer in model.layers]
    head = size(model.lm_head)
    return (sum(layers[:k]) + head) / (sum(layers) + head)


class EarlyExitProposer(Proposer):
    """Drafts with the first ``layer`` layers of ``engine``'s model."""

    name = "early_exit"

    def __init__(self, engine: LLMEngine, layer: int) -> None:
        model = engine.model
        if not hasattr(model, "layers") or not 1 <= layer < len(model.layers):
            raise ValueError(f"early_exit_layer must be in 1..{len(model.layers) - 1}, got {layer}")
        self.engine, self.model, self.layer = engine, model, layer
        self.cost_per_token = layer_cost(model, layer)

    @classmethod
    def for_engine(cls, engine: LLMEngine, layer: int | None) -> EarlyExitProposer:
        """``layer`` None: a quarter of the model's layers."""
        if engine.config.tensor_parallel_size > 1 or engine.config.max_weight_memory_mb:
            raise ValueError("speculative early_exit runs on a single in-memory model "
                             "(not with tensor parallelism or weight streaming)")
        return cls(engine, layer or max(1, engine.model_config.num_layers // 4))

    @torch.inference_mode()
    def propose(self, seqs: list[Sequence], lengths: list[int]) -> list[Draft]:
        drafts = [([], []) for _ in seqs]
        want = {s.seq_id: s.num_tokens - 1 + k for s, k in zip(seqs, lengths, strict=True)
                if k > 0}
        if not want:
            return [NO_DRAFT] * len(seqs)
        with self.engine.scratch_kv(want) as tables:
            if tables is None:  # no blocks to lend: no drafts this step
                return [NO_DRAFT] * len(seqs)
            active = [i for i, k in enumerate(lengths) if k > 0]
            step = 0
            while active:
                tokens = [seqs[i].token_ids[-1] if step == 0 else drafts[i][0][-1]
                          for i in active]
                ids, conf = self._step([seqs[i] for i in active], tokens, step, tables)
                for i, t, c in zip(active, ids, conf, strict=True):
                    drafts[i][0].append(t)
                    drafts[i][1].append(c)
                step += 1
                active = [i for i in active if step < lengths[i]]
        return [Draft(t, c) for t, c in drafts]

    def _step(self, seqs: list[Sequence], tokens: list[int], step: int,
              tables: dict[str, list[int]]) -> tuple[list[int], list[float]]:
        """One token per sequence through the first layers: (argmax ids, their probs)."""
        runner, model = self.engine.runner, self.model
        device = runner.device
        starts = [s.num_tokens - 1 + step for s in seqs]
        slices = [SeqSlice(tables[s.seq_id], c, 1) for s, c in zip(seqs, starts, strict=True)]
        meta = build_attention_metadata(slices, runner.block_size, runner.kv_caches,
                                        model.cfg.sliding_window, device, runner.attention)
        input_ids = torch.tensor(tokens, dtype=torch.long, device=device)
        pos = torch.tensor(starts, dtype=torch.long, device=device)
        x = model.embed_tokens(input_ids)  # (B, hidden)
        ropes = model.rope_tables(pos, x.dtype)
        for layer, rope in zip(model.layers[: self.layer], ropes, strict=False):
            x = layer(x, rope, meta)
        probs = model.compute_logits(model.norm(x)).softmax(dim=-1)  # (B, V)
        top = probs.max(dim=-1)
        return top.indices.tolist(), top.values.tolist()


@dataclass(frozen=True)
class ExitLayerReport:
    """Per candidate layer: how often its exit agrees with the full model's next token,
    its cost, and the best speed-up ``E(K) / (1 + K * cost)`` it could give at batch 1."""

    layer: int
    agreement: float
    cost: float
    speedup: float


@torch.inference_mode()
def measure_exit_layers(engine: LLMEngine, token_ids: list[list[int]],
                        k_max: int = 5) -> list[ExitLayerReport]:
    """Teacher-forced agreement of every layer's exit with the final layer on ``token_ids``
    (one dense forward per text, hidden states read after each layer). Returns a report
    per layer 1..L-1; the best ``layer`` has the largest ``speedup``."""
    from thinkstream.speculative.adaptive import expected_tokens

    model, runner = engine.model, engine.runner
    n_layers = len(model.layers)
    hits, total = [0] * n_layers, 0
    for ids in token_ids:
        n = len(ids)
        with engine.scratch_kv({"measure-exit-layers": n}) as tables:
            if tables is None:
                raise ValueError(f"a text of {n} tokens does not fit the KV pool")
            slices = [SeqSlice(tables["measure-exit-layers"], 0, n)]
            meta = build_attention_metadata(slices, runner.block_size, runner.kv_caches,
                                            model.cfg.sliding_window, runner.device,
                                            runner.attention)
            x = model.embed_tokens(torch.tensor(ids, device=runner.device))
            ropes = model.rope_tables(torch.arange(n, device=runner.device), x.dtype)
            exits = []
            for layer, rope in zip(model.layers, ropes, strict=True):
                x = layer(x, rope, meta)
                exits.append(model.compute_logits(model.norm(x)).argmax(dim=-1))
        final = exits[-1]
        for k in range(n_layers):
            hits[k] += int((exits[k] == final).sum())
        total += n
    reports = []
    for k in range(1, n_layers):
        a, c = hits[k - 1] / max(total, 1), layer_cost(model, k)
        best = max(expected_tokens(a, K) / (1 + K * c) for K in range(1, k_max + 1))
        reports.append(ExitLayerReport(k, a, c, best))
    return reports
