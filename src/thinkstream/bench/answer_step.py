"""The work left when a streamed input ends, step by step (docs/benchmarks.md, "Streaming input").

For documents of 256 and 4,096 tokens streamed into a session (default: ``dtype="auto"``,
1 thread): the close command (last chunk + the reference tokenization of the whole input)
and the answer's first step, with the fused kernel (``kernels/fq_attention.c``), the
short-chunk path (``attention/few_query.py``, precision
"mixed"; its softmax native (``kernels/softmax_bf16.c``) or torch's) and with the flash
kernel (precision "parity"); then one step
computing a 3-word chunk for each of 16 sessions, each way. Medians of ``--reps`` sessions
on different documents; the ways alternate, so noise hits all of them. ``--kv-cache-dtype
float32,bfloat16`` builds one engine per KV cache dtype (``EngineConfig.kv_cache_dtype``)
and alternates between them too.

Clocks (``--clock``; every step is timed on all three, the JSON keeps each median): "wall";
"cpu", this process's CPU time, which also counts the close check's reference tokenization
of the whole input (``streaming/close_check.py``: on its worker thread, beside the answer
step; ~5 ms for 4,096 tokens on Zen 4); "thread", the calling thread's CPU time: with
``--threads 1`` the whole forward (the native stack and torch run on it), the answer's
critical path when a second core takes the check (with more threads, OpenMP's workers are
not counted: use "wall").

    python -m thinkstream.bench.answer_step [--reps 3] [--dtype auto] [--quantization auto] [--threads 1]
        [--clock wall|cpu|thread] [--kv-cache-dtype auto[,bfloat16]] [--json F]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from thinkstream.attention.metadata import AttentionConfig, Precision
from thinkstream.bench.report import cpu_record
from thinkstream.bench.streaming import document
from thinkstream.llm import LLM
from thinkstream.sampling_params import SamplingParams

ONE = SamplingParams(temperature=0, max_tokens=1, ignore_eos=True)


# --clock: "cpu" counts this process's CPU time (1 thread: the cost without a shared
# machine's waits), "thread" the calling thread's (module docstring)
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time, "thread": time.thread_time}
Times = dict[str, float]  # seconds on each of CLOCKS


def _now() -> Times:
    return {name: clock() for name, clock in CLOCKS.items()}


def _since(t0: Times) -> Times:
    t1 = _now()
    return {name: t1[name] - t0[name] for name in CLOCKS}


def answer_step(llm: LLM, n: int, seed: int) -> tuple[Times, Times]:
    """(close command s, answer step s) on every clock for an ``n``-token document streamed
    24 words at a time."""
    chunks = document(llm.tokenizer, n, seed, "speech")
    s = llm.open_session("", sampling_params=ONE)
    for i in range(0, len(chunks) - 1, 8):
        s.append("".join(chunks[i : i + 8]))
    t0 = _now()
    llm._sessions.close(s.id, data=chunks[-1])
    close, t1 = _since(t0), _now()
    llm.engine.step()
    step = _since(t1)
    assert s.id not in llm.engine.requests  # the one answer token came from that step
    return close, step


def sessions_step(llm: LLM, seed: int, count: int = 16) -> Times:
    """One step computing the next 3-word chunk of ``count`` open sessions (s, every clock)."""
    docs = [document(llm.tokenizer, 128, seed + i, "speech") for i in range(count)]
    sessions = [llm.open_session("", sampling_params=ONE) for _ in docs]
    for s, d in zip(sessions, docs, strict=True):
        s.append("".join(d[:20]))
    for s, d in zip(sessions, docs, strict=True):
        s.append(d[20], prefill=False)
    t = _now()
    llm.engine.step()
    took = _since(t)
    for s in sessions:
        s.abort()
    return took


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--dtype", default="auto")
    p.add_argument("--quantization", default="auto")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--clock", default="wall", choices=list(CLOCKS))
    p.add_argument("--modes", default=None, help="comma-separated subset of the attention paths")
    p.add_argument("--kv-cache-dtype", default="auto",
                   help="comma-separated KV cache dtypes, one engine each (auto, float32, bfloat16)")
    p.add_argument("--json", default=None, help="write the medians here (with the CPU class)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    quant = None if args.quantization in ("", "none") else args.quantization
    kv_dtypes = args.kv_cache_dtype.split(",")
    llms = {kv: LLM(dtype=args.dtype, quantization=quant, num_threads=args.threads,
                    kv_cache_memory=512 << 20, max_num_batched_tokens=512, kv_cache_dtype=kv)
            for kv in kv_dtypes}
    modes = {"fused kernel": AttentionConfig(Precision.PARITY, fused=True),
             "short-chunk path": AttentionConfig(Precision.MIXED),
             "short-chunk path, torch softmax": AttentionConfig(Precision.MIXED, native_softmax=False),
             "flash kernel": AttentionConfig(Precision.PARITY)}
    if args.modes:
        modes = {m: modes[m] for m in args.modes.split(",")}
    rows: dict[tuple[str, str], list[Times]] = {}
    for rep in range(args.reps):
        for llm in llms.values():
            runner = llm.engine.runner
            engine_default = runner.attention
            for i, (mode, attention) in enumerate(modes.items()):
                runner.attention = attention  # the settings of the steps that follow
                path = mode if len(llms) == 1 else f"{mode}, KV cache {llm.engine.precision.kv_dtype}"
                for n in (256, 4096):
                    close, step = answer_step(llm, n, 1000 * rep + 10 * n + i)
                    rows.setdefault((f"close command, {n} tokens", path), []).append(close)
                    rows.setdefault((f"answer step, {n} tokens", path), []).append(step)
                rows.setdefault(("step with 16 sessions' chunks", path), []).append(
                    sessions_step(llm, 7919 * (rep + 1) + i))
            runner.attention = engine_default
    medians = []
    for (what, mode), xs in sorted(rows.items(), key=lambda r: r[0][0]):
        by_clock = {name: statistics.median(x[name] for x in xs) * 1e3 for name in CLOCKS}
        medians.append({"what": what, "path": mode, "median_ms": by_clock[args.clock],
                        "median_ms_by_clock": by_clock})
    print(f"| what | path | median ms ({args.clock} clock) |\n|---|---|---|")
    for r in medians:
        print(f"| {r['what']} | {r['path']} | {r['median_ms']:.1f} |")
    if args.json:
        doc = {"cpu": cpu_record(), "threads": args.threads, "clock": args.clock, "reps": args.reps,
               "dtype": args.dtype, "quantization": args.quantization, "rows": medians}
        Path(args.json).write_text(json.dumps(doc, indent=1))


if __name__ == "__main__":
    main()
