"""Before/after: the same thinkstream workloads on two source trees, side by side.

For a change that must not slow anything down (a refactor, a new hook): decode at batch 1
and 32, prefill of 512 tokens and a streamed session's time to first token after its input
(4,096 tokens) ends, run on each tree in its own process, the trees alternating rep by rep
so machine noise hits both alike. Reports medians, after/before ratios, and whether the
greedy tokens are identical.

    git worktree add /tmp/before <commit>
    python -m thinkstream.bench.ab --before /tmp/before/src --after src [--reps 3] [--threads 1]

Only the public API is used (``LLM``, ``SamplingParams``, sessions), so any tree that has
it can be compared.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

# Runs in a child process with PYTHONPATH set to one tree; prints one JSON line.
WORKLOAD = r'''
import json, sys, time, torch
from thinkstream import LLM, SamplingParams
dtype, quant, threads = sys.argv[1], sys.argv[2] or None, int(sys.argv[3])
torch.set_num_threads(threads)
llm = LLM(dtype=dtype, quantization=quant, num_threads=threads, max_num_seqs=64)
words = ("the quick brown fox jumps over the lazy dog while streaming input arrives in "
         "chunks and the engine prefills each chunk as it arrives ").split()
def text(n, seed):
    return " ".join(words[(i * 7 + seed) % len(words)] for i in range(n))
def ids(n, seed):
    return llm.tokenizer.encode(text(n, seed))[:n]
greedy = lambda n: SamplingParams(temperature=0, max_tokens=n, ignore_eos=True)
out, tokens = {}, {}
llm.generate([ids(64, 99)], greedy(8))  # warm-up
# decode: (time for N tokens - time for 1 token) over N - 1 steps, per sequence batch
for batch, n in ((1, 64), (32, 32)):
    prompts = [ids(32, s) for s in range(batch)]
    t0 = time.perf_counter(); llm.generate(prompts, greedy(1)); t1 = time.perf_counter() - t0
    t0 = time.perf_counter(); res = llm.generate(prompts, greedy(n)); tn = time.perf_counter() - t0
    out[f"decode_b{batch}_tok_s"] = batch * (n - 1) / (tn - t1)
    tokens[f"decode_b{batch}"] = [r.outputs[0].token_ids for r in res]
p = ids(512, 5)
t0 = time.perf_counter(); res = llm.generate([p], greedy(1)); dt = time.perf_counter() - t0
out["prefill_512_tok_s"] = len(p) / dt
tokens["prefill"] = [r.outputs[0].token_ids for r in res]
doc = text(4300, 3)
chunks = [doc[i:i + 400] for i in range(0, len(doc), 400)]
s = llm.open_session(messages=[], sampling_params=greedy(8))
for c in chunks:
    s.append(c)
t0 = time.perf_counter(); it = s.close(); first = next(it)
out["stream_ttft_ms"] = (time.perf_counter() - t0) * 1e3
out["stream_input_tokens"] = len(first.prompt_token_ids)
last = first
for o in it:
    last = o
tokens["stream"] = [last.outputs[0].token_ids]
out["tokens"] = tokens
print(json.dumps(out))
'''

METRICS = ("decode_b1_tok_s", "decode_b32_tok_s", "prefill_512_tok_s", "stream_ttft_ms")


def run_tree(src: str, dtype: str, quant: str, threads: int) -> dict:
    env = {**os.environ, "PYTHONPATH": os.path.abspath(src)}
    proc = subprocess.run([sys.executable, "-c", WORKLOAD, dtype, quant, str(threads)],
                          capture_output=True, text=True, env=env, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", required=True, help="the src/ directory of the old tree")
    ap.add_argument("--after", default="src", help="the src/ directory of the new tree")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--quantization", default="int4", help="'' for none")
    ap.add_argument("--json", help="write the runs and the summary here")
    args = ap.parse_args(argv)
    runs: dict[str, list[dict]] = {"before": [], "after": []}
    for rep in range(args.reps):
        order = ("before", "after") if rep % 2 == 0 else ("after", "before")
        for name in order:
            src = args.before if name == "before" else args.after
            runs[name].append(run_tree(src, args.dtype, args.quantization, args.threads))
            print(f"rep {rep} {name}: " + ", ".join(
                f"{m}={runs[name][-1][m]:.1f}" for m in METRICS), flush=True)
    summary = {}
    print("\n| metric | before | after | after/before |\n|---|---|---|---|")
    for m in METRICS:
        b = statistics.median(r[m] for r in runs["before"])
        a = statistics.median(r[m] for r in runs["after"])
        summary[m] = {"before": b, "after": a, "ratio": a / b}
        print(f"| {m} | {b:.1f} | {a:.1f} | {a / b:.3f} |")
    same = all(r["tokens"] == runs["before"][0]["tokens"] for r in runs["before"] + runs["after"])
    summary["greedy_tokens_identical"] = same
    print(f"\ngreedy tokens identical before/after: {same}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "summary": summary, "runs": runs}, f, indent=1)
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
