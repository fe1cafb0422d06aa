"""The fused attention kernel alone (``kernels/fq_attention.c``), at SmolLM2-135M's shapes
(9 query heads, 3 key/value heads, head dim 64, 30 layers), 1 thread, CPU time
(docs/benchmarks.md, "Streaming answer step").

For each (queries, keys, cache dtype): one call per layer over 30 layers' caches (a step's
keys are cold in cache, as in the engine), paged slots (16-slot blocks in shuffled order),
the chunk's causal mask; ms per layer, median of ``--reps``. ``--baseline FILE`` builds
another version of the source (e.g. ``git show REV:src/thinkstream/kernels/fq_attention.c``)
for the same instruction set and times it alternately with this one, so noise hits both.

    python -m thinkstream.bench.fq_kernel [--queries 1 16 18] [--keys 256 4096] [--baseline OLD.c]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from thinkstream.bench.report import machine
from thinkstream.kernels import attention as ka
from thinkstream.kernels.native import open_isa_library, wanted_isa

H, KVH, D, LAYERS = 9, 3, 64, 30


def inputs(nq: int, length: int, dtype: torch.dtype, seed: int = 0) -> dict:
    """30 layers of caches, the slots, the chunk's causal mask and the queries."""
    g = torch.Generator().manual_seed(seed)
    slots_total = (length // 16 + 2) * 16
    blocks = torch.randperm(slots_total // 16, generator=g)
    slots = (blocks[:, None] * 16 + torch.arange(16)).flatten()[:length][None].contiguous()
    caches = [(torch.randn(slots_total, KVH, D, generator=g).to(dtype),
               torch.randn(slots_total, KVH, D, generator=g).to(dtype)) for _ in range(LAYERS)]
    pos = torch.arange(length - nq, length)[:, None]
    mask = (torch.arange(length)[None] <= pos)[None]  # (1, nq, length)
    return {"q": torch.randn(1, nq, H, D, generator=g), "caches": caches, "slots": slots,
            "mask": mask}


def per_layer_ms(kernel: ka.FusedAttention, x: dict) -> float:
    """One pass over the 30 layers; CPU ms per layer."""
    t = time.process_time()
    for kc, vc in x["caches"]:
        kernel(x["q"], kc, vc, x["slots"], x["mask"], D ** -0.5)
    return (time.process_time() - t) / LAYERS * 1e3


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--queries", type=int, nargs="+", default=[1, 16, 18])
    p.add_argument("--keys", type=int, nargs="+", default=[256, 4096])
    p.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--baseline", type=Path, default=None, help="another fq_attention.c to compare")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()
    torch.set_num_threads(1)
    isa = wanted_isa()
    current = ka.load_fq_attention()
    if isa is None or current is None:
        raise SystemExit("no fused kernel here (no compiler, or THINKSTREAM_NATIVE=0)")
    builds = {"this": current}
    if args.baseline is not None:
        lib = open_isa_library(args.baseline.resolve(), isa, "fq_isa")
        if lib is None:
            raise SystemExit(f"{args.baseline} does not build for {isa}")
        builds["baseline"] = ka._configure(lib, isa)
    rows = []
    print(f"build: {isa}; ms per layer (CPU time, median of {args.reps})")
    print("| queries | keys | cache | " + " | ".join(builds) + (" | baseline / this |" if len(builds) > 1 else " |"))
    print("|---" * (3 + len(builds) + (len(builds) > 1)) + "|")
    for dtype in args.dtypes:
        for nq in args.queries:
            for length in args.keys:
                x = inputs(nq, length, getattr(torch, dtype))
                times: dict[str, list[float]] = {name: [] for name in builds}
                for _ in range(args.reps):
                    for name, kernel in builds.items():
                        times[name].append(per_layer_ms(kernel, x))
                ms = {name: statistics.median(t) for name, t in times.items()}
                rows.append({"queries": nq, "keys": length, "cache": dtype, "ms_per_layer": ms})
                ratio = f" {ms['baseline'] / ms['this']:.2f}x |" if "baseline" in ms else ""
                print(f"| {nq} | {length:,} | {dtype} | " + " | ".join(f"{v:.3f}" for v in ms.values())
                      + " |" + ratio)
    if args.json is not None:
        args.json.write_text(json.dumps({"machine": machine(), "isa": isa, "reps": args.reps,
                                         "baseline": str(args.baseline) if args.baseline else None,
                                         "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
