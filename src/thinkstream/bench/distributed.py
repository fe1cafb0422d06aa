"""``thinkstream bench distributed``: tensor parallelism, Ray replicas, weight streaming.

    thinkstream bench distributed --json docs/results/distributed.json

- ``tp``: TP = 2 (one thread per rank, gloo) against TP = 1 with 2 threads, float32:
  decode at batch 1 and 32, prefill of 512 tokens; tokens/s, their ratio, and the share
  of rank 0's step time blocked on all-reduces, with and without ``--tp-overlap``.
- ``replicas``: 2 Ray replicas (one CPU and one thread each) behind the router against
  one replica, 64 concurrent chat requests; then 16 concurrent sessions and the share of
  each one's calls that reached its replica.
- ``streaming``: weight streaming at a cap of a third of the float32 model: decode
  tokens/s per window size and the peak RSS while generating (each in a subprocess, its
  peak reset after the build), beside the loaded model.

Configurations alternate within one run; every figure records the CPU class.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from typing import Any

from thinkstream.bench.playground import machine

CHAT = [{"role": "user", "content": "Write a short poem about the sea."}]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, help="GGUF file or HF directory (default SmolLM2)")
    p.add_argument("--parts", default="tp,replicas,streaming")
    p.add_argument("--reps", type=int, default=2)
    p.add_argument("--decode-steps", type=int, default=16)
    p.add_argument("--json", default=None)


# ------------------------------------------------------------------ tensor parallel
def _steps(engine, prompts: list[list[int]], max_tokens: int) -> tuple[float, int, float]:
    """Add the prompts, step until each has its first token, then time the rest:
    (prefill seconds, decode tokens, decode seconds)."""
    from thinkstream import SamplingParams

    params = SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True)
    ids = [engine.add_request(None, p, params) for p in prompts]
    t0 = time.perf_counter()
    while any(i in engine.requests and not engine.requests[i].seqs[0].output_token_ids
              for i in ids):
        engine.step()
    t1 = time.perf_counter()
    tokens = 0
    while engine.has_unfinished_requests():
        tokens += sum(len(o.outputs[0].new_token_ids) for o in engine.step())
    return t1 - t0, tokens, time.perf_counter() - t1


def _reduce_seconds(engine) -> float:
    comm = getattr(engine.runner, "comm", None)
    return comm.reduce_seconds if comm is not None else 0.0


def bench_tp(model: str | None, reps: int, decode_steps: int) -> list[dict[str, Any]]:
    from thinkstream import LLM

    one = LLM(model, dtype="float32", num_threads=2, num_blocks=1024)
    two = LLM(model, dtype="float32", num_threads=1, num_blocks=1024, tensor_parallel_size=2)
    vocab = one.engine.model_config.vocab_size
    prompt = one.chat_prompt(CHAT)
    long = [(i * 7919) % (vocab - 1000) + 500 for i in range(512)]
    workloads = {"decode b1": ([prompt], decode_steps), "decode b32": ([prompt] * 32, decode_steps),
                 "prefill 512": ([long], 1)}
    rows, runs = [], 0
    try:
        for name, (prompts, n) in workloads.items():
            seen: dict[str, list[tuple[float, float]]] = {}
            for _ in range(reps):
                for label, llm, overlap in (("tp1", one, False), ("tp2", two, False),
                                            ("tp2+overlap", two, True)):
                    if overlap or label == "tp2":
                        two.engine.runner.overlap = overlap
                    runs += 1  # a first token of its own: no prefix-cache hit, ever
                    salt = [[runs] + p for p in prompts]
                    r0 = _reduce_seconds(llm.engine)
                    pre, tokens, dec = _steps(llm.engine, salt, n)
                    secs = pre if name.startswith("prefill") else dec
                    count = sum(len(p) for p in salt) if name.startswith("prefill") else tokens
                    share = (_reduce_seconds(llm.engine) - r0) / (pre + dec)
                    seen.setdefault(label, []).append((count / secs, share))
            best = {k: max(v) for k, v in seen.items()}
            rows.append({"workload": name, **{f"{k} tok/s": round(v[0], 1) for k, v in best.items()},
                         "tp2/tp1": round(best["tp2"][0] / best["tp1"][0], 2),
                         "tp2+overlap/tp1": round(best["tp2+overlap"][0] / best["tp1"][0], 2),
                         "all-reduce share tp2": round(best["tp2"][1], 3),
                         "all-reduce share tp2+overlap": round(best["tp2+overlap"][1], 3)})
            print(rows[-1], file=sys.stderr)
    finally:
        two.engine.close()
    return rows


# -------------------------------------------------------------------- replicas
async def _chat_load(url: str, n: int, max_tokens: int) -> tuple[float, int]:
    import httpx

    async with httpx.AsyncClient(base_url=url, timeout=600) as c:
        async def one(i: int) -> int:
            r = await c.post("/v1/chat/completions", json={
                "model": "m", "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True,
                "messages": [{"role": "user", "content": f"{i}: write about the sea."}]})
            r.raise_for_status()
            return r.json()["usage"]["completion_tokens"]

        t0 = time.perf_counter()
        tokens = sum(await asyncio.gather(*(one(i) for i in range(n))))
        return time.perf_counter() - t0, tokens


async def _sessions(url: str, n: int) -> float:
    """n concurrent sessions, 3 appends and a close each: the share of their calls that
    reached the replica that opened them."""
    import httpx

    async with httpx.AsyncClient(base_url=url, timeout=600) as c:
        async def one(i: int) -> tuple[int, int]:
            r = await c.post("/v1/sessions", json={"model": "m", "messages": [], "max_tokens": 4})
            sid, home = r.json()["id"], r.headers["x-thinkstream-replica"]
            calls = [await c.post(f"/v1/sessions/{sid}/append", json={"text": f"part {k} ", "seq": k})
                     for k in range(3)]
            calls.append(await c.post(f"/v1/sessions/{sid}/close", json={}))
            return sum(x.headers["x-thinkstream-replica"] == home for x in calls), len(calls)

        done = await asyncio.gather(*(one(i) for i in range(n)))
        return sum(a for a, _ in done) / sum(b for _, b in done)


def _serve(app) -> tuple[str, Any]:
    import socket
    import threading

    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True).start()
    while not server.started:
        time.sleep(0.01)
    return f"http://127.0.0.1:{sock.getsockname()[1]}", server


def bench_replicas(model: str | None, reps: int, requests: int = 64,
                   max_tokens: int = 32) -> dict[str, Any]:
    import ray

    from thinkstream.config import EngineConfig
    from thinkstream.distributed.replicas.launch import start_replicas
    from thinkstream.distributed.replicas.proxy import ReplicaProxy, create_router_app
    from thinkstream.distributed.replicas.routing import Router
    from thinkstream.server.config import ServerConfig

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    engine = EngineConfig(num_threads=1, num_blocks=2048)
    reps_ = start_replicas(2, model, engine, ServerConfig(served_model_name="m"))
    tok = reps_.app.state.proxy.tokenizer
    solo = ReplicaProxy(Router(reps_.urls[:1]), tok, lambda i: reps_.actors[i].ping.remote())
    both_url, s1 = _serve(reps_.app)
    solo_url, s2 = _serve(create_router_app(solo))
    try:
        rates: dict[str, list[float]] = {"1 replica": [], "2 replicas": []}
        for _ in range(reps):
            for label, url in (("1 replica", solo_url), ("2 replicas", both_url)):
                secs, tokens = asyncio.run(_chat_load(url, requests, max_tokens))
                rates[label].append(tokens / secs)
        best = {k: max(v) for k, v in rates.items()}
        affinity = asyncio.run(_sessions(both_url, 16))
        return {"requests": requests, "max_tokens": max_tokens,
                **{f"{k} tok/s": round(v, 1) for k, v in best.items()},
                "ratio": round(best["2 replicas"] / best["1 replica"], 2),
                "sessions": 16, "session calls on their replica": affinity}
    finally:
        s1.should_exit = s2.should_exit = True
        reps_.shutdown()
        ray.shutdown()


# ------------------------------------------------------------------- streaming
CHILD = r"""
import json, sys, time, torch
torch.set_num_threads(1)
from thinkstream import LLM, SamplingParams
cap, window, steps = (int(a) for a in sys.argv[2:5])
opts = {} if cap == 0 else {"max_weight_memory_mb": cap, "weight_window": window or None}
llm = LLM(sys.argv[1] or None, dtype="float32", num_threads=1, num_blocks=64, **opts)
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")
rss = lambda k: next(int(l.split()[1]) // 1024 for l in open("/proc/self/status") if l.startswith(k))
before = rss("VmRSS:")
p = SamplingParams(temperature=0, max_tokens=steps, ignore_eos=True)
llm.generate(["Hello"], SamplingParams(temperature=0, max_tokens=1))
t = time.perf_counter()
out = llm.generate(["Write about the sea."], p)
secs = time.perf_counter() - t
layers = llm.engine.model.layers
print(json.dumps({"tok/s": steps / secs, "rss before MiB": before, "peak RSS MiB": rss("VmHWM:"),
                  "window": getattr(layers, "window", len(layers))}))
"""


def bench_streaming(model: str | None, steps: int) -> list[dict[str, Any]]:
    from thinkstream.loading import load_checkpoint
    from thinkstream.loading.names import expected_shapes

    cfg = load_checkpoint(model, tensors=False).config
    weights = sum(4 * _prod(s) for s in expected_shapes(cfg).values()) >> 20
    cap = weights // 3
    rows = []
    for window in (0, 1, 2, 4):  # 0: the cap's own choice
        rows.append({"cap MiB": cap, **_child(model, cap, window, steps)})
    rows.append({"cap MiB": None, "model MiB": weights, **_child(model, 0, 0, steps)})
    for r in rows:
        print(r, file=sys.stderr)
    return rows


def _child(model: str | None, cap: int, window: int, steps: int) -> dict[str, Any]:
    out = subprocess.run([sys.executable, "-c", CHILD, model or "", str(cap), str(window),
                          str(steps)], capture_output=True, text=True, timeout=900)
    if out.returncode:
        return {"error": out.stderr.strip().splitlines()[-1]}
    row = json.loads(out.stdout.strip().splitlines()[-1])
    row["tok/s"] = round(row["tok/s"], 2)
    return row


def _prod(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def run(args: argparse.Namespace) -> int:
    parts = set(args.parts.split(","))
    report: dict[str, Any] = {"machine": {**machine(), "load average": os.getloadavg()},
                              "command": "thinkstream bench distributed " + " ".join(sys.argv[3:])}
    if "tp" in parts:
        report["tensor_parallel"] = bench_tp(args.model, args.reps, args.decode_steps)
    if "replicas" in parts:
        report["replicas"] = bench_replicas(args.model, args.reps)
    if "streaming" in parts:
        report["weight_streaming"] = bench_streaming(args.model, max(4, args.decode_steps // 2))
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text + "\n")
    return 0
