"""How many drafts each request gets this step (FASER-style adaptive length, SpecMemo-style
memory budget).

Per request and draft position i, ``alpha[i]`` is the rate at which the i-th draft token
is accepted when the ones before it were: an exponential moving average over the drafts
that reached position i (a rejection counts one miss there; the positions after it were
never judged). Acceptance is bursty: when prompt lookup's first token is right the answer
is usually quoting, and the rest follow (echo: the first draft token accepted ~70% of the
time, the later ones ~95% after it), which one per-token rate cannot express: it would
cut such drafts at 2-3 tokens where 5 measure faster. A draft of k tokens yields
``E(k) = 1 + a0 + a0 a1 + ... + a0 ... a(k-1)`` tokens per step. Its cost, in steps of the
request's share of the batch, is the measured cost curve of this machine's forward
(``StepCost``: the time of a forward over N tokens, for every N the engine ran, between
them interpolated, past them the fitted slope): ``1 + B * (t(N + k) - t(N)) / t(B)`` for a
request whose step already holds N tokens, B sequences decoding (at batch 1, ``t(1 + k) /
t(1)``), plus the proposer's own ``k * Proposer.cost_per_token``. The curve is not a line
on a CPU: the GGUF kernels verify up to 12 rows in one dot-product pass and more in GEMM
tiles (SmolLM2 on Zen 4, x one row: 8 rows 3.04, 12 rows 4.68, 16 rows 5.14), so a long
verbatim copy pays up to 16 drafts and more where a line through the first rows would stop
at a few (where the step may take them: the decoder keeps a step within the rows the
kernels compute bit for bit as one row, ``SpeculativeDecoder.row_caps``). Without measurements (or with the config's ``compute_bound_tokens``) the cost is
the line ``1 + k * rho`` with ``rho = B / (knee + B)``: a step over N tokens takes ``t0 + c
* N``, compute-bound past ``knee = t0 / c``. The length is the k in
0..``num_speculative_tokens`` that maximises ``E(k) / cost(k)``: it falls to 0 when
drafts keep failing (or the batch is large), rises while they are accepted (FASER:
Pan et al. 2025, speculation length per request from acceptance and the batch's phase).
With every draft accepted, E(k) = k + 1 grows faster than any such cost, so the length
rises to the maximum.

A request at length 0 keeps being measured: free proposers draft one token in the
shadow (compared with the token the step samples, never computed), costly ones get one
real draft every ``probe_interval`` steps.

The budget (SpecMemo: speculation under a memory budget) then trims lengths, surest
request first, to the KV blocks free beyond what the batch's real tokens need, so drafts
never make the scheduler preempt anything. This module imports no torch.
"""

from __future__ import annotations

from bisect import bisect_left, insort
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from thinkstream.speculative.continuity import CopyRates, probe_cap

PRIOR = 0.5  # acceptance assumed before a request has any history
DECAY = 0.7  # weight of the past in the moving average (per verified position)
POINT_SAMPLES = 8  # a measured point of the cost curve: the fastest of its last 8 forwards
# the least a draft token costs in steps on the measured curve (its row's sampling and
# bookkeeping; where rows measure free or noise makes more rows look faster, drafts that
# are never accepted must still lose)
MIN_DRAFT_COST = 0.02


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
    continuing: bool | None = None  # this step's draft continues a copy (None: unknown)

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


def best_length(alpha: float | Sequence[float], cost: float | Sequence[float], k_max: int) -> int:
    """argmax over k in 0..k_max of E(k) / cost(k) (the smallest k on ties). ``cost``: a
    float ``rho`` (the line ``1 + k * rho``) or the cost of 0..k_max drafts, in steps
    (``cost[0]`` is 1)."""
    best, value = 0, 1.0
    run, total = 1.0, 1.0
    rates = [alpha] if isinstance(alpha, (int, float)) else list(alpha) or [PRIOR]
    for k in range(1, k_max + 1):
        run *= rates[min(k - 1, len(rates) - 1)]
        total += run  # expected_tokens(alpha, k), incrementally
        v = total / (1 + k * cost if isinstance(cost, (int, float)) else cost[k])
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
    standard deviation) or while the fit is not increasing, ``knee`` is the prior.

    Beside the line, the curve itself (``seconds``): for each token count N the fastest of
    the last ``POINT_SAMPLES`` forwards over N tokens (on a shared machine other jobs only
    add time), where the line misses the kernels' steps (a dot-product pass of up to 12
    rows, GEMM tiles of 16, 24, 32 rows)."""

    def __init__(self, prior: float, decay: float = 0.98, min_spread: float = 0.5) -> None:
        if prior <= 0 or not 0 < decay < 1 or min_spread <= 0:
            raise ValueError("StepCost: prior > 0, 0 < decay < 1 and min_spread > 0")
        self.prior, self.decay, self.min_spread = prior, decay, min_spread
        self._w = self._x = self._y = self._xx = self._xy = 0.0
        self._points: dict[int, deque[float]] = {}  # N -> seconds of its last forwards
        self._ns: list[int] = []  # the measured N, sorted

    def observe(self, tokens: int, seconds: float) -> None:
        """One forward over ``tokens`` tokens took ``seconds``."""
        if tokens < 1 or seconds <= 0:
            return
        if tokens not in self._points:
            insort(self._ns, tokens)
            self._points[tokens] = deque(maxlen=POINT_SAMPLES)
        self._points[tokens].append(seconds)
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

    def measured(self, tokens: int) -> bool:
        """Whether a forward over ``tokens`` tokens was timed."""
        return tokens in self._points

    def seconds(self, tokens: int) -> float | None:
        """A forward over ``tokens`` tokens, in seconds: the measured time at that count;
        between measured counts interpolated; outside them the nearest one plus the slope
        ``t / (knee + N)`` of the line through it (the fitted knee, or the prior). None
        before any forward was timed."""
        ns = self._ns
        if not ns:
            return None
        i = bisect_left(ns, tokens)
        if i < len(ns) and ns[i] == tokens:
            return min(self._points[tokens])
        if 0 < i < len(ns):
            lo, hi = ns[i - 1], ns[i]
            t_lo, t_hi = min(self._points[lo]), min(self._points[hi])
            return t_lo + (t_hi - t_lo) * (tokens - lo) / (hi - lo)
        near = ns[0] if i == 0 else ns[-1]
        t = min(self._points[near])
        return max(t + t / (self.knee + near) * (tokens - near), 1e-9)


class LengthController:
    """Per-sequence lengths. ``adaptive=False``: always ``k_max``. ``cost``: the measured
    cost curve (None: the line through ``knee``)."""

    def __init__(self, k_max: int, knee: float, proposer_cost: float, adaptive: bool = True,
                 probe_interval: int = 16, cost: StepCost | None = None) -> None:
        self.k_max, self.knee, self.proposer_cost = k_max, knee, proposer_cost
        self.adaptive, self.probe_interval = adaptive, probe_interval
        self.cost = cost
        self.states: dict[str, LengthState] = {}
        self.copies = CopyRates()  # continuing drafts, all requests

    def rho(self, batch: int) -> float:
        """A draft token's cost in steps on the line, with ``batch`` sequences decoding."""
        return self.proposer_cost + batch / (self.knee + batch)

    def costs(self, batch: int, tokens: int) -> float | list[float]:
        """The cost of 0..k_max drafts in steps of one request's share, for a request whose
        step already holds ``tokens`` tokens with ``batch`` sequences decoding: from the
        measured curve, else ``rho(batch)`` (the line)."""
        sec: Callable[[int], float | None] = self.cost.seconds if self.cost else lambda n: None
        base, share = sec(tokens), sec(batch)
        if base is None or share is None:
            return self.rho(batch)
        out = [1.0]
        for k in range(1, self.k_max + 1):  # never below MIN_DRAFT_COST a token (noise)
            raw = 1 + batch * (sec(tokens + k) - base) / share + k * self.proposer_cost
            out.append(max(raw, out[-1] + MIN_DRAFT_COST))
        return out

    def length(self, seq_id: str, batch: int, tokens: int | None = None,
               continuing: bool | None = None) -> int:
        """The draft length for ``seq_id`` this step (0: no real drafts); ``tokens``: the
        tokens the step holds before this request's drafts (default ``batch``);
        ``continuing``: whether the proposer's draft continues the copy the last
        verification accepted (``continuity.py``: priced by the engine-wide ``copies``;
        False: the request's own history, at most a probe; None: the proposer cannot
        tell, the request's own history)."""
        st = self._state(seq_id, length=self.k_max)
        if not self.adaptive:
            st.length = self.k_max
            return st.length
        tokens = batch if tokens is None else tokens
        costs = self.costs(batch, tokens)
        st.continuing = continuing
        st.length = best_length(self.copies.rates() if continuing else st.alphas, costs,
                                self.k_max)
        if continuing is False:
            st.length = min(st.length, probe_cap(costs, self.k_max))
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
        """``drafted`` tokens were judged and the first ``accepted`` kept (a continuing
        draft's outcome goes to the engine-wide ``copies``)."""
        st = self._state(seq_id)
        if real:
            st.verified += drafted
            st.accepted += accepted
        if st.continuing:
            self.copies.update(drafted, accepted)
            return
        for i in range(min(drafted, accepted + 1, self.k_max)):
            hit = 1.0 if i < accepted else 0.0
            if i == len(st.alphas):
                st.alphas.append(st.alphas[-1] if st.alphas else PRIOR)
            st.alphas[i] = DECAY * st.alphas[i] + (1 - DECAY) * hit

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
