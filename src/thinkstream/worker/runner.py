"""The model runner: turns a scheduler output into tensors, runs the forward pass over the
paged KV cache, and samples one token for every sequence that reached its last token.

Per step it builds the packed inputs (one row per new token, explicit positions), the
attention metadata (once, shared by all layers), performs pending block copies (forks,
truncations), and computes logits only for the rows that need them. With
``compile_decode`` a pure decode step runs as a compiled / captured graph instead
(``worker/graphs.py``); every other step runs eagerly.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from thinkstream.attention.metadata import (
    AttentionConfig,
    SeqSlice,
    allocate_kv_caches,
    build_attention_metadata,
)
from thinkstream.config import ModelConfig
from thinkstream.engine.request import Sequence, TokenLogprob
from thinkstream.engine.scheduler import SchedulerOutput
from thinkstream.models.llama import LlamaForCausalLM
from thinkstream.speculative.verify import accept_drafts
from thinkstream.worker.graphs import CompiledDecode, GraphDecode, batch_buckets
from thinkstream.worker.sampling import (
    build_sampling_tensors,
    compute_ranked_logprobs,
    penalize,
    sample,
)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class StepBatch:
    """One step's model inputs as plain values (what a tensor-parallel rank 0 broadcasts):
    packed token ids and positions (T,), one ``SeqSlice`` per sequence, the packed rows
    whose logits are wanted, and the (src, dst) block copies to perform first."""

    ids: list[int]
    positions: list[int]
    slices: list[SeqSlice]
    rows: list[int]
    block_copies: list[tuple[int, int]]


def kv_bytes_per_block(cfg: ModelConfig, block_size: int, dtype: torch.dtype) -> int:
    """Bytes of one block's keys and values over every layer, in the cache's ``dtype``."""
    elem = torch.empty(0, dtype=dtype).element_size()
    return 2 * cfg.num_layers * block_size * cfg.num_kv_heads * cfg.head_dim * elem


class ModelRunner:
    def __init__(
        self, model: LlamaForCausalLM, cfg: ModelConfig, num_blocks: int, block_size: int,
        dtype: torch.dtype, device: torch.device | str, compile_decode: bool = False,
        max_num_seqs: int = 64, attention: AttentionConfig | None = None,
        kv_dtype: torch.dtype | None = None,
    ) -> None:
        """``dtype``: the model's activations; ``kv_dtype``: the KV cache's elements (None:
        ``dtype``; ``EngineConfig.kv_cache_dtype``). Writes round into it, reads widen."""
        self.model = model
        self.cfg = cfg
        self.block_size = block_size
        # precision and thresholds of every step's attention; default: "auto" for ``dtype``
        self.attention = attention or AttentionConfig.for_engine("auto", dtype)
        self.device = torch.device(device)
        num_slots = num_blocks * block_size
        self.kv_dtype = kv_dtype or dtype
        self.kv_caches = allocate_kv_caches(  # compiled: + the scratch slot of padded rows
            cfg.num_layers, num_slots + int(compile_decode), cfg.num_kv_heads, cfg.head_dim,
            self.kv_dtype, device,
        )
        self.decode_graph: CompiledDecode | GraphDecode | None = None
        if compile_decode and self.device.type == "cuda":
            self.decode_graph = GraphDecode(
                model, self.kv_caches, num_slots, batch_buckets(max_num_seqs), self.device
            )
        elif compile_decode and model.fused is None:  # the native stack is faster than a graph
            self.decode_graph = CompiledDecode(model)

    def close(self) -> None:
        """Release what the runner holds beyond memory (tensor-parallel ranks do)."""

    def check_health(self) -> None:
        """Raise if the runner cannot step any more (a tensor-parallel rank died)."""

    def copy_blocks(self, copies: list[tuple[int, int]]) -> None:
        if not copies:
            return
        bs = self.block_size
        src = torch.tensor([s * bs + i for s, _ in copies for i in range(bs)], device=self.device)
        dst = torch.tensor([d * bs + i for _, d in copies for i in range(bs)], device=self.device)
        for k, v in self.kv_caches:
            k[dst] = k[src]
            v[dst] = v[src]

    def forward(
        self, out: SchedulerOutput, block_tables: dict[str, list[int]]
    ) -> tuple[torch.Tensor, list[int], list[tuple[int, int]]]:
        """Run the model on every scheduled token.

        Returns logits (R, V) for the needed rows, the row of each sequence that completes
        (-1 if none; its computed drafts' rows follow it), and per sequence the (first,
        count) range of its prompt-logprob rows.
        """
        batch, last_row, prompt_rows = self.prepare(out, block_tables)
        return self.execute(batch), last_row, prompt_rows

    def prepare(
        self, out: SchedulerOutput, block_tables: dict[str, list[int]]
    ) -> tuple[StepBatch, list[int], list[tuple[int, int]]]:
        """The step's inputs as plain values (``StepBatch``), and the row bookkeeping."""
        ids: list[int] = []
        positions: list[int] = []
        slices: list[SeqSlice] = []
        rows: list[int] = []  # packed token indices whose logits are needed
        last_row: list[int] = []
        prompt_rows: list[tuple[int, int]] = []
        for s in out.scheduled:
            seq, n, start = s.seq, s.num_new_tokens, s.seq.num_computed_tokens
            offset = len(ids)
            ids.extend(seq.input_ids(start, n))
            if seq.positions:
                positions.extend(seq.position(i) for i in range(start, start + n))
            else:
                base = start + seq.position_offset
                positions.extend(range(base, base + n))
            visible = None
            if seq.kv_prefix_visible and start < len(seq.kv_prefix_visible):
                visible = tuple(seq.visible_prefix(i) for i in range(start, start + n))
            if visible is not None and max(visible) == 0:  # these tokens see no other cache
                prefix, visible = (), None  # (whose source may be evicted meanwhile)
            else:
                prefix = tuple((block_tables[e[0]], *e[1:]) for e in seq.kv_prefix)
            verify = start + n > seq.num_tokens  # drafts among the new tokens
            slices.append(SeqSlice(block_tables[seq.seq_id], start, n, prefix, visible, verify))
            if _needs_prompt_logprobs(seq, start):
                first = len(rows)
                count = min(start + n, seq.num_prompt_tokens) - start
                rows.extend(range(offset, offset + count))
                prompt_rows.append((first, count))
            else:
                prompt_rows.append((-1, 0))
            if s.completes and seq.wants_sample:
                if prompt_rows[-1][1] and start + n == seq.num_prompt_tokens:
                    last_row.append(prompt_rows[-1][0] + prompt_rows[-1][1] - 1)
                else:  # the last token's row, then one per draft computed after it
                    last_row.append(len(rows))
                    rows.extend(range(offset + seq.num_tokens - 1 - start, offset + n))
            else:
                last_row.append(-1)
        batch = StepBatch(ids, positions, slices, rows, list(out.block_copies))
        return batch, last_row, prompt_rows

    @torch.inference_mode()
    def execute(self, batch: StepBatch) -> torch.Tensor:
        """Block copies, then the forward of ``batch``: float32 logits (len(rows), V)."""
        self.copy_blocks(batch.block_copies)
        meta = build_attention_metadata(batch.slices, self.block_size, self.kv_caches,
                                        self.cfg.sliding_window, self.device, self.attention)
        input_ids = torch.tensor(batch.ids, dtype=torch.long, device=self.device)
        pos = torch.tensor(batch.positions, dtype=torch.long, device=self.device)
        logits = None if self.decode_graph is None else self.decode_graph(input_ids, pos, meta)
        if logits is not None:  # a pure decode step, run as a graph (logits of every row)
            return _take(logits, batch.rows)
        hidden = self.model(input_ids, pos, meta)
        return self.model.compute_logits(_take(hidden, batch.rows))

    @torch.inference_mode()
    def sample(
        self, logits: torch.Tensor, rows: list[int], seqs: list[Sequence], eos_ids: frozenset[int],
        token_mask: torch.Tensor | None = None,
    ) -> tuple[list[list[int]], list[list[TokenLogprob | None]]]:
        """The tokens each sequence gains this step: sequence i draws from logits row
        rows[i] among the tokens row i of ``token_mask`` allows (packed,
        ``structured.mask``; None: any). Log-probabilities are the model's (before bias,
        bans and the mask).

        A sequence whose drafts were computed (``seq.num_verified_drafts`` = m, their rows
        follow rows[i]) is verified: rows i..i+m are sampled as if each draft so far were
        the sequence's token (penalties and ``min_tokens`` see them), and the sequence
        keeps the longest prefix of drafts equal to the samples, plus the sample after it
        (``speculative.verify``). Without drafts that is one token, drawn exactly as
        before.
        """
        if not seqs:
            return [], []
        drafts = [s.draft_token_ids[: s.num_verified_drafts] for s in seqs]
        counts = [len(d) + 1 for d in drafts]
        flat_rows = [r + j for r, c in zip(rows, counts, strict=True) for j in range(c)]
        owners = [i for i, c in enumerate(counts) for _ in range(c)]
        steps = [j for c in counts for j in range(c)]
        x = _take(logits, flat_rows)
        flat = [seqs[i] for i in owners]
        banned = [_banned_ids(seq, eos_ids, j) for seq, j in zip(flat, steps, strict=True)]
        if token_mask is not None and len(flat) != len(seqs):
            token_mask = token_mask[torch.tensor(owners, device=token_mask.device)]
        st = build_sampling_tensors(
            [s.params for s in flat], [s.generator for s in flat], x.shape[1], x.device, banned,
            token_mask,
        )
        processed = penalize(
            x, st, [s.token_ids[: s.num_prompt_tokens] for s in flat],
            [s.output_token_ids + drafts[i][:j] for s, i, j in zip(flat, owners, steps,
                                                                   strict=True)],
        )
        # a seeded sequence with drafts draws noise for every computed row; it keeps only
        # the rows up to its first rejection: its generator is rewound to what drawing just
        # those rows leaves (decoding without drafts), so its tokens never depend on how
        # many drafts the batch gave it
        rewind = {i: seqs[i].generator.get_state() for i, d in enumerate(drafts)
                  if d and seqs[i].generator is not None and not st.all_greedy}
        sampled = sample(processed, st)
        per_seq = accept_drafts(sampled.tolist(), drafts)
        for i, state in rewind.items():
            g = seqs[i].generator
            g.set_state(state)
            for _ in per_seq[i]:  # the draws of the kept rows (sampling._draw, row by row)
                torch.empty(x.shape[1], dtype=torch.float32, device=x.device).exponential_(generator=g)
        keep = [sum(counts[:i]) + j for i, toks in enumerate(per_seq) for j in range(len(toks))]
        want = [seqs[owners[r]].params.logprobs for r in keep]
        logprobs: list[TokenLogprob | None] = [None] * len(keep)
        if any(k is not None for k in want):
            k = max(k or 0 for k in want)
            kept = _take(sampled.unsqueeze(1), keep).squeeze(1)
            chosen, ranks, top_ids, top_vals = compute_ranked_logprobs(_take(x, keep), kept,
                                                                       max(k, 1))
            logprobs = [
                None if w is None else _entry(int(t), float(c), r, ti[:w], tv[:w])
                for w, t, c, r, ti, tv in zip(
                    want, kept.tolist(), chosen.tolist(), ranks.tolist(),
                    top_ids.tolist(), top_vals.tolist(), strict=True,
                )
            ]
        out_lps, pos = [], 0
        for toks in per_seq:
            out_lps.append(logprobs[pos : pos + len(toks)])
            pos += len(toks)
        return per_seq, out_lps

    @torch.inference_mode()
    def prompt_logprobs(
        self, logits: torch.Tensor, seq: Sequence, first_row: int, count: int, start: int
    ) -> list[TokenLogprob | None]:
        """Logprob of each prompt token given the ones before it, for the chunk of prompt
        positions start..start+count-1 (row j predicts token start+j+1)."""
        k = max(seq.params.prompt_logprobs or 0, 1)
        end = min(start + count, seq.num_prompt_tokens - 1)  # the last prompt row predicts output
        entries: list[TokenLogprob | None] = [None] if start == 0 else []
        if end <= start:
            return entries
        x = logits[first_row : first_row + end - start]
        targets = torch.tensor(seq.token_ids[start + 1 : end + 1], device=x.device)
        chosen, ranks, top_ids, top_vals = compute_ranked_logprobs(x, targets, k)
        w = seq.params.prompt_logprobs or 0
        for t, c, r, ti, tv in zip(
            targets.tolist(), chosen.tolist(), ranks.tolist(), top_ids.tolist(),
            top_vals.tolist(), strict=True
        ):
            entries.append(_entry(t, c, r, ti[:w], tv[:w]))
        return entries


def _take(x: torch.Tensor, rows: list[int]) -> torch.Tensor:
    """x[rows], without the copy when rows are exactly 0..len(x)-1 (a decode step)."""
    if len(rows) == x.shape[0] and rows == list(range(len(rows))):
        return x
    return x[torch.tensor(rows, dtype=torch.long, device=x.device)]


def _needs_prompt_logprobs(seq: Sequence, start: int) -> bool:
    done = seq.prompt_logprobs is not None and len(seq.prompt_logprobs) == seq.num_prompt_tokens
    return seq.wants_prompt_logprobs and start < seq.num_prompt_tokens and not done


def _banned_ids(seq: Sequence, eos_ids: frozenset[int], ahead: int = 0) -> tuple[int, ...]:
    """Ids a row may not take: eos / stop ids until ``min_tokens`` outputs (``ahead``:
    drafts before this row)."""
    if seq.num_output_tokens + ahead >= seq.params.min_tokens:
        return ()
    eos = () if seq.params.ignore_eos else tuple(eos_ids)
    return eos + tuple(seq.params.stop_token_ids)


def _entry(token_id: int, logprob: float, rank: int, top_ids: list[int],
           top_vals: list[float]) -> TokenLogprob:
    """A position's record. The chosen token's rank is its place among the top ones when it
    is one of them, else past them (a tie with the last one does not make it a top one)."""
    if token_id in top_ids:
        rank = top_ids.index(token_id) + 1
    else:
        rank = max(rank, len(top_ids) + 1)
    return TokenLogprob(token_id, logprob, tuple(zip(top_ids, top_vals, strict=True)), rank)
