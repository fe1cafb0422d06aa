"""What verifying m draft rows costs: one sequence's forward over m new tokens after a
cached prefix (a speculative verification step), against one row (docs/benchmarks.md,
"Speculative decoding": why batch-1 speculation stops where it does on a CPU).

The default ``LLM()`` (SmolLM2-135M, GGUF kernels and the native stack), 1 thread; each
figure the median of ``--reps`` rounds of this process's CPU time, rows alternating; the
LM head runs on every row, as in verification.

    python -m thinkstream.bench.verify_rows [--model M] [--prefix 100] [--reps 5] [--rows 1 2 ..] [--json F]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from thinkstream.bench.report import write_one_thread_json

ROWS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32)


def measure(model: str | None, prefix: int, reps: int, rows: tuple[int, ...] = ROWS) -> dict[int, float]:
    """Median CPU ms of the forward (layers + LM head) over m new tokens, per m in ``rows``
    (each >= 1)."""
    from thinkstream.attention.metadata import SeqSlice, build_attention_metadata
    from thinkstream.llm import LLM

    llm = LLM(model, num_threads=1)
    eng = llm.engine
    ids = torch.randint(100, 10000, (prefix + max(rows),), generator=torch.Generator().manual_seed(0))
    if not eng.kv.allocate("verify-rows", len(ids)):
        raise ValueError(f"{len(ids)} tokens do not fit the KV pool")
    table = eng.kv.block_table("verify-rows")

    def forward(start: int, m: int) -> None:
        meta = build_attention_metadata([SeqSlice(table, start, m)], eng.kv.block_size,
                                        eng.runner.kv_caches, eng.model_config.sliding_window)
        h = eng.model(ids[start:start + m], torch.arange(start, start + m), meta)
        eng.model.compute_logits(h)

    times: dict[int, list[float]] = {m: [] for m in rows}
    try:
        with torch.inference_mode():
            forward(0, prefix)
            for _ in range(reps):
                for m in rows:
                    c0 = time.process_time()
                    forward(prefix, m)
                    times[m].append(1e3 * (time.process_time() - c0))
    finally:
        eng.kv.free("verify-rows")
    return {m: statistics.median(v) for m, v in times.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None)
    p.add_argument("--prefix", type=int, default=100, help="cached tokens before the rows")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--rows", type=int, nargs="+", default=list(ROWS), help="row counts (>= 1)")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    if min(args.rows) < 1:
        p.error("--rows must be >= 1")
    ms = measure(args.model, args.prefix, args.reps, tuple(args.rows))
    first = min(ms)
    print(f"| rows | CPU ms | x {first} row(s) |\n|---|---|---|")
    for m, t in ms.items():
        print(f"| {m} | {t:.1f} | {t / ms[first]:.2f} |")
    if args.json:
        write_one_thread_json(args.json, args.reps, prefix=args.prefix, cpu_ms=ms)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
