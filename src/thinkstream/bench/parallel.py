"""``thinkstream bench parallel``: parallel generation from one KV cache, four parts.

- ``wall`` (a): N = 1, 2, 4, 8, 16 paths of L tokens (``--path-tokens``, 256) from one
  prompt, decoded together: wall time against one path, and against the same tokens made
  one path after another (N x the one path's time: each path alone costs what one does).
- ``join`` (b): 8 paths of L = 64 .. 1,000 tokens (forced as each path's first tokens, one
  sampled after; 1,000 not 1,024 so that re-prefilling 8 paths fits SmolLM2's 8,192-token
  context), then the time to the first summary token: joined through views (nothing
  recomputed) against re-prefilling prompt + paths + summary prompt as a new request, in
  thinkstream (a fresh prefix-cache salt: no hit) and in llama.cpp (the same ids, the same
  GGUF, through llama-cpp-python), as a user of today's engines would.
- ``blocks`` (c): peak KV blocks of N paths (views of the prompt), of ``n = N`` (copy-on-
  write fork) and of N independent requests, with and without the prefix cache.
- ``accuracy`` (d): seeded task sets with exact answers (``think_tasks``: state tracking,
  context QA) per model: one path then a summary, N paths voted (the majority of the
  answers extracted from each path), N paths then a summary; Wilson 95% intervals.

Every timing runs side by side in one process, torch on ``--threads`` (1) threads.
``parallel_report`` builds the table, the JSON and the plot.
"""

from __future__ import annotations

import argparse
import datetime
import sys
import time
from collections import Counter
from typing import Any

from thinkstream.bench import parallel_report as rep
from thinkstream.bench.report import add_run_arguments, emit, positive_int
from thinkstream.bench.think_tasks import extract, make_tasks
from thinkstream.parallel.config import ParallelConfig
from thinkstream.sampling_params import SamplingParams

PARTS = ("wall", "join", "blocks", "accuracy")
QUESTION = "A farmer has 12 sheep and buys 7 more, then sells 5. How many sheep are left?"
FILLER = ("The river bends twice before the mill, and the path beside it is lined with "
          "old oaks that the village planted a century ago. ")


def _log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _prompt(llm: Any, text: str) -> list[int]:
    """A chat prompt where the model has a template, else plain text (Gemma 3 base)."""
    if llm.tokenizer.chat_template:
        return llm.chat_prompt([{"role": "user", "content": text}])
    return llm.tokenizer.encode(text + "\n", add_special_tokens=True)


def wall(llm: Any, counts: list[int], path_tokens: int, reps: int) -> list[dict]:
    """Part (a): seconds for N paths of ``path_tokens`` tokens (merge "none")."""
    ids = _prompt(llm, QUESTION)
    params = SamplingParams(temperature=0.8, seed=0, max_tokens=1, ignore_eos=True)
    rows = []
    for n in counts:
        cfg = ParallelConfig(paths=n, path_tokens=path_tokens, merge="none",
                             max_paths=max(16, n))
        times = []
        for _ in range(reps):
            t = time.perf_counter()
            out = llm.generate([ids], params, parallel=cfg)[0].outputs[0]
            times.append(time.perf_counter() - t)
            assert out.num_path_tokens == n * path_tokens
        rows.append({"paths": n, "path_tokens": path_tokens, "seconds": sorted(times)})
        _log(f"wall: {n} paths x {path_tokens}: {min(times):.2f} s")
    return rows


def _paths_text(llm: Any, length: int) -> list[list[int]]:
    """8 distinct forced paths of ``length`` tokens (filler text, rotated per path)."""
    base = llm.tokenizer.encode(FILLER * (2 + length // 20), add_special_tokens=False)
    return [base[7 * i : 7 * i + length] for i in range(8)]


def join_once(llm: Any, length: int, summary: list[int], llamacpp: Any,
              reprefill: bool = True) -> dict:
    """Part (b), one size: time to the first summary token by join (and by re-prefill)."""
    from thinkstream.parallel.api import Threads  # torch: not for `bench parallel --help`

    ids = _prompt(llm, QUESTION)
    greedy = SamplingParams(temperature=0, max_tokens=1, ignore_eos=True)
    t = Threads(llm, ids, greedy)
    kids = t.fork(t.root, _paths_text(llm, length), max_tokens=1)
    t.wait(kids)
    while llm.engine.has_work():  # the paths' last tokens computed: the join alone is timed
        llm.engine.step()
    start = time.perf_counter()
    t.join(t.root, kids, summary)
    out = t.result()
    join_s = time.perf_counter() - start
    full = ids + [tok for k in kids for tok in k.seq.token_ids[1:-1]] + summary
    row = {"path_tokens": length, "context_tokens": len(full), "join_s": join_s,
           "first_token": out.outputs[0].token_ids}
    if not reprefill:
        return row
    salt = f"reprefill-{time.perf_counter_ns()}"  # a fresh namespace: no prefix-cache hit
    state = llm.engine.make_request(None, full, greedy, salt=salt)
    start = time.perf_counter()
    llm.engine.add(state)
    while not state.finished:
        llm.engine.step()
    row["reprefill_s"] = time.perf_counter() - start
    if llamacpp is not None:
        from thinkstream.bench.workloads import Request

        row["llamacpp_s"] = llamacpp.generate([Request(tuple(full), 1)]).first_s
    return row


def join(llm: Any, sizes: list[int], reps: int, llamacpp: Any,
         reprefill_reps: int = 1) -> list[dict]:
    summary = llm.tokenizer.encode("\nFinal answer:", add_special_tokens=False)
    rows = []
    for length in sizes:
        runs = [join_once(llm, length, summary, llamacpp, i < reprefill_reps)
                for i in range(max(reps, reprefill_reps))]
        row = {"path_tokens": length, "context_tokens": runs[0]["context_tokens"]}
        for key in ("join_s", "reprefill_s", "llamacpp_s"):
            if key in runs[0]:
                row[key] = sorted(r[key] for r in runs if key in r)
        rows.append(row)
        _log(f"join: 8 x {length}: views {min(row['join_s']) * 1e3:.1f} ms, re-prefill "
             f"{min(row['reprefill_s']):.2f} s" + (f", llama.cpp {min(row['llamacpp_s']):.2f} s"
                                                   if "llamacpp_s" in row else ""))
    return rows


def _peak(engine: Any, add) -> int:
    """Peak KV blocks in use while the requests ``add`` queues run to the end."""
    add()
    peak = 0
    while engine.has_unfinished_requests():
        engine.step()
        peak = max(peak, engine.usage().kv_blocks_used)
    return peak


def blocks(make_llm, n: int, prompt_tokens: int, path_tokens: int) -> dict:
    """Part (c): peak blocks of N paths vs n = N vs N independent requests."""
    from thinkstream.parallel.paths import start_paths

    out = {"paths": n, "prompt_tokens": prompt_tokens, "path_tokens": path_tokens}
    params = SamplingParams(temperature=0.8, seed=0, max_tokens=path_tokens, ignore_eos=True)
    for name, caching in (("views", True), ("fork_n", True), ("independent", False),
                          ("independent_prefix_cache", True)):
        llm = make_llm(caching)
        engine = llm.engine
        ids = [10 + i % 200 for i in range(prompt_tokens)]  # any ids in every vocabulary
        if name == "views":
            def add(engine=engine, ids=ids):
                st = engine.make_request(None, ids, params, input_closed=False)
                engine.add(st)
                start_paths(engine, st, ParallelConfig(paths=n, path_tokens=path_tokens,
                                                       merge="none", max_paths=max(16, n)))
        elif name == "fork_n":
            def add(engine=engine, ids=ids):
                engine.add_request(None, ids, SamplingParams(**{**_kw(params), "n": n}))
        else:
            def add(engine=engine, ids=ids):
                for _ in range(n):
                    engine.add_request(None, ids, params)
        out[name] = _peak(engine, add)
        out["block_size"] = engine.config.block_size
    _log(f"blocks: {out}")
    return out


def _kw(p: SamplingParams) -> dict:
    return {f: getattr(p, f) for f in ("temperature", "seed", "max_tokens", "ignore_eos")}


def _vote(task: Any, texts: list[str]) -> str | None:
    answers = [a for a in (extract(task, t) for t in texts) if a is not None]
    if not answers:
        return None
    counts = Counter(answers)
    return max(answers, key=lambda a: (counts[a], -answers.index(a)))


def accuracy(llm: Any, tasks: list, n: int, path_tokens: int, layout: str) -> list[dict]:
    """Part (d): per task, 1 path + summary, and N paths (voted, and summarised)."""
    params = SamplingParams(temperature=0.7, seed=0, max_tokens=12)
    records = []
    for i, task in enumerate(tasks):
        text = " ".join(task.chunks) + " Answer with one word or number."
        ids = _prompt(llm, text)
        for paths in (1, n):
            cfg = ParallelConfig(paths=paths, path_tokens=path_tokens, merge="summary",
                                 layout=layout, summary_prompt="\nSo the answer is",
                                 max_paths=max(16, n))
            o = llm.generate([ids], params, parallel=cfg)[0].outputs[0]
            modes = {"1 path": o.text} if paths == 1 else {"vote": None, "summary": o.text}
            for mode, answer_text in modes.items():
                got = _vote(task, o.paths) if mode == "vote" else extract(task, answer_text)
                records.append({"set": task.kind, "task": i, "mode": mode, "answer": task.answer,
                                "extracted": got, "correct": got == task.answer,
                                "path_answers": [extract(task, p) for p in o.paths]})
        _log(f"accuracy #{i} {task.kind}: " + ", ".join(
            f"{r['mode']} {'ok' if r['correct'] else r['extracted']}" for r in records[-3:])
             + f" (answer {task.answer})")
    return records


def _llm(model: str | None, args: argparse.Namespace, checkpoint: Any = None,
         prefix_caching: bool = True) -> Any:
    from thinkstream.llm import LLM

    return LLM(model, dtype=args.dtype, num_threads=args.threads, checkpoint=checkpoint,
               kv_cache_memory=args.kv_cache_mb * 2**20, max_num_seqs=32,
               enable_prefix_caching=prefix_caching, max_num_batched_tokens=2048)


def _llamacpp(args: argparse.Namespace, llm: Any) -> Any:
    if args.no_llamacpp or not str(llm.engine.model_path).endswith(".gguf"):
        return None
    try:
        from thinkstream.bench.llamacpp import LlamaCppPeer

        return LlamaCppPeer(llm.engine.model_path, max_batch=1, threads=args.threads)
    except ImportError:
        _log("llama-cpp-python is not installed: no llama.cpp re-prefill column")
        return None


def _ints(value: str) -> list[int]:
    return [int(v) for v in value.split(",") if v.strip()]


def run(args: argparse.Namespace, checkpoint: Any = None) -> int:
    """Run the parts asked for, print the table, write ``--json`` / ``--plot``.
    ``checkpoint``: an already loaded model (tests; no llama.cpp, one accuracy model)."""
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    for p in parts:
        if p not in PARTS:
            raise ValueError(f"--parts: unknown {p!r}; choose from {', '.join(PARTS)}")
    if args.quick:
        args.paths, args.path_tokens, args.join_sizes = "1,2,4", 16, "16,32"
        args.tasks, args.reps = min(args.tasks, 2), 1
    report: dict[str, Any] = {
        "schema": rep.SCHEMA,
        "command": "thinkstream " + " ".join(sys.argv[1:]) if checkpoint is None else "test",
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": rep.machine(),
        "settings": {"dtype": args.dtype, "threads": args.threads, "reps": args.reps,
                     "reprefill_reps": args.reprefill_reps,
                     "model": args.model or "smollm2-135m", "layout": args.layout},
    }
    llm = _llm(args.model, args, checkpoint)
    report["model_path"] = str(llm.engine.model_path)
    llm.generate([_prompt(llm, QUESTION)], SamplingParams(max_tokens=4))  # warm-up
    if "wall" in parts:
        report["wall"] = wall(llm, _ints(args.paths), args.path_tokens, args.reps)
    if "join" in parts:
        report["join"] = join(llm, _ints(args.join_sizes), args.reps, _llamacpp(args, llm)
                              if checkpoint is None else None, args.reprefill_reps)
    if "blocks" in parts:
        report["blocks"] = blocks(lambda caching: _llm(args.model, args, checkpoint, caching),
                                  8, 256, 32 if not args.quick else 8)
    if "accuracy" in parts:
        models = [None] if checkpoint is not None else args.accuracy_models.split(",")
        report["accuracy"] = {}
        for model in models:
            m = llm if model in (None, args.model) else _llm(model, args)
            tasks = [t for kind in ("state_tracking", "context_qa")
                     for t in make_tasks(kind, args.seed, args.tasks)]
            report["accuracy"][model or "<checkpoint>"] = accuracy(
                m, tasks, args.accuracy_paths, args.accuracy_path_tokens, args.layout)
    rep.summarize(report)
    return emit(rep, report, args)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None,
                   help="GGUF file, HF directory, 'smollm2-135m' (default) or 'gemma3-270m'")
    p.add_argument("--parts", default=",".join(PARTS), help="comma-separated subset of "
                   + ",".join(PARTS))
    p.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16"])
    p.add_argument("--threads", type=positive_int, default=1, help="torch threads (default 1)")
    p.add_argument("--kv-cache-mb", type=int, default=512)
    p.add_argument("--reps", type=positive_int, default=3, help="timing repetitions (median reported)")
    p.add_argument("--paths", default="1,2,4,8,16", help="(a) path counts")
    p.add_argument("--path-tokens", type=int, default=256, help="(a) tokens per path")
    p.add_argument("--join-sizes", default="64,128,256,512,1000", help="(b) tokens per path")
    p.add_argument("--no-llamacpp", action="store_true", help="(b) skip llama.cpp's re-prefill")
    p.add_argument("--reprefill-reps", type=int, default=1,
                   help="(b) repetitions of the (long) re-prefills; the join runs --reps times")
    p.add_argument("--accuracy-models", default="smollm2-135m,gemma3-270m")
    p.add_argument("--tasks", type=int, default=10, help="(d) tasks per set (2 sets)")
    p.add_argument("--accuracy-paths", type=int, default=4, help="(d) N")
    p.add_argument("--accuracy-path-tokens", type=int, default=48)
    p.add_argument("--layout", default="parallel", choices=["parallel", "sequential"],
                   help="where summaries see the paths")
    add_run_arguments(p, "tiny sizes: a smoke run")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(p)
    return run(p.parse_args(argv))


__all__ = ["PARTS", "add_arguments", "run"]
