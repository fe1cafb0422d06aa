"""Eager vs ``compile_decode`` decode steps, side by side in one process.

Two engines on the same model decode the same batch; blocks of ``--steps`` engine steps
alternate between them (the machine is noisy: compare the ratio, not the absolute ms). The
compiled engine's warm-up includes the compile of its graph (set TORCHINDUCTOR_CACHE_DIR to
an empty folder to time a cold compile).

    python -m thinkstream.bench.compile_decode --batch 1 --batch 32
"""

from __future__ import annotations

import argparse
import time

import torch

from thinkstream import LLM, SamplingParams


def _engine(batch: int, compile_decode: bool, args: argparse.Namespace):
    llm = LLM(args.model, dtype=args.dtype, quantization=args.quantization, num_threads=args.threads,
              max_num_seqs=batch, compile_decode=compile_decode)
    engine = llm.engine
    g = torch.Generator().manual_seed(0)
    params = SamplingParams(temperature=0.0, max_tokens=4096, ignore_eos=True)
    for _ in range(batch):
        engine.add_request(None, torch.randint(3, 49000, (16,), generator=g).tolist(), params)
    t = time.perf_counter()
    for _ in range(8):  # prefill, then decode steps (the compile happens here)
        engine.step()
    return engine, time.perf_counter() - t


def _block(engine, steps: int) -> float:
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        engine.step()
        times.append(time.perf_counter() - t)
    return 1e3 * sorted(times)[steps // 2]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None)
    ap.add_argument("--batch", type=int, action="append", default=None)
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--quantization", default="int4")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=30, help="engine steps per timed block")
    ap.add_argument("--blocks", type=int, default=3, help="timed blocks per engine")
    ap.add_argument("--freezing", action="store_true",
                    help="inductor freezing (weights folded into the graphs; not what the engine does)")
    args = ap.parse_args()
    if args.freezing:
        import torch._inductor.config as inductor_config

        inductor_config.freezing = True
    for batch in args.batch or [1, 32]:
        eager, _ = _engine(batch, False, args)
        compiled, warm = _engine(batch, True, args)
        e, c = [], []
        for _ in range(args.blocks):
            e.append(_block(eager, args.steps))
            c.append(_block(compiled, args.steps))
        print(f"batch {batch}: eager {min(e):.2f} ms/step, compiled {min(c):.2f} ms/step "
              f"({min(e) / min(c):.2f}x), compiled warm-up {warm:.0f} s; "
              f"blocks eager {[round(x, 2) for x in e]} compiled {[round(x, 2) for x in c]}",
              flush=True)


if __name__ == "__main__":
    main()
