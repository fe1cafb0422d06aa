"""Side by side on this CPU: thinkstream's default (``dtype="auto"``), thinkstream float32
(dense, the old default), llama.cpp, HF transformers float32 and vLLM CPU float32 (when its
environment exists: ``vllm_peer.py``), one thread each.

Four workloads on seeded random prompts (``workloads.py``): decode at batch 1 (``--decode``
tokens), decode at batch 8 and 32 and prefill of 512 tokens (time to the first token). The
peers take turns within every repetition, so a noisy neighbour hits all of them; each
figure is the median over ``--reps``, as wall time and as the peer's CPU time (with one
thread the CPU time is the run's cost without the waits a shared machine adds; vLLM runs in
a process of its own and reports its own). Each peer's set-up for a workload's shape
(llama.cpp's context) is done before its timing. The report records the CPU model and
instruction sets (``kernels/cpu.py``)::

    thinkstream bench side-by-side --reps 3 --json docs/results/cpu_zen4_side_by_side.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
import time
from typing import Any

from thinkstream.bench.report import cpu_record
from thinkstream.bench.runner import LocalPeer, PeerSpec
from thinkstream.bench.workloads import decode_workload, prefill_workload

PEERS = {
    "thinkstream (default)": ("thinkstream", {"dtype": "auto", "quantization": "auto"}),
    "thinkstream float32": ("thinkstream", {"dtype": "float32", "quantization": None}),
    "llamacpp": ("llamacpp", {}),
    "hf float32": ("hf", {"dtype": "float32"}),
    "vllm float32": ("vllm", {"dtype": "float32"}),
}
RATIOS = ("llamacpp", "hf float32", "vllm float32")


def _workloads(vocab: int, decode_tokens: int, batch_tokens: int, seed: int) -> dict[str, Any]:
    """Fresh prompts per repetition (``seed``): no peer reuses a cached prefix."""
    return {"decode b1": decode_workload(1, vocab, decode_tokens, seed=seed),
            "decode b8": decode_workload(8, vocab, batch_tokens, seed=seed),
            "decode b32": decode_workload(32, vocab, batch_tokens, seed=seed),
            "prefill 512": prefill_workload(512, vocab, seed=seed)}


def _rate(name: str, work, wall: float) -> float:
    """tokens/s: generated tokens for decode, prompt tokens for prefill."""
    if name.startswith("prefill"):
        return sum(len(r.prompt) for r in work.requests) / wall
    return sum(r.max_tokens for r in work.requests) / wall


def _peers(args: argparse.Namespace) -> dict[str, LocalPeer]:
    from thinkstream.bench.vllm_peer import vllm_available
    from thinkstream.loading import resolve_model_path

    path = resolve_model_path(args.model)
    model, gguf = args.model, path if path.suffix == ".gguf" else None
    names = [n for n in PEERS if args.peers == "all" or n in args.peers]
    peers = {}
    for n in names:
        kind, opts = PEERS[n]
        opts = {**opts, "threads": args.threads, "max_batch": 32}
        if kind == "vllm":
            if not vllm_available(args.vllm_python):
                continue
            opts.update(python=args.vllm_python, kv_cache_gb=args.vllm_kv_gb)
        peers[n] = LocalPeer(PeerSpec(kind, model, gguf, opts))
    return peers


def run(args: argparse.Namespace) -> dict[str, Any]:
    peers = _peers(args)
    try:
        return _measure(args, peers)
    finally:
        for p in peers.values():
            p.close()


def _measure(args: argparse.Namespace, peers: dict[str, LocalPeer]) -> dict[str, Any]:
    vocab = min(p.info["vocab_size"] for p in peers.values())
    for p in peers.values():  # warm-up: first calls build kernels and caches
        p.generate(list(decode_workload(2, vocab, 4).requests))
    wall: dict[tuple[str, str], list[float]] = {}
    agreement: dict[str, Any] = {}
    cpu: dict[tuple[str, str], list[float]] = {}
    for rep in range(args.reps):
        works = _workloads(vocab, args.decode, args.batch_tokens, seed=1 + rep)
        for w, work in works.items():
            for n, p in peers.items():
                p.prepare(list(work.requests))  # llama.cpp: its context for this shape
                c0, t0 = time.process_time(), time.perf_counter()
                timing = p.generate(list(work.requests))
                wall.setdefault((n, w), []).append(time.perf_counter() - t0)
                own = timing.cpu_s  # a peer in its own process reports its CPU time
                cpu.setdefault((n, w), []).append(own if own is not None
                                                  else time.process_time() - c0)
            if w == "decode b8":  # 8 requests x --batch-tokens greedy tokens
                agreement = _agreement(peers)
    rows = {w: {n: {"wall_tok_s": _rate(w, works[w], statistics.median(wall[n, w])),
                    "cpu_tok_s": _rate(w, works[w], statistics.median(cpu[n, w]))}
                for n in peers} for w in works}
    import torch  # here, not at the top: `thinkstream bench side-by-side --help` loads no torch

    return {"schema": "thinkstream-side-by-side/1", "cpu": cpu_record(),
            "threads": args.threads, "reps": args.reps, "torch": torch.__version__,
            "command": _command(),
            "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "settings": {n: p.info["settings"] for n, p in peers.items()}, "results": rows,
            "agreement": agreement}


def _command() -> str:
    """This run's command line, as ``thinkstream bench side-by-side ...``."""
    argv = sys.argv[1:]
    return " ".join(["thinkstream", "bench", "side-by-side",
                     *(argv[2:] if argv[:2] == ["bench", "side-by-side"] else argv)])


def _agreement(peers: dict[str, LocalPeer], base: str = "thinkstream float32") -> dict[str, Any]:
    """Greedy tokens of every peer against thinkstream float32's on the same requests: how
    many are identical, and the mean length of the common prefix (tokens)."""
    if base not in peers:
        return {}
    ref = peers[base].peer.last_tokens
    out = {}
    for n, p in peers.items():
        theirs = getattr(p.peer, "last_tokens", None)
        if n == base or theirs is None or len(theirs) != len(ref):
            continue
        theirs = theirs.tolist() if hasattr(theirs, "tolist") else [list(t) for t in theirs]
        prefix = [next((i for i, (a, b) in enumerate(zip(x, y, strict=False)) if a != b),
                       min(len(x), len(y))) for x, y in zip(ref, theirs, strict=True)]
        out[n] = {"against": base, "requests": len(ref),
                  "identical": sum(x == y for x, y in zip(ref, theirs, strict=True)),
                  "mean_common_prefix": sum(prefix) / len(prefix),
                  "tokens_per_request": [len(x) for x in ref]}
    return out


def table(report: dict[str, Any]) -> str:
    peers = list(next(iter(report["results"].values())))
    others = [p for p in RATIOS if p in peers]
    lines = ["| workload | " + " | ".join(peers) + " | "
             + " | ".join(f"default / {p}" for p in others) + " |",
             "|---|" + "---|" * (len(peers) + len(others))]
    for w, row in report["results"].items():
        cells = [f"{row[p]['cpu_tok_s']:.1f} ({row[p]['wall_tok_s']:.1f})" for p in peers]
        ts = row.get("thinkstream (default)", {}).get("cpu_tok_s")
        ratios = [f"{ts / row[p]['cpu_tok_s']:.2f}x" if ts else "-" for p in others]
        lines.append(f"| {w} | " + " | ".join(cells + ratios) + " |")
    return "\n".join(lines)


def peer_list(text: str) -> str | list[str]:
    """``--peers``: "all", or names of ``PEERS`` separated by commas (an unknown name is an
    error naming the choices, not a silently missing column)."""
    if text == "all":
        return text
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in PEERS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown peer(s) {unknown or [text]}; choose from "
                                         + ", ".join(PEERS) + " or all")
    return names


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None)
    p.add_argument("--peers", default="all", type=peer_list,
                   help="comma-separated subset of: " + ", ".join(PEERS) + " (or all)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--decode", type=int, default=32, help="tokens generated at batch 1")
    p.add_argument("--batch-tokens", type=int, default=16,
                   help="tokens per sequence at batch 8 and 32")
    p.add_argument("--json", default=None)


def run_cli(args: argparse.Namespace) -> int:
    """Run, print the table (CPU time, wall time in parentheses), write ``--json``."""
    import torch

    from thinkstream.kernels.cpu import detect_cpu

    torch.set_num_threads(args.threads)
    report = run(args)
    print(f"{detect_cpu().describe()}; {args.threads} thread(s); tokens/s CPU time (wall)")
    print(table(report))
    for n, a in report["agreement"].items():
        print(f"greedy tokens, {n} vs {a['against']}: {a['identical']}/{a['requests']} requests "
              f"identical, common prefix {a['mean_common_prefix']:.1f} tokens on average")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    return 0


def main() -> None:
    from thinkstream.bench.vllm_peer import vllm_arguments

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(p)
    vllm_arguments(p)
    run_cli(p.parse_args())


if __name__ == "__main__":
    main()
