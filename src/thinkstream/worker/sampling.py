"""The sampler: pure functions from logits (B, V) to one token id per row.

The model runner calls ``sample`` once per engine step for every row that needs a token.
Per-row parameters are gathered once per step into ``SamplingTensors``; each filter is a
batched function that takes a tensor and returns a new one. Randomness comes only from the
explicit ``torch.Generator`` of each row (``None`` = the default generator), and each row
draws its own noise, so a seeded request gets the same tokens whatever else is in the batch
and in whatever order.

Ties are handled by value, never by position: top-k keeps every token tied with the k-th
largest logit, top-p keeps every token tied with the last token it needs, and argmax takes
the lowest id.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from thinkstream.sampling_params import SamplingParams
from thinkstream.structured.mask import apply_token_bitmask

# Floor for the exponential noise so ``probs / q`` never divides by zero.
_MIN_NOISE = 1e-10


@dataclass
class SamplingTensors:
    """Per-row sampling parameters of one step, as tensors on the logits' device.

    Greedy rows carry temperature 1.0 (they never use it) so the division is safe. ``top_k``
    holds the vocabulary size where the filter is off. The ``no_*`` and ``all_greedy`` flags
    are computed on the host from the params, so skipping work costs no device sync.
    """

    temperature: Tensor  # (B,) float32
    top_k: Tensor  # (B,) int64, V where off
    top_p: Tensor  # (B,) float32
    min_p: Tensor  # (B,) float32
    presence: Tensor  # (B,) float32
    frequency: Tensor  # (B,) float32
    repetition: Tensor  # (B,) float32
    greedy: Tensor  # (B,) bool
    generators: list[torch.Generator | None]  # on the logits' device; None = default RNG
    banned: list[tuple[int, ...]]  # per row, ids forced to -inf (min_tokens: eos / stop ids)
    logit_bias: list[tuple[tuple[int, float], ...]]  # per row, (id, bias) added to the logits
    # (B, ceil(V / 32)) int32 packed allowed tokens (``structured.mask``; all bits set in a
    # free row), or None: every row free
    token_bitmask: Tensor | None
    all_greedy: bool
    no_penalties: bool
    no_logit_bias: bool
    no_top_k: bool
    no_top_p: bool
    no_min_p: bool


def build_sampling_tensors(
    params: Sequence[SamplingParams],
    generators: Sequence[torch.Generator | None],
    vocab_size: int,
    device: torch.device | str = "cpu",
    banned: Sequence[Sequence[int]] | None = None,
    token_bitmask: Tensor | None = None,
) -> SamplingTensors:
    """Gather the per-row params of one step into tensors (one host-to-device copy each).
    ``token_bitmask``: the rows' allowed tokens, packed (``structured.mask``)."""
    if len(generators) != len(params):
        raise ValueError(f"generators: need one per row ({len(params)}), got {len(generators)}")
    if banned is not None and len(banned) != len(params):
        raise ValueError(f"banned: need one list per row ({len(params)}), got {len(banned)}")
    if token_bitmask is not None and token_bitmask.shape[0] != len(params):
        raise ValueError(f"token_bitmask: need one row per row ({len(params)}), "
                         f"got {token_bitmask.shape[0]}")
    greedy = [p.greedy for p in params]
    top_k = [p.top_k if 0 < p.top_k < vocab_size else vocab_size for p in params]

    def f32(values: list[float]) -> Tensor:
        return torch.tensor(values, dtype=torch.float32, device=device)

    return SamplingTensors(
        temperature=f32([1.0 if g else p.temperature for p, g in zip(params, greedy, strict=True)]),
        top_k=torch.tensor(top_k, dtype=torch.int64, device=device),
        top_p=f32([p.top_p for p in params]),
        min_p=f32([p.min_p for p in params]),
        presence=f32([p.presence_penalty for p in params]),
        frequency=f32([p.frequency_penalty for p in params]),
        repetition=f32([p.repetition_penalty for p in params]),
        greedy=torch.tensor(greedy, dtype=torch.bool, device=device),
        generators=list(generators),
        banned=[tuple(b) for b in banned] if banned is not None else [() for _ in params],
        logit_bias=[p.logit_bias for p in params],
        token_bitmask=None if token_bitmask is None else token_bitmask.to(device),
        all_greedy=all(greedy),
        no_penalties=all(
            p.presence_penalty == 0 and p.frequency_penalty == 0 and p.repetition_penalty == 1
            for p in params
        ),
        no_logit_bias=not any(p.logit_bias for p in params),
        no_top_k=all(k == vocab_size for k in top_k),
        no_top_p=all(p.top_p >= 1.0 for p in params),
        no_min_p=all(p.min_p <= 0.0 for p in params),
    )


def token_counts(
    token_ids: Sequence[Sequence[int]], vocab_size: int, device: torch.device | str = "cpu"
) -> Tensor:
    """Occurrences of each id per row: (B, V) int64, built by one ``scatter_add`` over padded ids."""
    width = max((len(ids) for ids in token_ids), default=0)
    # Pad with the out-of-vocabulary id V into an extra column that is dropped afterwards.
    padded = torch.full((len(token_ids), width), vocab_size, dtype=torch.int64)
    for row, ids in enumerate(token_ids):
        padded[row, : len(ids)] = torch.as_tensor(ids, dtype=torch.int64)
    padded = padded.to(device)
    counts = torch.zeros(len(token_ids), vocab_size + 1, dtype=torch.int64, device=device)
    counts.scatter_add_(1, padded, torch.ones_like(padded))
    return counts[:, :vocab_size]


def apply_penalties(
    logits: Tensor,
    prompt_mask: Tensor,
    output_counts: Tensor,
    presence: Tensor,
    frequency: Tensor,
    repetition: Tensor,
) -> Tensor:
    """vLLM's penalties. ``prompt_mask`` (B, V) bool, ``output_counts`` (B, V), params (B,).

    Repetition (tokens seen in the prompt or the output): positive logits are divided by the
    penalty, negative ones multiplied. Then, on output tokens only, frequency subtracts
    ``frequency * count`` and presence subtracts ``presence * (count > 0)``.
    """
    counts = output_counts.to(logits.dtype)
    in_output = output_counts > 0
    seen = prompt_mask | in_output
    rep = repetition.unsqueeze(1).to(logits.dtype)  # (B, 1)
    penalized = torch.where(logits > 0, logits / rep, logits * rep)
    out = torch.where(seen, penalized, logits)
    out = out - frequency.unsqueeze(1).to(logits.dtype) * counts
    return out - presence.unsqueeze(1).to(logits.dtype) * in_output.to(logits.dtype)


def penalize(
    logits: Tensor,
    st: SamplingTensors,
    prompt_ids: Sequence[Sequence[int]],
    output_ids: Sequence[Sequence[int]],
) -> Tensor:
    """Convenience for the runner: build the masks from token ids and apply the penalties."""
    if st.no_penalties:
        return logits
    vocab = logits.shape[1]
    prompt_mask = token_counts(prompt_ids, vocab, logits.device) > 0
    counts = token_counts(output_ids, vocab, logits.device)
    return apply_penalties(logits, prompt_mask, counts, st.presence, st.frequency, st.repetition)


def apply_banned(logits: Tensor, banned: Sequence[Sequence[int]]) -> Tensor:
    """Set the listed ids of each row to -inf (used to hold back eos / stop ids before min_tokens)."""
    rows = [row for row, ids in enumerate(banned) for _ in ids]
    if not rows:
        return logits
    cols = [i for ids in banned for i in ids]
    index = torch.tensor([rows, cols], device=logits.device)  # (2, n): row ids, token ids
    out = logits.clone()
    out[index[0], index[1]] = float("-inf")
    return out


def apply_logit_bias(logits: Tensor, bias: Sequence[Sequence[tuple[int, float]]]) -> Tensor:
    """Add each row's ``(token id, bias)`` pairs to its logits (OpenAI's ``logit_bias``: -100
    makes a token all but impossible, +100 all but certain). Ids past the vocabulary are
    ignored."""
    vocab = logits.shape[1]
    pairs = [(row, t, b) for row, items in enumerate(bias) for t, b in items if t < vocab]
    if not pairs:
        return logits
    rows, cols, values = zip(*pairs, strict=True)
    index = torch.tensor([rows, cols], device=logits.device)  # (2, n): row ids, token ids
    out = logits.clone()
    out[index[0], index[1]] += torch.tensor(values, dtype=logits.dtype, device=logits.device)
    return out


def apply_allowed(logits: Tensor, st: SamplingTensors) -> Tensor:
    """Bans, then the token mask (disallowed tokens -inf). Where the two leave a row
    nothing (``min_tokens`` banning the EOS that is all a finished grammar allows), the
    mask alone applies: the grammar wins."""
    banned = apply_banned(logits, st.banned)
    if st.token_bitmask is None:
        return banned
    masked = apply_token_bitmask(banned, st.token_bitmask)
    if masked is banned or banned is logits:  # no row constrained / none banned: none empty
        return masked
    empty = torch.isneginf(masked).all(dim=1)
    if bool(empty.any()):
        masked[empty] = apply_token_bitmask(logits[empty], st.token_bitmask[empty])
    return masked


def apply_temperature(logits: Tensor, temperature: Tensor) -> Tensor:
    """Divide each row by its temperature (B,); greedy rows must carry a non-zero placeholder."""
    return logits / temperature.unsqueeze(1)


def apply_top_k(logits: Tensor, top_k: Tensor) -> Tensor:
    """Keep the ``top_k`` (B,) largest logits of each row; every tie with the k-th is kept."""
    sorted_desc = logits.sort(dim=1, descending=True).values
    kth = sorted_desc.gather(1, (top_k - 1).clamp(0, logits.shape[1] - 1).unsqueeze(1))  # (B, 1)
    return logits.masked_fill(logits < kth, float("-inf"))


def apply_top_p(logits: Tensor, top_p: Tensor) -> Tensor:
    """Keep the smallest set of most likely tokens whose probability reaches ``top_p`` (B,).

    A token is kept when the mass of the tokens strictly ahead of it in the sorted order is
    below ``p``; every token tied with the last kept probability is kept too. Rows with
    ``p >= 1`` are untouched.
    """
    probs = logits.softmax(dim=1)
    sorted_probs = probs.sort(dim=1, descending=True).values
    mass_ahead = sorted_probs.cumsum(dim=1) - sorted_probs  # exclusive cumsum
    keep = (mass_ahead < top_p.unsqueeze(1)).sum(dim=1, keepdim=True).clamp_min(1)  # (B, 1)
    cutoff = sorted_probs.gather(1, keep - 1)  # smallest kept probability
    drop = (probs < cutoff) & (top_p < 1.0).unsqueeze(1)
    return logits.masked_fill(drop, float("-inf"))


def apply_min_p(logits: Tensor, min_p: Tensor) -> Tensor:
    """Drop tokens whose probability is below ``min_p`` (B,) times the row's top probability."""
    probs = logits.softmax(dim=1)
    threshold = probs.amax(dim=1, keepdim=True) * min_p.unsqueeze(1)
    return logits.masked_fill(probs < threshold, float("-inf"))


def _draw(probs: Tensor, generators: Sequence[torch.Generator | None]) -> Tensor:
    """One token per row by the exponential race: argmax(probs / q), q ~ Exp(1) per token.

    That is an exact draw from ``probs``. Rows with a generator draw their own noise; the
    rest share one draw from the default generator.
    """
    q = torch.empty_like(probs)
    seeded = [row for row, g in enumerate(generators) if g is not None]
    if len(seeded) < len(generators):
        q.exponential_()
    for row in seeded:
        q[row].exponential_(generator=generators[row])
    return probs.div(q.clamp_min_(_MIN_NOISE)).argmax(dim=1)


def sample(logits: Tensor, st: SamplingTensors) -> Tensor:
    """Pick one token id per row: (B, V) float32 logits -> (B,) int64.

    Steps, in order:
      1. penalties (applied by the caller, see ``penalize``);
      2. logit bias: ``st.logit_bias`` added;
      3. bans: ``st.banned`` ids -> -inf;
      4. token mask: what ``st.token_bitmask`` disallows -> -inf (structured outputs);
      5. greedy rows: argmax (lowest id on ties); if every row is greedy, stop here;
      6. temperature;
      7. top-k;
      8. top-p;
      9. min-p;
      10. softmax;
      11. draw each non-greedy row with its own generator (exponential race).
    """
    if not st.no_logit_bias:
        logits = apply_logit_bias(logits, st.logit_bias)
    logits = apply_allowed(logits, st)
    greedy_ids = logits.argmax(dim=1)
    if st.all_greedy:
        return greedy_ids
    logits = apply_temperature(logits.float(), st.temperature)
    if not st.no_top_k:
        logits = apply_top_k(logits, st.top_k)
    if not st.no_top_p:
        logits = apply_top_p(logits, st.top_p)
    if not st.no_min_p:
        logits = apply_min_p(logits, st.min_p)
    sampled = _draw(logits.softmax(dim=1), st.generators)
    return torch.where(st.greedy, greedy_ids, sampled)


def compute_logprobs(logits: Tensor, token_ids: Tensor, k: int) -> tuple[Tensor, Tensor, Tensor]:
    """Log-probabilities under the raw model logits (vLLM's default: before any processing).

    Returns the chosen tokens' log-probs (B,), and the ``k`` most likely ids (B, k) with their
    log-probs (B, k), most likely first. For prompt logprobs pass the logits of positions
    0..n-2 with the tokens 1..n-1.
    """
    chosen, _, top_ids, top_vals = compute_ranked_logprobs(logits, token_ids, k)
    return chosen, top_ids, top_vals


def compute_ranked_logprobs(logits: Tensor, token_ids: Tensor, k: int,
                            ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``compute_logprobs`` and the chosen tokens' ranks (B,): 1 + the number of tokens
    strictly more likely."""
    logprobs = logits.float().log_softmax(dim=1)
    chosen = logprobs.gather(1, token_ids.long().unsqueeze(1)).squeeze(1)
    ranks = (logprobs > chosen.unsqueeze(1)).sum(dim=1) + 1
    top = logprobs.topk(k, dim=1)
    return chosen, ranks, top.indices, top.values
