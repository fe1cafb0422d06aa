"""Seeded workload generators. Prompts are token ids, so every peer reads the same tokens
(no tokenizer differences) and the same seed always gives the same workload.

Ids are drawn uniformly from ``[low, vocab_size)`` where ``low`` skips the first ids,
which hold special and byte tokens in the models benchmarked; every request sets
``ignore_eos`` so all peers generate exactly the lengths asked for.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, replace


@dataclass(frozen=True)
class Request:
    """One benchmark request: prompt token ids and the exact number of tokens to generate."""

    prompt: tuple[int, ...]
    max_tokens: int


@dataclass(frozen=True)
class Workload:
    """A named list of requests; ``kind`` is "prefill", "decode" or "throughput"."""

    kind: str
    case: str
    requests: tuple[Request, ...]

    @property
    def num_prompt_tokens(self) -> int:
        return sum(len(r.prompt) for r in self.requests)

    @property
    def num_output_tokens(self) -> int:
        return sum(r.max_tokens for r in self.requests)


def _low(vocab_size: int) -> int:
    return min(256, vocab_size // 4)


def random_ids(rng: random.Random, n: int, vocab_size: int) -> tuple[int, ...]:
    low = _low(vocab_size)
    return tuple(rng.randrange(low, vocab_size) for _ in range(n))


def prefill_workload(length: int, vocab_size: int, seed: int = 0) -> Workload:
    """One prompt of exactly ``length`` tokens and one output token (time to first token)."""
    rng = random.Random(f"prefill-{length}-{seed}")
    return Workload("prefill", str(length), (Request(random_ids(rng, length, vocab_size), 1),))


def decode_workload(batch: int, vocab_size: int, output_len: int = 64, prompt_len: int = 16,
                    seed: int = 0) -> Workload:
    """``batch`` distinct short prompts, each generating exactly ``output_len`` tokens."""
    rng = random.Random(f"decode-{batch}-{seed}")
    reqs = tuple(Request(random_ids(rng, prompt_len, vocab_size), output_len) for _ in range(batch))
    return Workload("decode", f"batch {batch}", reqs)


def _lognormal_int(rng: random.Random, median: float, sigma: float, lo: int, hi: int) -> int:
    return max(lo, min(hi, round(math.exp(rng.gauss(math.log(median), sigma)))))


@dataclass(frozen=True)
class ShareGPTMix:
    """Chat-like length mix, scaled down from ShareGPT's (input ~220, output ~200 tokens
    mean) so that the slowest peer finishes 256 requests in a few minutes on 2 cores:
    log-normal input and output lengths, clipped."""

    num_requests: int = 256
    input_median: float = 32
    input_sigma: float = 0.8
    input_range: tuple[int, int] = (4, 512)
    output_median: float = 24
    output_sigma: float = 0.7
    output_range: tuple[int, int] = (4, 128)


def sharegpt_workload(vocab_size: int, mix: ShareGPTMix = ShareGPTMix(), seed: int = 0) -> Workload:
    rng = random.Random(f"sharegpt-{seed}")
    reqs = []
    for _ in range(mix.num_requests):
        n_in = _lognormal_int(rng, mix.input_median, mix.input_sigma, *mix.input_range)
        n_out = _lognormal_int(rng, mix.output_median, mix.output_sigma, *mix.output_range)
        reqs.append(Request(random_ids(rng, n_in, vocab_size), n_out))
    return Workload("throughput", f"sharegpt x{mix.num_requests}", tuple(reqs))


def shared_prefix_workload(vocab_size: int, num_requests: int = 64, prefix_len: int = 1024,
                           suffix_range: tuple[int, int] = (16, 96), output_len: int = 32,
                           seed: int = 0) -> Workload:
    """Every request = one common ``prefix_len``-token system prompt + its own question."""
    rng = random.Random(f"prefix-{seed}")
    prefix = random_ids(rng, prefix_len, vocab_size)
    reqs = tuple(
        Request(prefix + random_ids(rng, rng.randint(*suffix_range), vocab_size), output_len)
        for _ in range(num_requests)
    )
    return Workload("throughput", f"shared-prefix x{num_requests}", reqs)


@dataclass(frozen=True)
class Sizes:
    """The sizes of one harness run; ``quick()`` is the smoke-test variant."""

    prefill_lengths: tuple[int, ...] = (128, 512, 2048)
    decode_batches: tuple[int, ...] = (1, 8, 32)
    decode_output_len: int = 64
    sharegpt: ShareGPTMix = ShareGPTMix()
    prefix_requests: int = 64
    prefix_len: int = 1024
    prefix_output_len: int = 32

    def within(self, max_batch: int) -> Sizes:
        """These sizes without the decode batches above ``max_batch`` sequence slots: such a
        batch would run in turns, and its "tokens after every sequence's first" over the time
        after the last first token is no decode rate (``--max-batch 1`` reported 43x)."""
        return replace(self, decode_batches=tuple(b for b in self.decode_batches
                                                  if b <= max_batch))

    @staticmethod
    def quick() -> Sizes:
        return Sizes(prefill_lengths=(16, 64), decode_batches=(1, 4), decode_output_len=8,
                     sharegpt=ShareGPTMix(num_requests=8, input_range=(4, 64),
                                          output_range=(2, 16)),
                     prefix_requests=4, prefix_len=64, prefix_output_len=4)


def build_workloads(kinds: tuple[str, ...], vocab_size: int, sizes: Sizes,
                    seed: int = 0) -> list[Workload]:
    out: list[Workload] = []
    if "prefill" in kinds:
        out += [prefill_workload(n, vocab_size, seed) for n in sizes.prefill_lengths]
    if "decode" in kinds:
        out += [decode_workload(b, vocab_size, sizes.decode_output_len, seed=seed)
                for b in sizes.decode_batches]
    if "throughput" in kinds:
        out.append(sharegpt_workload(vocab_size, sizes.sharegpt, seed))
        suffix = (4, 16) if sizes.prefix_len < 1024 else (16, 96)
        out.append(shared_prefix_workload(vocab_size, sizes.prefix_requests, sizes.prefix_len,
                                          suffix, sizes.prefix_output_len, seed))
    return out
