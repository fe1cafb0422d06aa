"""Where the native decoder stack pays (docs/benchmarks.md, "A GEMM in the GGUF kernels"):
the same engine with the stack on (``models/fused_decode.py``, its limits lifted) and off
(the eager layers), alternating, on decode steps at batch 32 and on fresh prompts of
``--prompts`` tokens. SmolLM2-135M by default, the default settings, 1 thread; each figure
the median over ``--reps`` of this process's CPU time (ms per decode step, ms per prompt),
with the stack's own matmul and attention seconds for the prompts.

    python -m thinkstream.bench.stack_rows [--reps 3] [--prompts 64 128 512] [--json out.json]
"""

from __future__ import annotations

import argparse
import ctypes
import json
import statistics
import time

import torch

from thinkstream.bench.report import write_one_thread_json
from thinkstream.llm import LLM
from thinkstream.models.gguf_linear import ALL_ROWS
from thinkstream.sampling_params import SamplingParams


def _drain(engine) -> None:
    while engine.has_unfinished_requests():
        engine.step()


def decode_ms(engine, g: torch.Generator, batch: int = 32, steps: int = 12) -> float:
    """CPU ms per decode step of ``batch`` sequences (after their prefill and two steps)."""
    for _ in range(batch):
        engine.add_request(None, torch.randint(100, 40000, (16,), generator=g).tolist(),
                           SamplingParams(temperature=0, max_tokens=steps + 4, ignore_eos=True))
    for _ in range(3):
        engine.step()
    t0 = time.process_time()
    for _ in range(steps):
        engine.step()
    dt = (time.process_time() - t0) / steps
    _drain(engine)
    return dt * 1e3


def prompt_ms(engine, g: torch.Generator, n: int, timers) -> tuple[float, float, float]:
    """CPU ms of a fresh ``n``-token prompt to its first token, and the stack's matmul and
    attention ms within it (0 when the eager layers ran)."""
    timers[0] = timers[1] = 0.0
    engine.add_request(None, torch.randint(100, 40000, (n,), generator=g).tolist(),
                       SamplingParams(temperature=0, max_tokens=1, ignore_eos=True))
    t0 = time.process_time()
    _drain(engine)
    return (time.process_time() - t0) * 1e3, timers[0] * 1e3, timers[1] * 1e3


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--prompts", type=int, nargs="+", default=[64, 128, 512])
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    engine = LLM(args.model, max_num_seqs=32, num_threads=1).engine
    stack = engine.model.fused
    if stack is None:
        raise SystemExit("no native decoder stack for this model / machine")
    timers = (ctypes.c_double * 2)()
    stack.time_parts(timers, cpu_clock=True)
    stack.max_rows = stack.max_queries = ALL_ROWS
    g = torch.Generator().manual_seed(0)
    paths = {"stack": stack, "eager": None}
    res: dict[str, dict[str, list]] = {p: {} for p in paths}
    for _ in range(args.reps):
        for name, fused in paths.items():
            engine.model.fused = fused
            res[name].setdefault("decode b32 ms/step", []).append(decode_ms(engine, g))
            for n in args.prompts:
                res[name].setdefault(f"prompt {n} ms (total, matmul, attention)", []).append(
                    prompt_ms(engine, g, n, timers))
    engine.model.fused = stack
    table = {name: {k: (round(statistics.median(v), 1) if not isinstance(v[0], tuple) else
                        [round(statistics.median(x[i] for x in v), 1) for i in range(3)])
                    for k, v in r.items()} for name, r in res.items()}
    print(json.dumps(table, indent=1))
    if args.json:
        write_one_thread_json(args.json, args.reps, medians=table, runs=res)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
