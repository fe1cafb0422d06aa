"""Views at shifted positions (``attention/shift.py``): a sequence reading a range of
another's cache at positions shifted by a constant gets the logits of a dense pass that
places the same tokens at the shifted positions, on every attention path, for Llama and
Gemma 3 (local and global RoPE bases)."""

from __future__ import annotations

import pytest
import torch
from helpers.tiny import reference_logits, tiny_checkpoint

from thinkstream.attention.metadata import (
    AttentionConfig,
    Precision,
    SeqSlice,
    allocate_kv_caches,
    build_attention_metadata,
)
from thinkstream.models.registry import build_model

BS = 4
X = [5, 17, 33, 8]  # another sequence viewed first, unshifted (positions 0..3)
S = [40, 41, 7, 99, 120, 3, 64, 250, 11, 19]  # the source: positions 0..9 as cached
START, SHIFT = 3, 1  # the view: S[3:10] at positions 4..10 (right after X)
OWN = [12, 77, 200, 9, 31, 150]  # the viewer's own tokens: positions 11..16
SPLITS = ([5, 1], [2, 3, 1], [3, 3])  # three viewers computing OWN in different chunks


def _reference(cfg, tensors) -> torch.Tensor:
    """Dense pass over X + S + OWN with S where the view places it (S[j] at position
    j + SHIFT; S sees only S, as when it was cached: attention is relative, so its hidden
    states are those cached at 0..9) and OWN seeing X, S[START:] and itself. Returns the
    logits of OWN's rows."""
    ids = X + S + OWN
    pos = list(range(4)) + [j + SHIFT for j in range(len(S))] + list(range(11, 17))
    n, nx, ns = len(ids), len(X), len(S)
    causal = torch.ones(n, n, dtype=torch.bool).tril()
    allowed = causal.clone()
    allowed[nx : nx + ns, :nx] = False  # S never saw X
    allowed[nx + ns :, nx : nx + START] = False  # the view starts at S[START]
    return reference_logits(cfg, tensors, ids, pos, allowed)[nx + ns :]


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
@pytest.mark.parametrize("precision", [Precision.PARITY, Precision.FLOAT32])
def test_shifted_view_matches_dense_reference(arch: str, precision: Precision) -> None:
    overrides = {"sliding_window": 64} if arch == "gemma3" else {}  # windows count context
    ckpt = tiny_checkpoint(arch, **overrides)
    cfg = ckpt.config
    model = build_model(cfg, ckpt.tensors)
    caches = allocate_kv_caches(cfg.num_layers, 64 * BS, cfg.num_kv_heads, cfg.head_dim,
                                torch.float32, "cpu")
    config = AttentionConfig(precision, short_chunk=4, cascade_min_shared=1)
    tx, ts = [0, 1], [2, 3, 4]
    tables = [[10 + 2 * i, 11 + 2 * i] for i in range(len(SPLITS))]
    prefix = ((tx, 4), (ts, len(S), START, SHIFT))

    def run(slices: list[SeqSlice], ids: list[int], pos: list[int]) -> torch.Tensor:
        meta = build_attention_metadata(slices, BS, caches, cfg.sliding_window, "cpu", config)
        with torch.inference_mode():
            hidden = model(torch.tensor(ids), torch.tensor(pos), meta)
            return model.compute_logits(hidden)

    run([SeqSlice(tx, 0, 4), SeqSlice(ts, 0, len(S))], X + S, list(range(4)) + list(range(len(S))))
    got: list[list[torch.Tensor]] = [[] for _ in SPLITS]
    done = [0] * len(SPLITS)
    for step in range(3):
        slices, ids, pos, rows = [], [], [], []
        for v, split in enumerate(SPLITS):
            if step < len(split):
                n = split[step]
                slices.append(SeqSlice(tables[v], done[v], n, prefix))
                ids += OWN[done[v] : done[v] + n]
                pos += list(range(11 + done[v], 11 + done[v] + n))
                rows.append((v, len(ids) - n, n))
                done[v] += n
        logits = run(slices, ids, pos)
        for v, first, n in rows:
            got[v].append(logits[first : first + n])
    want = _reference(cfg, ckpt.tensors)
    for v in range(len(SPLITS)):
        diff = (torch.cat(got[v]) - want).abs().max().item()
        assert diff < 1e-4, (v, diff)


def test_shift_composes_rotations() -> None:
    """Rotating a key stored at p by the angle of d gives the key at p + d (the identity
    the views rest on), with each base's table."""
    from thinkstream.attention.shift import rotate
    from thinkstream.models.layers import apply_rope, rope_cos_sin, rope_inv_freq

    g = torch.Generator().manual_seed(0)
    k = torch.randn(6, 2, 16, generator=g)
    p = torch.tensor([0, 3, 7, 100, 250, 511])
    for theta in (1e4, 1e6):
        inv = rope_inv_freq(16, theta, None)
        stored = apply_rope(k, *rope_cos_sin(p, inv, torch.float32))
        deltas = torch.tensor([0, 5, -2])
        table = rope_cos_sin(deltas, inv, torch.float32)
        idx = torch.tensor([1, 1, 2, 0, 1, 2])
        want = apply_rope(k, *rope_cos_sin(p + deltas[idx], inv, torch.float32))
        assert (rotate(stored, idx, table) - want).abs().max() < 1e-4
