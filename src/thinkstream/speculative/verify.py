"""Verification of draft tokens: which drafts a sequence keeps, and the token after them.

The target model scores the last token and every draft in one forward; row j of a
sequence's rows is the target's distribution p_j for the token after draft j (row 0: after
the last real token). Speculative sampling (Leviathan et al. 2023, Chen et al. 2023)
accepts draft d_j with probability min(1, p_j(d_j) / q_j(d_j)), and at the first rejection
draws from norm(max(0, p_j - q_j)); when every draft is accepted the last row gives one
more token. That output is distributed exactly as the target's.

Every proposer here is deterministic (q_j is one-hot on d_j), and then the rule is the same
as: draw x_j ~ p_j for each row (the sampler already does, with the sequence's own
generator), accept d_j while x_j == d_j, and keep x_j at the first mismatch:

    P(accept d_j) = p_j(d_j) = min(1, p_j(d_j) / 1)
    on rejection, x_j ~ p_j restricted to tokens != d_j = norm(max(0, p_j - onehot(d_j)))

Greedy rows are the special case of a point mass p_j: the longest prefix of drafts equal
to the target's argmax, plus the target's argmax after it, which is token for token what
decoding without speculation gives. ``rejection_sample`` is the general rule for drafts
with a distribution q (kept for proposers that sample; the tests hold both to the target
distribution).

This module imports torch only for ``rejection_sample``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def accept_drafts(sampled: list[int], drafts: list[list[int]]) -> list[list[int]]:
    """Tokens each sequence keeps. ``sampled`` holds one target sample per row, the rows of
    sequence i being ``len(drafts[i]) + 1`` consecutive entries (its last real token's
    row, then one per draft). Returns per sequence the accepted drafts plus the sample
    after them: 1 to ``len(drafts[i]) + 1`` tokens."""
    out: list[list[int]] = []
    pos = 0
    for draft in drafts:
        rows = sampled[pos : pos + len(draft) + 1]
        a = 0
        while a < len(draft) and rows[a] == draft[a]:
            a += 1
        out.append(rows[: a + 1])
        pos += len(draft) + 1
    if pos != len(sampled):
        raise ValueError(f"sampled: {len(sampled)} rows for drafts that need {pos}")
    return out


def rejection_sample(
    target_probs: torch.Tensor, draft_ids: list[int], draft_probs: torch.Tensor | None,
    generator: torch.Generator | None = None,
) -> list[int]:
    """The standard speculative sampling rule for one sequence.

    ``target_probs`` (m + 1, V) float: p_j per row; ``draft_ids`` the m drafts;
    ``draft_probs`` (m, V) the proposer's q_j (None: deterministic drafts, q_j one-hot).
    Draws with ``generator``. Returns the accepted drafts plus one token (1..m+1 ids).
    """
    import torch

    out: list[int] = []
    for j, d in enumerate(draft_ids):
        p = target_probs[j]
        q = torch.zeros_like(p)
        if draft_probs is None:
            q[d] = 1.0
        else:
            q = draft_probs[j].to(p.dtype)
        u = torch.rand((), generator=generator, device=p.device)
        if float(u) * float(q[d]) < float(p[d]):  # u < min(1, p/q), without dividing by 0
            out.append(d)
            continue
        residual = (p - q).clamp_min(0)
        if float(residual.sum()) <= 0:  # p == q: rejection has probability 0
            residual = p
        out.append(int(torch.multinomial(residual, 1, generator=generator)))
        return out
    last = target_probs[len(draft_ids)]
    out.append(int(torch.multinomial(last, 1, generator=generator)))
    return out
