"""Token masks as packed bitmasks, applied to logits (pure torch; no grammar library here).

A mask row is ``ceil(V / 32)`` int32 words; bit ``j % 32`` of word ``j // 32`` set means
token ``j`` is allowed (the layout llguidance writes). A row of all ones (``-1`` words) allows
every token: that is what an unconstrained row in a mixed batch carries, and such rows are
left untouched.
"""

from __future__ import annotations

import torch
from torch import Tensor

ALL_ALLOWED = -1  # an int32 word with every bit set


def bitmask_width(vocab_size: int) -> int:
    """int32 words per row for a vocabulary of ``vocab_size`` tokens."""
    return (vocab_size + 31) // 32


def full_bitmask(rows: int, vocab_size: int) -> Tensor:
    """(rows, W) int32 allowing every token."""
    return torch.full((rows, bitmask_width(vocab_size)), ALL_ALLOWED, dtype=torch.int32)


def unpack_bitmask(bitmask: Tensor, vocab_size: int) -> Tensor:
    """(B, W) int32 -> (B, vocab_size) bool. Tokens past ``32 * W`` are not allowed."""
    shifts = torch.arange(32, dtype=torch.int32, device=bitmask.device)
    bits = (bitmask.unsqueeze(-1) >> shifts) & 1  # (B, W, 32)
    allowed = bits.flatten(1).bool()  # (B, 32 * W)
    if allowed.shape[1] >= vocab_size:
        return allowed[:, :vocab_size]
    pad = allowed.new_zeros(allowed.shape[0], vocab_size - allowed.shape[1])
    return torch.cat([allowed, pad], dim=1)


def apply_token_bitmask(logits: Tensor, bitmask: Tensor) -> Tensor:
    """Logits (B, V) with every token a row's mask disallows set to -inf (a new tensor; rows
    whose mask allows everything are untouched and cost nothing)."""
    bitmask = bitmask.to(logits.device)
    rows = (bitmask != ALL_ALLOWED).any(dim=1).nonzero().flatten()
    if rows.numel() == 0:
        return logits
    allowed = unpack_bitmask(bitmask[rows], logits.shape[1])
    out = logits.clone()
    out[rows] = logits[rows].masked_fill(~allowed, float("-inf"))
    return out
