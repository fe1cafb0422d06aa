"""Side by side on this CPU: thinkstream's default (``dtype="auto"``), thinkstream float32
(dense, the old default), llama.cpp and HF transformers float32, one process, one thread.

Three workloads on seeded random prompts (``workloads.py``): decode at batch 1 (``--decode``
tokens), decode at batch 32 and prefill of 512 tokens (time to the first token). The peers
take turns within every repetition, so a noisy neighbour hits all of them; each figure is
the median over ``--reps``, as wall time and as this process's CPU time (with one thread
the CPU time is the run's cost without the waits a shared machine adds). The report records
the CPU model and instruction sets (``kernels/cpu.py``)::

    python -m thinkstream.bench.side_by_side --reps 3 --json docs/results/cpu_zen4.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import time
from typing import Any

import torch

from thinkstream.bench.runner import LocalPeer, PeerSpec
from thinkstream.bench.workloads import decode_workload, prefill_workload
from thinkstream.kernels.cpu import detect_cpu

PEERS = {
    "thinkstream (default)": ("thinkstream", {"dtype": "auto", "quantization": "auto"}),
    "thinkstream float32": ("thinkstream", {"dtype": "float32", "quantization": None}),
    "llamacpp": ("llamacpp", {}),
    "hf float32": ("hf", {"dtype": "float32"}),
}


def _workloads(vocab: int, decode_tokens: int, batch_tokens: int, seed: int) -> dict[str, Any]:
    """Fresh prompts per repetition (``seed``): no peer reuses a cached prefix."""
    return {"decode b1": decode_workload(1, vocab, decode_tokens, seed=seed),
            "decode b32": decode_workload(32, vocab, batch_tokens, seed=seed),
            "prefill 512": prefill_workload(512, vocab, seed=seed)}


def _rate(name: str, work, wall: float) -> float:
    """tokens/s: generated tokens for decode, prompt tokens for prefill."""
    if name.startswith("prefill"):
        return sum(len(r.prompt) for r in work.requests) / wall
    return sum(r.max_tokens for r in work.requests) / wall


def run(args: argparse.Namespace) -> dict[str, Any]:
    from thinkstream.loading import resolve_model_path

    path = resolve_model_path(args.model)
    model, gguf = args.model, path if path.suffix == ".gguf" else None
    names = [n for n in PEERS if n in args.peers.split(",") or args.peers == "all"]
    peers = {}
    for n in names:
        kind, opts = PEERS[n]
        opts = {**opts, "threads": args.threads, "max_batch": 32}
        peers[n] = LocalPeer(PeerSpec(kind, model, gguf, opts))
    vocab = next(iter(peers.values())).info["vocab_size"]
    for p in peers.values():  # warm-up: first calls build kernels and caches
        p.generate(list(decode_workload(2, vocab, 4).requests))
    wall: dict[tuple[str, str], list[float]] = {}
    cpu: dict[tuple[str, str], list[float]] = {}
    for rep in range(args.reps):
        works = _workloads(vocab, args.decode, args.batch_tokens, seed=1 + rep)
        for w, work in works.items():
            for n, p in peers.items():
                c0, t0 = time.process_time(), time.perf_counter()
                p.generate(list(work.requests))
                wall.setdefault((n, w), []).append(time.perf_counter() - t0)
                cpu.setdefault((n, w), []).append(time.process_time() - c0)
    rows = {w: {n: {"wall_tok_s": _rate(w, works[w], statistics.median(wall[n, w])),
                    "cpu_tok_s": _rate(w, works[w], statistics.median(cpu[n, w]))}
                for n in peers} for w in works}
    return {"schema": "thinkstream-side-by-side/1", "cpu": detect_cpu().as_dict(),
            "threads": args.threads, "reps": args.reps, "torch": torch.__version__,
            "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "settings": {n: p.info["settings"] for n, p in peers.items()}, "results": rows}


def table(report: dict[str, Any]) -> str:
    peers = list(next(iter(report["results"].values())))
    lines = ["| workload | " + " | ".join(peers) + " | default / llamacpp | default / hf |",
             "|---|" + "---|" * (len(peers) + 2)]
    for w, row in report["results"].items():
        cells = [f"{row[p]['wall_tok_s']:.1f} ({row[p]['cpu_tok_s']:.1f})" for p in peers]
        ts = row.get("thinkstream (default)", {}).get("cpu_tok_s")
        ratios = [f"{ts / row[p]['cpu_tok_s']:.2f}x" if ts and p in row else "-"
                  for p in ("llamacpp", "hf float32")]
        lines.append(f"| {w} | " + " | ".join(cells + ratios) + " |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None)
    p.add_argument("--peers", default="all", help="comma-separated subset of: " + ", ".join(PEERS))
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--decode", type=int, default=32, help="tokens generated at batch 1")
    p.add_argument("--batch-tokens", type=int, default=16, help="tokens per sequence at batch 32")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    report = run(args)
    print(f"{detect_cpu().describe()}; {args.threads} thread(s); tokens/s wall (CPU time)")
    print(table(report))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
