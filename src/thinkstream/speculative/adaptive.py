"""How many drafts each request gets this step (FASER-style adaptive length, SpecMemo-style
memory budget).

Per request and draft position i, ``alpha[i]`` is the rate at which the i-th draft token
is accepted when the ones before it were: an exponential moving average over the drafts
that reached position i (a rejection counts one miss there; the positions after it were
never judged). Acceptance is bursty: when prompt lookup's first token is right the answer
is usually quoting, and the rest follow (echo: the first draft token accepted ~70% of the
time, the later ones ~95% after it), which one per-token rate cannot express: it would
cut such drafts at 2-3 tokens where 5 measure faster. A draft of k tokens yields
``E(k) = 1 + a0 + a0 a1 + ... + a0 ... a(k-1)`` tokens per step, and costs ``1 + k * rho`` steps,
where ``rho`` is one draft token's cost: the proposer's own (``Proposer.cost_per_token``)
plus the verifier's share, which grows with the batch: a step over N tokens takes about
``t0 + c * N`` and is compute-bound past ``knee = t0 / c`` tokens, so one more token costs
``B / (knee + B)`` of a step of B decoding sequences. The length is the k in
0..``num_speculative_tokens`` that maximises ``E(k) / (1 + k * rho)``: it falls to 0 when
drafts keep failing (or the batch is large), rises while they are accepted (FASER:
Pan et al. 2025, speculation length per request from acceptance and the batch's phase).
The knee is measured on this machine as the engine runs (``StepCost``) unless the config
fixes it.

A request at length 0 keeps being measured: free proposers draft one token in the
shadow (compared with the token the step samples, never computed), costly ones get one
real draft every ``probe_interval`` steps.

The budget (SpecMemo: speculation under a memory budget) then trims lengths, surest
request first, to the KV blocks free beyond what the batch's real tokens need, so drafts
never make the scheduler preempt anything. This module imports no torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

PRIOR = 0.5  # acceptance assumed before a request has any history
DECAY = 0.7  # weight of the past in the moving average (per verified position)


@dataclass
class LengthState:
    """One sequence's acceptance history: ``alphas[i]`` is the acceptance rate of draft
    position i given the positions before it were accepted, for the positions judged so
    far (a position first judged starts from the rate before it; positions never judged
    are assumed to keep the last rate, so a request whose drafts are all accepted still
    tries longer ones)."""

    alphas: list[float] = field(default_factory=list)
    length: int = 0
    steps_at_zero: int = 0
    verified: int = 0  # draft tokens verified (real, not shadow)
    accepted: int = 0

    @property
    def alpha(self) -> float:
        """The first draft token's acceptance rate (PRIOR before any history)."""
        return self.alphas[0] if self.alphas else PRIOR

    @alpha.setter
    def alpha(self, value: float) -> None:
        """Every position's rate set to ``value`` (a per-token rate, as in tests)."""
        self.alphas = [value]


def expected_tokens(alpha: float | Sequence[float], k: int) -> float:
    """Tokens a step yields with k drafts: ``1 + a0 + a0 a1 + ...`` over the per-position
    conditional acceptance rates ``alpha`` (a float: the same rate at every position, the
    geometric ``1 + a + ... + a^k``; positions past the list take its last rate)."""
    rates = [alpha] if isinstance(alpha, (int, float)) else list(alpha) or [PRIOR]
    total, run = 1.0, 1.0
    for i in range(k):
        run *= rates[min(i, len(rates) - 1)]
        total += run
    return total


def best_length(alpha: float | Sequence[float], rho: float, k_max: int) -> int:
    """argmax over k in 0..k_max of E(k) / (1 + k * rho) (the smallest k on ties)."""
    best, value = 0, 1.0
    for k in range(1, k_max + 1):
        v = expected_tokens(alpha, k) / (1 + k * rho)
        if v > value + 1e-9:
            best, value = k, v
    return best


class StepCost:
    """The knee of this machine's forward, measured: an exponentially weighted least-squares
    fit of each forward's time against its token count, t(N) = t0 + c * N, gives
    ``knee = t0 / c`` (the tokens past which a step costs about as much again as an empty
    one). A GGUF model on one CPU core has a knee of a few tokens (each row costs the
    kernel's arithmetic), a GPU one of hundreds: a fixed knee over-drafts on the first and
    under-drafts on the second (FASER adapts to the batch's phase; this measures where the
    phase changes). Until the observed token counts spread (``min_spread``: their weighted
    standard deviation) or while the fit is not increasing, ``knee`` is the prior."""

    def __init__(self, prior: float, decay: float = 0.98, min_spread: float = 0.5) -> None:
        if prior <= 0 or not 0 < decay < 1 or min_spread <= 0:
            raise ValueError("StepCost: prior > 0, 0 < decay < 1 and min_spread > 0")
        self.prior, self.decay, self.min_spread = prior, decay, min_spread
        self._w = self._x = self._y = self._xx = self._xy = 0.0

    def observe(self, tokens: int, seconds: float) -> None:
        """One forward over ``tokens`` tokens took ``seconds``."""
        if tokens < 1 or seconds <= 0:
            return
        d = self.decay
        self._w = d * self._w + 1.0
        self._x = d * self._x + tokens
        self._y = d * self._y + seconds
        self._xx = d * self._xx + tokens * tokens
        self._xy = d * self._xy + tokens * seconds

    @property
    def knee(self) -> float:
        """t0 / c in tokens, clamped to 0.5 .. 4096; the prior until the fit is usable."""
        if self._w == 0:
            return self.prior
        mx, my = self._x / self._w, self._y / self._w
        var = self._xx / self._w - mx * mx
        if var < self.min_spread**2:
            return self.prior
        c = (self._xy / self._w - mx * my) / var
        t0 = my - c * mx
        if c <= 0 or t0 <= 0:
            return self.prior
        return min(max(t0 / c, 0.5), 4096.0)


class LengthController:
    """Per-sequence lengths. ``adaptive=False``: always ``k_max``."""

    def __init__(self, k_max: int, knee: float, proposer_cost: float, adaptive: bool = True,
                 probe_interval: int = 16) -> None:
        self.k_max, self.knee, self.proposer_cost = k_max, knee, proposer_cost
        self.adaptive, self.probe_interval = adaptive, probe_interval
        self.states: dict[str, LengthState] = {}

    def rho(self, batch: int) -> float:
        """A draft token's cost in steps, with ``batch`` sequences decoding."""
        return self.proposer_cost + batch / (self.knee + batch)

    def length(self, seq_id: str, batch: int) -> int:
        """The draft length for ``seq_id`` this step (0: no real drafts)."""
        st = self._state(seq_id, length=self.k_max)
        if not self.adaptive:
            st.length = self.k_max
            return st.length
        st.length = best_length(st.alphas, self.rho(batch), self.k_max)
        if st.length == 0:
            st.steps_at_zero += 1
            if self.proposer_cost > 0 and st.steps_at_zero % self.probe_interval == 0:
                return 1  # a costly proposer's probe
        else:
            st.steps_at_zero = 0
        return st.length

    def shadow_wanted(self, seq_id: str) -> bool:
        """Whether a free shadow draft should measure ``seq_id`` (its length is 0)."""
        st = self.states.get(seq_id)
        return self.adaptive and self.proposer_cost == 0 and st is not None and st.length == 0

    def update(self, seq_id: str, drafted: int, accepted: int, real: bool = True) -> None:
        """``drafted`` tokens were judged and the first ``accepted`` kept."""
        st = self._state(seq_id)
        for i in range(min(drafted, accepted + 1, self.k_max)):
            hit = 1.0 if i < accepted else 0.0
            if i == len(st.alphas):
                st.alphas.append(st.alphas[-1] if st.alphas else PRIOR)
            st.alphas[i] = DECAY * st.alphas[i] + (1 - DECAY) * hit
        if real:
            st.verified += drafted
            st.accepted += accepted

    def _state(self, seq_id: str, length: int = 0) -> LengthState:
        st = self.states.get(seq_id)
        if st is None:
            st = self.states[seq_id] = LengthState(length=length)
        return st

    def forget(self, seq_id: str) -> None:
        self.states.pop(seq_id, None)


def fit_to_blocks(lengths: list[int], spare: list[int], free_blocks: int,
                  block_size: int, order: list[int]) -> list[int]:
    """Trim draft lengths to the KV blocks free for drafts (SpecMemo).

    ``spare[i]``: token slots left in sequence i's blocks after its real tokens (drafts
    there take no block); ``free_blocks``: blocks drafts may take; ``order``: sequence
    indices, surest first. Returns new lengths; the blocks they need fit."""
    out = list(lengths)
    for i in order:
        extra = max(out[i] - spare[i], 0)
        need = -(-extra // block_size)
        if need > free_blocks:
            out[i] = spare[i] + free_blocks * block_size if free_blocks >= 0 else 0
            out[i] = min(out[i], lengths[i])
            need = -(-max(out[i] - spare[i], 0) // block_size)
        free_blocks -= need
    return out
