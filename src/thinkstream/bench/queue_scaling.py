"""Scheduler cost against the length of the waiting queue: ``LLM.generate`` of N short prompts
on the tiny random model (tests/helpers/tiny.py) in a small KV pool, seconds per 1,000
prompts for each N (wall and process CPU time, one torch thread). Flat in N means a step
costs what it schedules, not what waits.

    python -m thinkstream.bench.queue_scaling --n 1000 4000 16000 --prompt-len 3 20

``--memory``: bytes held per waiting request (tracemalloc, N requests added, one step).
Runs against any checkout: copy this file into its ``src/thinkstream/bench`` and point
``PYTHONPATH`` at its ``src`` (docs/benchmarks.md, "Long waiting queues").
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "tests"))
from helpers.tiny import tiny_checkpoint  # noqa: E402

from thinkstream import LLM, SamplingParams  # noqa: E402
from thinkstream.bench.report import cpu_record  # noqa: E402


def prompts(n: int, length: int) -> list[list[int]]:
    """``n`` distinct prompts of ``length`` token ids (no shared prefix block)."""
    return [[3 + i % 200, 4 + (i // 200) % 200, *(5 + (i + j) % 300 for j in range(length - 2))]
            for i in range(n)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, nargs="+", default=[1000, 4000, 16000])
    ap.add_argument("--prompt-len", type=int, nargs="+", default=[3])
    ap.add_argument("--max-tokens", type=int, default=2)
    ap.add_argument("--num-blocks", type=int, default=64)
    ap.add_argument("--memory", action="store_true", help="bytes per waiting request instead")
    args = ap.parse_args()
    llm = LLM(checkpoint=tiny_checkpoint(), dtype="float32", quantization=None,
              num_blocks=args.num_blocks, num_threads=1)
    sp = SamplingParams(temperature=0, max_tokens=args.max_tokens, ignore_eos=True)
    llm.generate(prompts(64, 3), sp)  # warm-up
    print(json.dumps({"cpu": cpu_record()}), flush=True)  # the CPU class the rows ran on
    for length in args.prompt_len:
        for n in args.n:
            ps = prompts(n, length)
            row: dict = {"n": n, "prompt_len": length}
            if args.memory:
                tracemalloc.start()
                base = tracemalloc.get_traced_memory()[0]
                ids = [llm.engine.add_request(None, p, sp) for p in ps]
                llm.engine.step()
                row["bytes_per_request"] = round((tracemalloc.get_traced_memory()[0] - base) / n)
                tracemalloc.stop()
                for rid in ids:
                    llm.engine.abort(rid)
            else:
                t, c = time.perf_counter(), time.process_time()
                llm.generate(ps, sp)
                dt, dc = time.perf_counter() - t, time.process_time() - c
                row.update(seconds=round(dt, 3), s_per_1k=round(dt / n * 1000, 3),
                           cpu_s_per_1k=round(dc / n * 1000, 3))
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
