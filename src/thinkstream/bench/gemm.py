"""Where the GGUF kernels' paths cross over (docs/benchmarks.md, "A GEMM in the GGUF
kernels"): per x-row count, the float32 product of SmolLM2-135M's matrices by the GGUF dot
kernel, the GGUF GEMM (``kernels/gguf_gemm.h``), a dense float32 copy through torch's matmul
(MKL) and the same copy prepacked for oneDNN (``torch.utils.mkldnn.to_mkldnn``).

Each figure is the median, over ``--reps`` rounds, of one step's CPU time (this process's
CPU clock, so another process on the machine inflates it less than wall time) summed over the
step's matrices: a decoder layer's four projections x 30 layers (Q4_1) and the LM head
(Q8_0, 49,152 x 576), random blocks of SmolLM2's shapes, one thread. The paths run
interleaved, round by round, so they see the same machine; compare their ratios.

    python -m thinkstream.bench.gemm [--rows 4 8 12 16 32 64 128 512] [--json out.json]
        [--baseline DIR]

``--baseline DIR`` adds the GEMM and the dot kernel of another version of the kernels as
the paths "baseline" and "baseline_dot"
(DIR holds its ``gguf_matmul.c`` and headers, e.g. ``git archive <commit>
src/thinkstream/kernels | tar -x -C DIR --strip-components=3``), built for the same
instruction set and timed in the same rounds: a before / after in one run.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.utils.mkldnn
from torch import nn

from thinkstream.bench.report import write_one_thread_json
from thinkstream.kernels.gguf import BLOCKS, GGUFKernels, load_gguf_kernels, open_source

# SmolLM2-135M: (name, output rows, input size, ggml type, matrices per step)
SHAPES = (("qkv", 960, 576, 3, 30), ("o", 576, 576, 3, 30), ("gate_up", 3072, 576, 3, 30),
          ("down", 576, 1536, 3, 30), ("head", 49152, 576, 8, 1))
PATHS = ("dot", "gemm", "mkl", "mkldnn")


def _blocks(qtype: int, n: int, k: int, rng: np.random.Generator) -> torch.Tensor:
    """(n, bytes per row) random blocks with small float16 scales (timing only)."""
    values, nbytes = BLOCKS[qtype]
    b = rng.integers(0, 256, size=(n, k // values, nbytes), dtype=np.uint8)
    b[..., 0:2] = (rng.standard_normal((n, k // values)) * 0.01).astype(np.float16).view(np.uint8).reshape(n, -1, 2)
    return torch.from_numpy(b.reshape(n, -1))


def _cpu_time(fn, calls: int) -> float:
    t0 = time.process_time()
    for _ in range(calls):
        fn()
    return time.process_time() - t0


def _calls(kernels, qtype: int, blocks: torch.Tensor, dense: torch.Tensor, packed: nn.Module,
           x: torch.Tensor, baseline: GGUFKernels | None = None) -> dict:
    """path -> a call computing x W^T that way"""
    k = x.shape[1]
    calls = {"dot": lambda: kernels.matmul(qtype, blocks, k, x, threads=1, path="dot"),
             "gemm": lambda: kernels.matmul(qtype, blocks, k, x, threads=1, path="gemm"),
             "mkl": lambda: x @ dense.t(),
             "mkldnn": lambda: packed(x)}
    if baseline is not None:
        calls["baseline"] = lambda: baseline.matmul(qtype, blocks, k, x, threads=1, path="gemm")
        calls["baseline_dot"] = lambda: baseline.matmul(qtype, blocks, k, x, threads=1, path="dot")
    return calls


def load_baseline(src_dir: str, work: Path) -> GGUFKernels:
    """The kernels of ``src_dir/gguf_matmul.c``, built for the instruction set this process's
    own kernels use. The sources are copied into ``work`` with the .c renamed, so the build
    cache keeps them apart from the current kernels' (it drops other builds of a name).
    Raises RuntimeError where they cannot be built."""
    kernels = load_gguf_kernels()
    src = Path(src_dir) / "gguf_matmul.c"
    if kernels is None or not src.exists():
        raise RuntimeError(f"cannot build the baseline kernels from {src}")
    for f in Path(src_dir).glob("*.h"):
        shutil.copy(f, work / f.name)
    shutil.copy(src, work / "gguf_matmul_baseline.c")
    got = open_source(work / "gguf_matmul_baseline.c", kernels.isa, kernels.vnni)
    if got is None:
        raise RuntimeError(f"cannot build the baseline kernels from {src}")
    return got


def measure(rows: list[int], reps: int, seed: int = 0,
            baseline: GGUFKernels | None = None) -> list[dict]:
    """Per row count and shape: the median step time (ms) of each path (with ``baseline``,
    its GEMM too, as "baseline")."""
    kernels = load_gguf_kernels()
    if kernels is None:
        raise RuntimeError("the GGUF kernels are not available")
    paths = PATHS + (("baseline", "baseline_dot") if baseline is not None else ())
    rng = np.random.default_rng(seed)
    out = []
    for name, n, k, qtype, count in SHAPES:
        blocks = _blocks(qtype, n, k, rng)
        dense = kernels.dequantize(qtype, blocks, k)
        lin = nn.Linear(k, n, bias=False)
        lin.weight.data = dense
        packed = torch.utils.mkldnn.to_mkldnn(lin)
        for m in rows:
            x = torch.randn(m, k)
            calls = _calls(kernels, qtype, blocks, dense, packed, x, baseline)
            reps_of = max(1, min(count, 30 if m <= 32 else 8))  # calls timed per round
            times: dict[str, list[float]] = {p: [] for p in paths}
            with torch.inference_mode():
                for fn in calls.values():
                    fn()  # warm-up
                for _ in range(reps):
                    for p in paths:
                        times[p].append(_cpu_time(calls[p], reps_of) / reps_of * count * 1e3)
            row = {"matrix": name, "n": n, "k": k, "qtype": qtype, "per_step": count, "rows": m}
            row.update({f"{p}_ms": round(statistics.median(times[p]), 3) for p in paths})
            out.append(row)
            print(json.dumps(row), flush=True)
    return out


def summarise(results: list[dict]) -> list[dict]:
    """Per row count: each path's step time summed over the decoder linears and the head."""
    table = []
    for m in sorted({r["rows"] for r in results}):
        rs = [r for r in results if r["rows"] == m]
        row: dict = {"rows": m}
        paths = [p for p in (*PATHS, "baseline", "baseline_dot") if f"{p}_ms" in rs[0]]
        for part, sel in (("linears", [r for r in rs if r["matrix"] != "head"]),
                          ("head", [r for r in rs if r["matrix"] == "head"])):
            for p in paths:
                row[f"{part}_{p}_ms"] = round(sum(r[f"{p}_ms"] for r in sel), 2)
        table.append(row)
    return table


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, nargs="+", default=[4, 8, 12, 16, 32, 64, 128, 512])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--json", default=None)
    ap.add_argument("--baseline", default=None, metavar="DIR",
                    help="a folder with another gguf_matmul.c (+ headers): its GEMM and dot kernel timed beside")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as work:
        baseline = load_baseline(args.baseline, Path(work)) if args.baseline else None
        results = measure(args.rows, args.reps, baseline=baseline)
    table = summarise(results)
    for row in table:
        print(json.dumps(row))
    if args.json:
        extra = {"baseline": str(Path(args.baseline).resolve())} if args.baseline else {}
        write_one_thread_json(args.json, args.reps, per_matrix=results, per_step=table, **extra)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
