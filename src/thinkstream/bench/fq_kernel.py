"""The fused attention kernel alone (``kernels/fq_attention.c``), at SmolLM2-135M's shapes
(9 query heads, 3 key/value heads, head dim 64, 30 layers), 1 thread, CPU time
(docs/benchmarks.md, "Streaming answer step").

For each (queries, keys, cache): one call per layer over 30 layers' caches (a step's keys
are cold in cache, as in the engine), paged slots (16-slot blocks in shuffled order), the
chunk's causal mask; ms per layer, median of ``--reps``. Caches: ``float32``, ``bfloat16``
(this CPU's build: AVX512_BF16 dot products where it has them, ``kernels/fq_bf16.h``) and
``bfloat16-widened`` (the build without them: widened to float32), all timed alternately
for a shape. ``--baseline FILE`` builds another version of the source (e.g. ``git show
REV:src/thinkstream/kernels/fq_attention.c``) for the same instruction set and times it
alternately with this one, so noise hits both.

    python -m thinkstream.bench.fq_kernel [--queries 1 16 18] [--keys 256 4096]
        [--dtypes float32 bfloat16-widened bfloat16] [--baseline OLD.c]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from thinkstream.bench.report import write_one_thread_json
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
    """One pass over the 30 layers; ms per layer: CPU time on one thread, wall time with
    more (``torch.get_num_threads()``, which the kernel's OpenMP region takes)."""
    clock = time.process_time if torch.get_num_threads() == 1 else time.perf_counter
    t = clock()
    for kc, vc in x["caches"]:
        kernel(x["q"], kc, vc, x["slots"], x["mask"], D ** -0.5)
    return (clock() - t) / LAYERS * 1e3


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--queries", type=int, nargs="+", default=[1, 16, 18])
    p.add_argument("--keys", type=int, nargs="+", default=[256, 4096])
    p.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16-widened", "bfloat16"],
                   choices=["float32", "bfloat16-widened", "bfloat16"])
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--threads", type=int, default=1, help="the kernel's threads (above 1: wall time)")
    p.add_argument("--baseline", type=Path, default=None, help="another fq_attention.c to compare")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    isa = wanted_isa()
    current = ka.load_fq_attention()
    if isa is None or current is None:
        raise SystemExit("no fused kernel here (no compiler, or THINKSTREAM_NATIVE=0)")
    builds = {"this": current}
    if args.baseline is not None:
        # built like "this" (with -mavx512bf16 where this build has the dot products)
        extra = ("-mavx512bf16",) if current.bf16_dot else ()
        lib = open_isa_library(args.baseline.resolve(), isa, "fq_isa", extra)
        if lib is None:
            raise SystemExit(f"{args.baseline} does not build for {isa}")
        builds["baseline"] = ka._configure(lib, isa)
    widened = ka._load(isa) if current.bf16_dot else current  # the build without dot products
    print(f"build: {isa}, bfloat16 dot products: {'yes' if current.bf16_dot else 'no'}; "
          f"ms per layer ({'CPU' if args.threads == 1 else 'wall'} time, median of {args.reps}, "
          f"{args.threads} thread(s))")
    print("| queries | keys | cache | " + " | ".join(builds) + " | float32 / this |"
          + (" baseline / this |" if len(builds) > 1 else ""))
    print("|---" * (4 + len(builds) + (len(builds) > 1)) + "|")
    rows = []
    for nq in args.queries:
        for length in args.keys:
            rows += time_shape(nq, length, args.dtypes, builds, widened, args.reps)
    if args.json is not None:
        write_one_thread_json(args.json, args.reps, isa=isa, bf16_dot=current.bf16_dot,
                              baseline=str(args.baseline) if args.baseline else None, rows=rows)


def time_shape(nq: int, length: int, caches: list[str], builds: dict[str, ka.FusedAttention],
               widened: ka.FusedAttention, reps: int) -> list[dict]:
    """The ``caches`` of one shape, every (cache, build) timed in turn ``reps`` times; prints
    a table row per cache and returns them. ``bfloat16-widened`` runs ``widened`` in place
    of "this" build."""
    x = {c: inputs(nq, length, torch.float32 if c == "float32" else torch.bfloat16) for c in caches}
    times = {(c, name): [] for c in caches for name in builds}
    for _ in range(reps):
        for c, name in times:
            kernel = widened if (c, name) == ("bfloat16-widened", "this") else builds[name]
            times[c, name].append(per_layer_ms(kernel, x[c]))
    rows = []
    for c in caches:
        ms = {name: statistics.median(times[c, name]) for name in builds}
        rows.append({"queries": nq, "keys": length, "cache": c, "ms_per_layer": ms})
        f32 = statistics.median(times["float32", "this"]) if "float32" in caches else float("nan")
        ratio = f" {ms['baseline'] / ms['this']:.2f}x |" if "baseline" in ms else ""
        print(f"| {nq} | {length:,} | {c} | " + " | ".join(f"{v:.3f}" for v in ms.values())
              + f" | {f32 / ms['this']:.2f}x |" + ratio)
    return rows


if __name__ == "__main__":
    main()
