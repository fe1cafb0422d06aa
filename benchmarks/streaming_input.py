"""Streaming input: time to first token after the input ends, session vs one-shot.

A document arrives in chunks at a steady rate, followed by a question. ``session``: each
chunk is appended to an open session as it arrives (prefilled while the rest is coming),
then the session is closed. ``one-shot``: the whole prompt is sent when its last chunk would
have arrived. Both are timed from the moment the input ends: time to the first answer token
(TTFT) and to the full answer. Then ``--sessions`` concurrent sessions with Poisson arrivals
run under each scheduling policy, against the same load sent one-shot at input end.

    python benchmarks/streaming_input.py                      # 256 / 1024 / 4096 tokens
    python benchmarks/streaming_input.py --lengths 128,512 --sessions 8   # quicker

The arrival rate defaults to 15% of the prefill throughput measured on 256 tokens (on CPU,
prefill at 4k tokens of context is about 3x slower), so the engine keeps up with the input;
an input faster than the engine can prefill only approaches one-shot. Writes JSON (``--json``) and prints
a Markdown table. The real default model (SmolLM2-135M-Instruct) unless ``--model``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from pathlib import Path

from thinkstream.async_engine import AsyncLLM
from thinkstream.config import EngineConfig
from thinkstream.engine import LLMEngine
from thinkstream.sampling_params import SamplingParams
from thinkstream.streaming.policy import POLICIES, policy_key

WORDS = ("the river city market morning light quietly carried stories across old bridges "
         "while merchants counted copper coins and children chased paper boats toward the "
         "harbor where ships from distant islands unloaded spices silk and salted fish").split()
QUESTION = "\n\nQuestion: In one sentence, what is this document about?\nAnswer:"


def document(tokenizer, n_tokens: int, seed: int) -> list[str]:
    """Text chunks (a few words each) whose concatenation has about ``n_tokens`` tokens."""
    rng = random.Random(seed)
    words: list[str] = []
    while len(tokenizer.encode(" ".join(words), add_special_tokens=False)) < n_tokens:
        words += [rng.choice(WORDS) for _ in range(32)]
        words[-1] += "."
    text = " ".join(words)
    ids = tokenizer.encode(text, add_special_tokens=False)[:n_tokens]
    text = tokenizer.decode(ids)
    pieces = text.split(" ")
    return [" ".join(pieces[i:i + 6]) + " " for i in range(0, len(pieces), 6)] + [QUESTION]


async def _timed(stream, t0: float) -> tuple[float, float, int]:
    first = None
    n = 0
    async for out in stream:
        if first is None and out.outputs[0].token_ids:
            first = time.perf_counter() - t0
        n = len(out.outputs[0].token_ids)
    return first or float("nan"), time.perf_counter() - t0, n


async def run_session(llm: AsyncLLM, chunks: list[str], rate_tps: float, params: SamplingParams,
                      start_delay: float = 0.0) -> dict:
    """Stream ``chunks`` at ``rate_tps`` tokens per second, close, time the answer."""
    await asyncio.sleep(start_delay)
    tok = llm.tokenizer
    info = await llm.open_session("", params=params)
    sid = info.session_id
    t = time.perf_counter()
    acks = []  # appends are pipelined (commands run in order); acks are checked at the end
    for chunk in chunks:
        t += len(tok.encode(chunk, add_special_tokens=False)) / rate_tps
        await asyncio.sleep(max(0.0, t - time.perf_counter()))
        acks.append(asyncio.ensure_future(llm.append_session(sid, chunk)))
        await asyncio.sleep(0)  # let the append enqueue before the next one
    t_end = time.perf_counter()
    stream = await llm.close_session(sid)
    await asyncio.gather(*acks)
    ttft, total, n = await _timed(stream, t_end)
    return {"ttft_s": ttft, "total_s": total, "tokens": n}


async def run_one_shot(llm: AsyncLLM, chunks: list[str], rate_tps: float, params: SamplingParams,
                       start_delay: float = 0.0, wait: bool = True) -> dict:
    """Wait until the input would have ended (if ``wait``), then send it whole."""
    await asyncio.sleep(start_delay)
    tok = llm.tokenizer
    if wait:
        await asyncio.sleep(sum(len(tok.encode(c, add_special_tokens=False)) for c in chunks) / rate_tps)
    t_end = time.perf_counter()
    ttft, total, n = await _timed(llm.generate("".join(chunks), params), t_end)
    return {"ttft_s": ttft, "total_s": total, "tokens": n}


async def calibrate(llm: AsyncLLM, n: int = 256) -> float:
    """Prefill throughput (tokens/s) of an n-token prompt, warm."""
    ids = [int(t) for t in llm.tokenizer.encode("hello world " * n)[:n]]
    one = SamplingParams(temperature=0, max_tokens=1)
    async for _ in llm.generate(ids, one):
        pass
    t = time.perf_counter()
    async for _ in llm.generate(list(reversed(ids)), one):
        pass
    return n / (time.perf_counter() - t)


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(q * (len(xs) - 1)))]


async def concurrent(llm: AsyncLLM, args, rate: float, params: SamplingParams, mode: str) -> dict:
    rng = random.Random(args.seed)
    base = args.seed + (10_000 if mode == "session" else 20_000) + 100 * len(args.policies)
    docs = [document(llm.tokenizer, args.session_tokens, base + i + 1000 * concurrent.calls)
            for i in range(args.sessions)]  # fresh documents per run: no prefix-cache hits
    concurrent.calls += 1
    delays, t = [], 0.0
    for _ in docs:
        delays.append(t)
        t += rng.expovariate(args.arrivals_per_s)
    per_session_rate = args.session_rate  # speech-like: a few words per second each
    t0 = time.perf_counter()
    fn = run_session if mode == "session" else run_one_shot
    results = await asyncio.gather(*[fn(llm, d, per_session_rate, params, delay)
                                     for d, delay in zip(docs, delays, strict=True)])
    wall = time.perf_counter() - t0
    ttfts = [r["ttft_s"] for r in results]
    tokens = sum(r["tokens"] for r in results)
    return {"mode": mode, "ttft_p50_s": pct(ttfts, 0.5), "ttft_p99_s": pct(ttfts, 0.99),
            "wall_s": wall, "output_tokens": tokens, "output_tok_per_s": tokens / wall}


concurrent.calls = 0


async def main_async(args) -> dict:
    cfg = EngineConfig(dtype=args.dtype, kv_cache_memory=args.kv_cache_mb << 20,
                       max_num_batched_tokens=args.max_batched_tokens)
    t = time.perf_counter()
    llm = AsyncLLM(LLMEngine(args.model, cfg))
    report: dict = {"model": str(llm.engine.model_path), "dtype": args.dtype,
                    "load_s": time.perf_counter() - t, "lengths": [], "concurrent": []}
    params = SamplingParams(temperature=0, max_tokens=args.max_tokens, ignore_eos=True)
    try:
        prefill = await calibrate(llm)
        # Long contexts prefill slower (attention): keep the input below the 4k-token rate.
        rate = args.rate or prefill * 0.15
        report.update(prefill_tok_per_s=prefill, rate_tok_per_s=rate)
        print(f"prefill ~{prefill:.0f} tok/s; input arrives at {rate:.0f} tok/s", file=sys.stderr)
        for n in args.lengths:
            chunks = document(llm.tokenizer, n, args.seed + n)
            s = await run_session(llm, chunks, rate, params)
            # A different document of the same length: no prefix-cache hit from the session.
            o = await run_one_shot(llm, document(llm.tokenizer, n, args.seed + n + 1), rate,
                                   params, wait=False)
            row = {"doc_tokens": n, "chunks": len(chunks), "session": s, "one_shot": o,
                   "ttft_speedup": o["ttft_s"] / s["ttft_s"]}
            report["lengths"].append(row)
            print(f"{n:>5} tokens: session TTFT {s['ttft_s'] * 1e3:7.0f} ms, one-shot "
                  f"{o['ttft_s'] * 1e3:7.0f} ms ({row['ttft_speedup']:.1f}x)", file=sys.stderr)
        if args.sessions:
            for name in args.policies:
                await llm.call(lambda e, name=name: setattr(e.scheduler, "priority", policy_key(name)))
                r = await concurrent(llm, args, rate, params, "session")
                report["concurrent"].append({"policy": name, **r})
                print(f"{name}: {r}", file=sys.stderr)
            await llm.call(lambda e: setattr(e.scheduler, "priority", policy_key(cfg.session_policy)))
            r = await concurrent(llm, args, rate, params, "one-shot")
            report["concurrent"].append({"policy": "-", **r})
            print(f"one-shot: {r}", file=sys.stderr)
    finally:
        llm.shutdown()
    return report


def table(report: dict) -> str:
    lines = ["| document tokens | session TTFT after input end | one-shot TTFT | speedup | "
             "session full answer | one-shot full answer |", "|---|---|---|---|---|---|"]
    for r in report["lengths"]:
        s, o = r["session"], r["one_shot"]
        lines.append(f"| {r['doc_tokens']} | {s['ttft_s'] * 1e3:.0f} ms | {o['ttft_s'] * 1e3:.0f} ms "
                     f"| {r['ttft_speedup']:.1f}x | {s['total_s']:.2f} s | {o['total_s']:.2f} s |")
    if report["concurrent"]:
        lines += ["", "| mode | policy | TTFT p50 | TTFT p99 | wall | output tok/s |",
                  "|---|---|---|---|---|---|"]
        for r in report["concurrent"]:
            lines.append(f"| {r['mode']} | {r['policy']} | {r['ttft_p50_s'] * 1e3:.0f} ms | "
                         f"{r['ttft_p99_s'] * 1e3:.0f} ms | {r['wall_s']:.1f} s | "
                         f"{r['output_tok_per_s']:.1f} |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--lengths", default="256,1024,4096",
                   type=lambda s: [int(x) for x in s.split(",")])
    p.add_argument("--rate", type=float, default=None, help="input tokens/s (default: half the prefill rate)")
    p.add_argument("--max-tokens", type=int, default=16)
    p.add_argument("--sessions", type=int, default=16, help="concurrent sessions (0: skip)")
    p.add_argument("--session-tokens", type=int, default=128)
    p.add_argument("--session-rate", type=float, default=8.0,
                   help="input tokens/s of each concurrent session (about 6 words/s)")
    p.add_argument("--arrivals-per-s", type=float, default=4.0, help="Poisson arrival rate")
    p.add_argument("--policies", default=",".join(POLICIES), type=lambda s: s.split(","))
    p.add_argument("--max-batched-tokens", type=int, default=512)
    p.add_argument("--kv-cache-mb", type=int, default=1024)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default="benchmarks/results/streaming_input.json")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    report = asyncio.run(main_async(args))
    report["command"] = "python benchmarks/streaming_input.py " + " ".join(argv or sys.argv[1:])
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2))
    print(table(report))


if __name__ == "__main__":
    main()
