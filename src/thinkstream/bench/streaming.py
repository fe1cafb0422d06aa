"""``thinkstream bench streaming``: time to answer after the input ends, streamed vs sent whole.

A document arrives in chunks, followed by a question. Peers:

- ``thinkstream-stream``: every chunk is appended to an open session as it arrives
  (prefilled while the rest is coming), then the session is closed.
- ``thinkstream-oneshot``: thinkstream given the whole prompt when the input ends.
- ``hf`` / ``llamacpp``: the peers of ``thinkstream bench`` (``peers.py``, ``llamacpp.py``,
  same GGUF, each in its own worker process) given the whole prompt when the input ends.

Every peer is timed from the moment the last chunk is sent (for the waiting peers, that is
when they get the whole prompt): time to the first answer token (TTFT) and to the full
answer (``--max-tokens`` tokens, greedy, EOS ignored). Then ``--sessions`` concurrent
sessions with Poisson arrivals run under each scheduling policy, against the same load
sent to thinkstream one-shot at each input's end (p50 / p99 TTFT, output throughput).

Patterns: ``speech`` (chunks of 3 words, one second of speech each, at a steady rate) and
``bursts`` (retrieval-like: the document arrives as 4 whole passages, the gaps between
them keeping the same mean rate, then the question). ``--rate`` is the mean input rate in
tokens/s. By default: speech at ``SPEECH_RATE`` tokens/s, about 5x real speech (3 words or
4 tokens a second) so a 4k-token document takes minutes rather than a quarter of an hour,
still slow enough that the engine is mostly idle between chunks as with real speech;
bursts at 15% of the measured 256-token prefill rate.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from thinkstream.bench.report import machine, positive_int
from thinkstream.config import KV_CACHE_DTYPES

SCHEMA = "thinkstream-bench-streaming/1"
PEERS = ("thinkstream-stream", "thinkstream-oneshot", "hf", "llamacpp")
WAITING = ("thinkstream-oneshot", "hf", "llamacpp")
WORDS = ("the river city market morning light quietly carried stories across old bridges "
         "while merchants counted copper coins and children chased paper boats toward the "
         "harbor where ships from distant islands unloaded spices silk and salted fish").split()
QUESTION = "\n\nQuestion: In one sentence, what is this document about?\nAnswer:"
SPEECH_WORDS = 3  # words per chunk: one second of speech
SPEECH_RATE = 20.0  # default input tokens/s of the speech pattern
BURSTS = 4  # passages per document in the bursts pattern


def document(tokenizer, n_tokens: int, seed: int, pattern: str = "speech") -> list[str]:
    """Text chunks whose concatenation is a document of about ``n_tokens`` tokens, then the
    question as the last chunk."""
    rng = random.Random(seed)
    words: list[str] = []
    while len(tokenizer.encode(" ".join(words), add_special_tokens=False)) < n_tokens:
        words += [rng.choice(WORDS) for _ in range(32)]
        words[-1] += "."
    ids = tokenizer.encode(" ".join(words), add_special_tokens=False)[:n_tokens]
    pieces = tokenizer.decode(ids).split(" ")
    step = SPEECH_WORDS if pattern == "speech" else -(-len(pieces) // BURSTS)
    return [" ".join(pieces[i:i + step]) + " " for i in range(0, len(pieces), step)] + [QUESTION]


def _ntok(tokenizer, text: str) -> int:
    return len(tokenizer.encode(text, add_special_tokens=False))


async def _timed(stream, t0: float) -> dict[str, float]:
    first, n = None, 0
    async for out in stream:
        if first is None and out.outputs[0].token_ids:
            first = time.perf_counter() - t0
        n = len(out.outputs[0].token_ids)
    return {"ttft_s": first if first is not None else float("nan"),
            "total_s": time.perf_counter() - t0, "tokens": n}


async def run_session(llm, chunks: list[str], rate_tps: float, params,
                      start_delay: float = 0.0, salt: object = None) -> dict[str, float]:
    """Send ``chunks`` at a mean ``rate_tps`` tokens/s: each chunk goes out, then the time
    its tokens take at that rate passes before the next one (the question follows the
    document's last chunk after that chunk's time) and rides on the close, so it is
    computed in the answer's first step; time the answer from then."""
    await asyncio.sleep(start_delay)
    tok = llm.tokenizer
    sid = (await llm.open_session("", params=params, salt=salt)).session_id
    acks = []  # appends are pipelined (commands run in order); acks are checked at the end
    t = time.perf_counter()
    for chunk in chunks[:-1]:
        await asyncio.sleep(max(0.0, t - time.perf_counter()))
        acks.append(asyncio.ensure_future(llm.append_session(sid, chunk)))
        await asyncio.sleep(0)  # let the append enqueue before the next one
        t += _ntok(tok, chunk) / rate_tps
    await asyncio.sleep(max(0.0, t - time.perf_counter()))
    t_end = time.perf_counter()  # the last chunk is sent
    stream = await llm.close_session(sid, data=chunks[-1])
    await asyncio.gather(*acks)
    return await _timed(stream, t_end)


def input_duration(tokenizer, chunks: list[str], rate_tps: float) -> float:
    """Seconds from the first chunk to the last one being sent (``run_session``'s pacing)."""
    return sum(_ntok(tokenizer, c) for c in chunks[:-1]) / rate_tps


async def run_one_shot(llm, chunks: list[str], rate_tps: float, params,
                       start_delay: float = 0.0, wait: bool = True,
                       salt: object = None) -> dict[str, float]:
    """Wait until the input would have ended (if ``wait``), then send it whole."""
    await asyncio.sleep(start_delay)
    if wait:
        await asyncio.sleep(input_duration(llm.tokenizer, chunks, rate_tps))
    t_end = time.perf_counter()
    return await _timed(llm.generate("".join(chunks), params, salt=salt), t_end)


async def calibrate(llm, n: int = 256) -> float:
    """Prefill throughput (tokens/s) of an n-token prompt, warm."""
    from thinkstream.sampling_params import SamplingParams

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


async def concurrent(llm, args, params, mode: str, run_index: int) -> dict[str, Any]:
    """``args.sessions`` inputs with Poisson arrivals, streamed or sent whole at their end.
    Every run has the same documents and arrival times (its wall time is bound by them);
    a per-run salt keeps it from hitting the prefix cache that earlier runs filled."""
    rng = random.Random(args.seed)
    docs = [document(llm.tokenizer, args.session_tokens, args.seed + 7919 + i, args.pattern)
            for i in range(args.sessions)]
    delays, t = [], 0.0
    for _ in docs:
        delays.append(t)
        t += rng.expovariate(args.arrivals_per_s)
    fn = run_session if mode == "session" else run_one_shot
    t0 = time.perf_counter()
    results = await asyncio.gather(*[fn(llm, d, args.session_rate, params, delay,
                                        salt=("concurrent", run_index))
                                     for d, delay in zip(docs, delays, strict=True)])
    wall = time.perf_counter() - t0
    ttfts = [r["ttft_s"] for r in results]
    tokens = sum(r["tokens"] for r in results)
    return {"mode": mode, "sessions": len(results), "ttft_p50_s": pct(ttfts, 0.5),
            "ttft_p99_s": pct(ttfts, 0.99), "wall_s": wall, "output_tokens": tokens,
            "expected_tokens": len(results) * args.max_tokens, "output_tok_per_s": tokens / wall}


def _gguf(model: str | None) -> Path | None:
    from thinkstream.loading import resolve_model_path

    path = resolve_model_path(model)
    return path if path.suffix == ".gguf" else None


async def _thinkstream_part(args, peers: list[str], checkpoint: Any, report: dict) -> list:
    """The thinkstream peers and the concurrent load; returns every length's prompt ids."""
    from thinkstream.async_llm import AsyncLLM
    from thinkstream.bench.report import quantization_arg
    from thinkstream.config import EngineConfig
    from thinkstream.engine.llm_engine import LLMEngine
    from thinkstream.engine.policy import policy_key
    from thinkstream.sampling_params import SamplingParams

    cfg = EngineConfig(dtype=args.dtype, quantization=quantization_arg(args.quantization),
                       kv_cache_memory=args.kv_cache_mb << 20, kv_cache_dtype=args.kv_cache_dtype,
                       max_num_batched_tokens=args.max_batched_tokens, num_threads=args.threads)
    t = time.perf_counter()
    llm = AsyncLLM(LLMEngine(args.model, cfg, checkpoint=checkpoint))
    report["model"] = str(llm.engine.model_path) if checkpoint is None else "<checkpoint>"
    report["peers"]["thinkstream"] = {"load_s": time.perf_counter() - t, "dtype": args.dtype,
                                      "quantization": args.quantization,
                                      "precision": llm.engine.precision.reason,
                                      "kv_cache_dtype": llm.engine.precision.kv_dtype,
                                      "threads": args.threads, "kv_cache_mb": args.kv_cache_mb,
                                      "max_num_batched_tokens": args.max_batched_tokens}
    params = SamplingParams(temperature=0, max_tokens=args.max_tokens, ignore_eos=True)
    prompts = []
    try:
        prefill = await calibrate(llm)
        args.rate = args.rate or (SPEECH_RATE if args.pattern == "speech" else prefill * 0.15)
        report.update(prefill_tok_per_s=prefill, rate_tok_per_s=args.rate)
        _log(f"prefill ~{prefill:.0f} tok/s; input arrives at {args.rate:.1f} tok/s ({args.pattern})")
        for n in args.lengths:
            chunks = document(llm.tokenizer, n, args.seed + n, args.pattern)
            # The waiting peers get a different document of the same length (no prefix hit).
            whole = "".join(document(llm.tokenizer, n, args.seed + n + 1, args.pattern))
            prompts.append(tuple(int(i) for i in llm.tokenizer.encode(whole)))
            row = {"doc_tokens": n, "prompt_tokens": len(prompts[-1]), "chunks": len(chunks),
                   "input_s": input_duration(llm.tokenizer, chunks, args.rate), "results": {}}
            if "thinkstream-stream" in peers:  # --reps documents (no prefix shared), medians
                runs = [await run_session(llm, chunks if r == 0 else document(
                    llm.tokenizer, n, args.seed + n + 1000 * r, args.pattern), args.rate, params)
                        for r in range(args.reps)]
                row["results"]["thinkstream-stream"] = {
                    "ttft_s": statistics.median(x["ttft_s"] for x in runs),
                    "total_s": statistics.median(x["total_s"] for x in runs),
                    "tokens": runs[0]["tokens"], "samples": runs}
            if "thinkstream-oneshot" in peers:
                t_end = time.perf_counter()  # the whole prompt, sent at input end
                row["results"]["thinkstream-oneshot"] = await _timed(
                    llm.generate(list(prompts[-1]), params), t_end)
            report["lengths"].append(row)
            _log(f"{n:>5} tokens: " + ", ".join(f"{k} TTFT {v['ttft_s'] * 1e3:.0f} ms"
                                                  for k, v in row["results"].items()))
        if args.sessions:
            runs = [(name, "session") for name in args.policies] + [("-", "one-shot")]
            for i, (name, mode) in enumerate(runs):
                key = policy_key(name if mode == "session" else cfg.session_policy)
                await llm.call(lambda e, key=key: setattr(e.scheduler, "priority", key))
                r = await concurrent(llm, args, params, mode, i)
                report["concurrent"].append({"policy": name, **r})
                _log(f"{mode} {name}: p50 {r['ttft_p50_s'] * 1e3:.0f} ms, "
                     f"{r['output_tok_per_s']:.1f} tok/s")
            await llm.call(lambda e: setattr(e.scheduler, "priority",
                                             policy_key(cfg.session_policy)))
    finally:
        llm.shutdown()
    return prompts


def _peer_part(args, name: str, gguf: Path, prompts: list, report: dict) -> None:
    """An engine that waits: the whole prompt at input end, through the bench peers."""
    from thinkstream.bench.runner import PeerSpec, WorkerPeer
    from thinkstream.bench.workloads import Request

    options: dict[str, Any] = {"max_batch": 1, "threads": args.threads}
    if name == "hf":
        options["dtype"] = args.hf_dtype or ("float32" if args.dtype == "auto" else args.dtype)
    peer = WorkerPeer(PeerSpec(name, None, gguf, options))
    try:
        info = peer.wait_ready()
        report["peers"][name] = {"load_s": info["load_s"], **info["settings"]}
        peer.generate([Request(prompts[0][:64], 2)])  # warm-up: first-call allocations
        for row, ids in zip(report["lengths"], prompts, strict=True):
            timing = peer.generate([Request(ids, args.max_tokens)])
            row["results"][name] = {"ttft_s": timing.first_s, "total_s": timing.total_s,
                                    "tokens": timing.generated}
            _log(f"{row['doc_tokens']:>5} tokens: {name} TTFT {timing.first_s * 1e3:.0f} ms")
    finally:
        peer.close()


def _log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def summarize(report: dict) -> None:
    """Ratios against the best waiting engine, and the issue's targets."""
    for row in report["lengths"]:
        res = row["results"]
        waiting = [p for p in WAITING if p in res]
        if waiting and "thinkstream-stream" in res:
            best = min(waiting, key=lambda p: res[p]["ttft_s"])
            row["best_waiting"] = best
            row["ttft_ratio_vs_best_waiting"] = res[best]["ttft_s"] / res["thinkstream-stream"]["ttft_s"]
            best_total = min(res[p]["total_s"] for p in waiting)
            row["total_ratio_vs_best_waiting"] = best_total / res["thinkstream-stream"]["total_s"]
    targets: dict[str, Any] = {}
    rows = {r["doc_tokens"]: r for r in report["lengths"]}
    if 4096 in rows and "ttft_ratio_vs_best_waiting" in rows[4096]:
        targets["ttft_4096_10x_lower_than_best_waiting"] = rows[4096]["ttft_ratio_vs_best_waiting"] >= 10
    if {256, 4096} <= set(rows) and "thinkstream-stream" in rows[256]["results"]:
        flat = (rows[4096]["results"]["thinkstream-stream"]["ttft_s"]
                / rows[256]["results"]["thinkstream-stream"]["ttft_s"])
        targets["ttft_4096_over_256"] = flat
        targets["ttft_4096_within_1_5x_of_256"] = flat <= 1.5
    conc = report["concurrent"]
    oneshot = [r for r in conc if r["mode"] == "one-shot"]
    if oneshot and len(conc) > 1:
        default = next((r for r in conc if r["policy"] == report.get("default_policy")), conc[0])
        targets["throughput_ratio_vs_non_streaming"] = (default["output_tok_per_s"]
                                                        / oneshot[0]["output_tok_per_s"])
        targets["throughput_no_worse_than_non_streaming"] = (
            targets["throughput_ratio_vs_non_streaming"] >= 1.0)
    report["targets"] = targets


def table(report: dict) -> str:
    peers = [p for p in PEERS if any(p in r["results"] for r in report["lengths"])]
    head = "| document tokens | " + " | ".join(f"{p} TTFT / full" for p in peers)
    lines = [head + " | best waiting / stream (TTFT, full) |", "|---" * (len(peers) + 2) + "|"]
    for r in report["lengths"]:
        cells = [f"{r['results'][p]['ttft_s'] * 1e3:.0f} ms / {r['results'][p]['total_s']:.2f} s"
                 if p in r["results"] else "-" for p in peers]
        ratio = (f"{r['ttft_ratio_vs_best_waiting']:.1f}x, {r['total_ratio_vs_best_waiting']:.1f}x "
                 f"({r['best_waiting']})" if "best_waiting" in r else "-")
        lines.append(f"| {r['doc_tokens']} | " + " | ".join(cells) + f" | {ratio} |")
    if report["concurrent"]:
        lines += ["", "| mode | policy | TTFT p50 | TTFT p99 | wall | output tok/s |",
                  "|---|---|---|---|---|---|"]
        for r in report["concurrent"]:
            lines.append(f"| {r['mode']} | {r['policy']} | {r['ttft_p50_s'] * 1e3:.0f} ms | "
                         f"{r['ttft_p99_s'] * 1e3:.0f} ms | {r['wall_s']:.1f} s | "
                         f"{r['output_tok_per_s']:.2f} |")
    return "\n".join(lines)


def plot(report: dict, path: str | Path) -> None:
    """Latency after input end against document length, one line per peer (TTFT solid,
    full answer dashed), log-log."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    xs = [r["doc_tokens"] for r in report["lengths"]]
    for i, peer in enumerate(p for p in PEERS if any(p in r["results"] for r in report["lengths"])):
        color = f"C{i}"
        pts = [(x, r["results"][peer]) for x, r in zip(xs, report["lengths"], strict=True)
               if peer in r["results"]]
        ax.plot([x for x, _ in pts], [v["ttft_s"] for _, v in pts], "o-", color=color,
                label=f"{peer} TTFT")
        ax.plot([x for x, _ in pts], [v["total_s"] for _, v in pts], "s--", color=color,
                alpha=0.6, label=f"{peer} full answer")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(xs, [str(x) for x in xs])
    ax.set_xlabel("document tokens")
    ax.set_ylabel("seconds after the input ends")
    ax.set_title(f"streaming input ({report['pattern']}, {report['max_tokens']}-token answer) - "
                 f"{Path(str(report.get('model', ''))).name}", fontsize=9)
    ax.legend(fontsize=7)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def add_arguments(p: argparse.ArgumentParser) -> None:
    from thinkstream.engine.policy import POLICIES

    ints = lambda s: [int(x) for x in s.split(",")]  # noqa: E731
    p.add_argument("--model", default=None,
                   help="GGUF file, HF directory, 'smollm2-135m' (default) or 'gemma3-270m'")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"],
                   help="thinkstream's dtype (default: the engine's own; HF: float32 for auto)")
    p.add_argument("--quantization", default="auto", choices=["auto", "none", "gguf", "int8", "int4"],
                   help="thinkstream's weight quantization (auto: GGUF-native where it runs)")
    p.add_argument("--kv-cache-dtype", default="auto", choices=list(KV_CACHE_DTYPES),
                   help="thinkstream's KV cache (EngineConfig.kv_cache_dtype; auto: its dtype)")
    p.add_argument("--hf-dtype", default=None, choices=["float32", "bfloat16"])
    p.add_argument("--lengths", default=[256, 1024, 4096], type=ints,
                   help="document lengths in tokens (default 256,1024,4096)")
    p.add_argument("--pattern", default="speech", choices=["speech", "bursts"])
    p.add_argument("--rate", type=float, default=None,
                   help="mean input tokens/s (default: speech 20, bursts 15%% of the measured "
                        "prefill rate)")
    p.add_argument("--max-tokens", type=int, default=16, help="answer length (greedy)")
    p.add_argument("--reps", type=positive_int, default=3,
                   help="streamed sessions per length (different documents; medians)")
    p.add_argument("--peers", default=",".join(PEERS), help="comma-separated subset of " + ",".join(PEERS))
    p.add_argument("--sessions", type=int, default=16, help="concurrent sessions (0: skip)")
    p.add_argument("--session-tokens", type=int, default=128)
    p.add_argument("--session-rate", type=float, default=8.0,
                   help="input tokens/s of each concurrent session")
    p.add_argument("--arrivals-per-s", type=float, default=4.0, help="Poisson arrival rate")
    p.add_argument("--policies", default=",".join(POLICIES), type=lambda s: s.split(","))
    p.add_argument("--max-batched-tokens", type=int, default=512)
    p.add_argument("--kv-cache-mb", type=int, default=1024)
    p.add_argument("--threads", type=positive_int, default=1, help="threads of every peer (default 1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="write the report here")
    p.add_argument("--plot", default=None, help="write a PNG here (needs matplotlib)")


def run(args: argparse.Namespace, checkpoint: Any = None) -> int:
    """Run, print the table, write ``--json`` / ``--plot``. ``checkpoint`` (an already
    loaded model, for tests) allows only the thinkstream peers."""
    import json

    peers = [p.strip() for p in args.peers.split(",") if p.strip()]
    for p in peers:
        if p not in PEERS:
            raise ValueError(f"--peers: unknown peer {p!r}; choose from {', '.join(PEERS)}")
    external = [p for p in peers if p in ("hf", "llamacpp")]
    gguf = None
    if external:
        gguf = None if checkpoint is not None else _gguf(args.model)
        if gguf is None:
            raise ValueError(f"peers {external} need a GGUF model file")
    from thinkstream.config import EngineConfig

    report: dict[str, Any] = {
        "schema": SCHEMA,
        "command": "thinkstream " + " ".join(sys.argv[1:]) if checkpoint is None else "test",
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "pattern": args.pattern, "threads": args.threads, "max_tokens": args.max_tokens,
        "session_tokens": args.session_tokens, "session_rate_tok_per_s": args.session_rate,
        "arrivals_per_s": args.arrivals_per_s, "default_policy": EngineConfig().session_policy,
        "peers": {}, "lengths": [], "concurrent": []}
    prompts = asyncio.run(_thinkstream_part(args, peers, checkpoint, report))
    for name in external:
        _peer_part(args, name, gguf, prompts, report)
    summarize(report)
    print(table(report))
    if report["targets"]:
        print(json.dumps(report["targets"], indent=1))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    if args.plot:
        plot(report, args.plot)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(p)
    return run(p.parse_args(argv))
