"""The work left when a streamed input ends, step by step (docs/benchmarks.md, "Streaming input").

For documents of 256 and 4,096 tokens streamed into a session (bfloat16 + int4, 1 thread):
the close command (last chunk + the reference tokenization of the whole input) and the
answer's first step, with the short-chunk path (``attention/few_query.py``, precision
"mixed"; its softmax native (``kernels/softmax_bf16.c``) or torch's) and with the flash
kernel (precision "parity"); then one step
computing a 3-word chunk for each of 16 sessions, each way. Medians of ``--reps`` sessions
on different documents; the ways alternate, so noise hits all of them.

    python -m thinkstream.bench.answer_step [--reps 3] [--dtype bfloat16] [--quantization int4] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from thinkstream.attention.metadata import AttentionConfig, Precision
from thinkstream.bench.streaming import document
from thinkstream.llm import LLM
from thinkstream.sampling_params import SamplingParams

ONE = SamplingParams(temperature=0, max_tokens=1, ignore_eos=True)


def answer_step(llm: LLM, n: int, seed: int) -> tuple[float, float]:
    """(close command s, answer step s) for an ``n``-token document streamed 24 words at a time."""
    chunks = document(llm.tokenizer, n, seed, "speech")
    s = llm.open_session("", sampling_params=ONE)
    for i in range(0, len(chunks) - 1, 8):
        s.append("".join(chunks[i : i + 8]))
    t0 = time.perf_counter()
    llm._sessions.close(s.id, data=chunks[-1])
    t1 = time.perf_counter()
    llm.engine.step()
    t2 = time.perf_counter()
    assert s.id not in llm.engine.requests  # the one answer token came from that step
    return t1 - t0, t2 - t1


def sessions_step(llm: LLM, seed: int, count: int = 16) -> float:
    """One step computing the next 3-word chunk of ``count`` open sessions."""
    docs = [document(llm.tokenizer, 128, seed + i, "speech") for i in range(count)]
    sessions = [llm.open_session("", sampling_params=ONE) for _ in docs]
    for s, d in zip(sessions, docs, strict=True):
        s.append("".join(d[:20]))
    for s, d in zip(sessions, docs, strict=True):
        s.append(d[20], prefill=False)
    t = time.perf_counter()
    llm.engine.step()
    took = time.perf_counter() - t
    for s in sessions:
        s.abort()
    return took


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--quantization", default="int4")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    llm = LLM(dtype=args.dtype, quantization=args.quantization or None, num_threads=args.threads,
              kv_cache_memory=1024 << 20, max_num_batched_tokens=512)
    runner = llm.engine.runner
    engine_default = runner.attention
    modes = {"short-chunk path": AttentionConfig(Precision.MIXED),
             "short-chunk path, torch softmax": AttentionConfig(Precision.MIXED, native_softmax=False),
             "flash kernel": AttentionConfig(Precision.PARITY)}
    rows: dict[tuple[str, str], list[float]] = {}
    for rep in range(args.reps):
        for i, (mode, attention) in enumerate(modes.items()):
            runner.attention = attention  # the settings of the steps that follow
            for n in (256, 4096):
                close, step = answer_step(llm, n, 1000 * rep + 10 * n + i)
                rows.setdefault((f"close command, {n} tokens", mode), []).append(close)
                rows.setdefault((f"answer step, {n} tokens", mode), []).append(step)
            rows.setdefault(("step with 16 sessions' chunks", mode), []).append(
                sessions_step(llm, 7919 * (rep + 1) + i))
    runner.attention = engine_default
    print("| what | path | median ms |\n|---|---|---|")
    for (what, mode), xs in rows.items():
        print(f"| {what} | {mode} | {statistics.median(xs) * 1e3:.1f} |")


if __name__ == "__main__":
    main()
