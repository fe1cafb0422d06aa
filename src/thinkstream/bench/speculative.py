"""``thinkstream bench speculative``: speculative decoding against no speculation and the
peers' own drafting, on four workloads at several batch sizes.

Workloads (chat prompts, greedy; ``bench/speculative_workloads.py``): **echo** (edit a
20-30 line function or three paragraphs and return all of it: answers of 100-215 tokens,
mostly copied: the issue's echo-heavy case), **echo-short** (the first, one-paragraph echo
set: answers of 24-63 tokens), **chat** (short open questions: little overlap) and
**long** (long-form writing). Batch b runs b requests at once (the workload's prompts
cycled); batch 1 runs them one after another. Configurations: no speculation, each
proposer with a fixed length, and adaptive (``speculative.adaptive``). Peers at batch 1 on
the same GGUF (``bench/speculative_peers.py``): llama.cpp with prompt-lookup drafting
(llama-cpp-python's ``LlamaPromptLookupDecoding``) and without, and HF transformers'
``generate`` without, with ``prompt_lookup_num_tokens`` and (beside an early_exit or
fused config) with ``assistant_early_exit`` (transformers' own self-speculation: its
first k layers draft, ``num_assistant_tokens`` at a time, the same layer and length as
thinkstream's ``early_exit fixed``). Everything runs in this process on one thread, one
configuration after another (compare ratios within one run: these machines are shared
and noisy).

Reported per row: end-to-end tokens/s (the prompt's prefill included) and decode tokens/s
(the tokens after each answer's first over the time after it, as speculative-decoding
papers report: the time to the first token is the same prefill with and without drafts),
each as a ratio to the same engine without drafting; the acceptance rate and mean
accepted length (tokens per verification), and whether the greedy output equals the run
without speculation. With ``--reps`` the configurations of a workload and batch run in
turn, repeatedly, and the median run is reported (of two, the faster).
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from pathlib import Path
from typing import Any

from thinkstream.bench.speculative_peers import decode_rate, hf_drafts, run_hf, run_llamacpp
from thinkstream.bench.speculative_workloads import ECHO_MAX_TOKENS, WORKLOADS

__all__ = ["CONFIGS", "WORKLOADS", "hf_drafts", "run", "run_hf", "run_llamacpp",
           "run_thinkstream"]

CONFIGS: dict[str, dict | None] = {
    "none": None,
    "ngram fixed": {"method": "ngram", "num_speculative_tokens": 5, "adaptive": False},
    "ngram adaptive": {"method": "ngram"},  # the default maximum: 32
    "early_exit fixed": {"method": "early_exit", "num_speculative_tokens": 3, "adaptive": False},
    "early_exit adaptive": {"method": "early_exit", "num_speculative_tokens": 3},
    "fused adaptive": {"method": "fused", "num_speculative_tokens": 5},
}


def _prompts(llm: Any, workload: str) -> list[list[int]]:
    return [llm.chat_prompt([{"role": "user", "content": p}]) for p in WORKLOADS[workload]]


def run_thinkstream(ckpt: Any, prompts: list[list[int]], batch: int, max_tokens: int,
                    spec: dict | None, dtype: str, quantization: str | None,
                    device: str = "cpu") -> dict[str, Any]:
    """Generate up to ``max_tokens`` greedy tokens for each prompt one after another (batch
    1) or for ``batch`` requests at once (prompts cycled). The row has end-to-end and decode
    tokens/s (``speculative_peers.decode_rate``; a batch's decode time starts when its last
    request has its first token)."""
    from thinkstream.llm import LLM
    from thinkstream.sampling_params import SamplingParams

    llm = LLM(checkpoint=ckpt, dtype=dtype, quantization=quantization, num_threads=1,
              max_num_seqs=max(batch, 1), max_num_batched_tokens=2048, speculative=spec,
              device=device)
    params = SamplingParams(temperature=0.0, max_tokens=max_tokens)
    llm.generate([prompts[0]], SamplingParams(temperature=0.0, max_tokens=4))  # warm-up
    hook = llm.engine.speculative
    before = (hook.stats.num_drafts, hook.stats.num_draft_tokens,
              hook.stats.num_accepted_tokens) if hook else (0, 0, 0)
    groups = [[p] for p in prompts] if batch == 1 else [
        [prompts[i % len(prompts)] for i in range(batch)]]
    tokens: list[list[int]] = []
    counts, seconds, first, after = [], [], [], []
    for group in groups:
        outs, t_all, t_first, n_first = _timed(llm.engine, group, params)
        tokens += outs
        counts.append(sum(map(len, outs)))
        after.append(counts[-1] - n_first)
        seconds.append(t_all)
        first.append(t_first)
    row = {**decode_rate(counts, seconds, first, after), "outputs": tokens}
    if hook is not None:
        drafts, drafted, accepted = (hook.stats.num_drafts - before[0],
                                     hook.stats.num_draft_tokens - before[1],
                                     hook.stats.num_accepted_tokens - before[2])
        row.update(acceptance=accepted / drafted if drafted else 0.0,
                   mean_accepted_length=1 + accepted / drafts if drafts else 1.0,
                   draft_tokens=drafted, propose_s=hook.stats.propose_s)
    return row


def _timed(engine: Any, prompts: list[list[int]], params: Any) -> tuple[list[list[int]], float, float, int]:
    """Run ``prompts`` together to the end: their output tokens, the seconds it took, the
    seconds until every request had its first token, and the tokens emitted by then."""
    t0 = time.perf_counter()
    ids = [engine.add_request(None, p, params) for p in prompts]
    out: dict[str, list[int]] = {i: [] for i in ids}
    started: set[str] = set()
    t_first, n_first = None, 0
    while engine.has_unfinished_requests():
        for o in engine.step():
            new = list(o.outputs[0].new_token_ids)
            out[o.request_id] += new
            if new:
                started.add(o.request_id)
        if t_first is None and len(started) == len(ids):
            t_first, n_first = time.perf_counter() - t0, sum(map(len, out.values()))
    total = time.perf_counter() - t0
    return [out[i] for i in ids], total, total if t_first is None else t_first, n_first


def choose_exit_layer(ckpt: Any, prompts: list[list[int]], max_tokens: int,
                      device: str = "cpu") -> tuple[int, list]:
    """The early-exit layer with the best measured speed-up bound (``measure_exit_layers``
    on the greedy answers to ``prompts``), and the per-layer reports."""
    from dataclasses import asdict

    from thinkstream.llm import LLM
    from thinkstream.sampling_params import SamplingParams
    from thinkstream.speculative.early_exit import measure_exit_layers

    llm = LLM(checkpoint=ckpt, num_threads=1, device=device)
    outs = llm.generate(prompts, SamplingParams(temperature=0.0, max_tokens=max_tokens))
    texts = [list(o.prompt_token_ids) + list(o.outputs[0].token_ids) for o in outs]
    reports = measure_exit_layers(llm.engine, texts)
    best = max(reports, key=lambda r: r.speedup)
    return best.layer, [asdict(r) for r in reports]


def table(rows: list[dict[str, Any]]) -> str:
    """Markdown: end-to-end tokens/s (prefill included) and decode tokens/s (after each
    answer's first token), each against the same engine without drafting."""
    lines = ["| workload | batch | engine | config | tok/s | vs none | decode tok/s | "
             "decode vs none | acceptance | mean accepted length | same output |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        acc = f"{r['acceptance']:.2f}" if "acceptance" in r else "-"
        mal = f"{r['mean_accepted_length']:.2f}" if "mean_accepted_length" in r else "-"
        same = {True: "yes", False: "NO", None: "-"}[r.get("same_output")]
        dec = f"{r['decode_tok_s']:.1f} | {r['decode_vs_none']:.2f}x" if "decode_vs_none" in r \
            else "- | -"
        lines.append(f"| {r['workload']} | {r['batch']} | {r['engine']} | {r['config']} | "
                     f"{r['tok_s']:.1f} | {r['vs_none']:.2f}x | {dec} | {acc} | {mal} | {same} |")
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], path: str) -> None:
    """One panel per workload: tokens/s per configuration, grouped by batch size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = list(dict.fromkeys(r["workload"] for r in rows))
    fig, axes = plt.subplots(1, len(kinds), figsize=(6 * len(kinds), 4.5), squeeze=False)
    for ax, kind in zip(axes[0], kinds, strict=True):
        sub = [r for r in rows if r["workload"] == kind]
        labels = list(dict.fromkeys(f"{r['engine']}: {r['config']}" for r in sub))
        batches = sorted({r["batch"] for r in sub})
        width = 0.8 / len(labels)
        for i, label in enumerate(labels):
            vals = [next((r["tok_s"] for r in sub if r["batch"] == b
                          and f"{r['engine']}: {r['config']}" == label), 0.0) for b in batches]
            ax.bar([j + i * width for j in range(len(batches))], vals, width, label=label)
        ax.set_xticks([j + width * (len(labels) - 1) / 2 for j in range(len(batches))],
                      [f"batch {b}" for b in batches])
        ax.set_title(kind)
        ax.set_ylabel("generated tokens / s")
        ax.legend(fontsize=7)
    fig.suptitle("speculative decoding, SmolLM2-135M, 1 thread")
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _median(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the median tokens/s (the upper middle one of an even count: of two,
    the faster, the one other jobs on a shared machine slowed least)."""
    return dict(sorted(runs, key=lambda r: r["tok_s"])[len(runs) // 2])


def _csv(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def _check_lists(args: argparse.Namespace) -> None:
    """The comma-separated flags name known things (a ValueError naming the flag: they were
    a KeyError or a ZeroDivisionError once the model had loaded)."""
    for flag, value, known in (("--configs", args.configs, CONFIGS),
                               ("--batched-configs", args.batched_configs, CONFIGS),
                               ("--workloads", args.workloads, WORKLOADS),
                               ("--peers", args.peers, ("llamacpp", "hf", "none"))):
        bad = [v for v in _csv(value) if v not in known]
        if bad or not _csv(value):
            raise ValueError(f"{flag}: unknown {bad[0]!r}; choose from {', '.join(known)}"
                             if bad else f"{flag}: name at least one of {', '.join(known)}")
    if not all(b.isdigit() and int(b) >= 1 for b in _csv(args.batches)) or not _csv(args.batches):
        raise ValueError(f"--batches: batch sizes >= 1, got {args.batches!r}")
    if getattr(args, "device", "cpu") != "cpu" and any(p != "none" for p in _csv(args.peers)):
        raise ValueError(f"--device {args.device}: the peers (llama.cpp, HF) run on the CPU; "
                         "compare on one device: --peers none")


def add_arguments(p: argparse.ArgumentParser) -> None:
    from thinkstream.bench.report import positive_int

    p.add_argument("--model", default=None, help="GGUF (default: SmolLM2-135M-Instruct)")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"],
                   help="thinkstream's dtype (default: the engine's own)")
    p.add_argument("--quantization", default="auto", choices=["auto", "none", "gguf", "int8", "int4"],
                   help="thinkstream's weight quantization (auto: GGUF-native where it runs)")
    p.add_argument("--workloads", default="echo,echo-short,chat,long",
                   help=f"subset of {','.join(WORKLOADS)} (bench/speculative_workloads.py)")
    p.add_argument("--batches", default="1,8,32")
    p.add_argument("--configs", default=",".join(CONFIGS),
                   help=f"subset of: {', '.join(CONFIGS)}")
    p.add_argument("--batched-configs", default="none,ngram fixed,ngram adaptive,fused adaptive",
                   help="the configurations also run at batch > 1")
    p.add_argument("--peers", default="llamacpp,hf", help="batch-1 peers: llamacpp,hf or none")
    p.add_argument("--reps", type=positive_int, default=1,
                   help="thinkstream runs per configuration, alternating (median reported)")
    p.add_argument("--max-tokens", type=int, default=48, help="echo-short and chat answers")
    p.add_argument("--echo-max-tokens", type=int, default=ECHO_MAX_TOKENS,
                   help="echo answers (their copies run 105-215 tokens on SmolLM2: not cut off)")
    p.add_argument("--long-max-tokens", type=int, default=96)
    p.add_argument("--lookup-tokens", type=int, default=5, help="the peers' draft length")
    p.add_argument("--exit-layer", type=int, default=None,
                   help="early-exit layer of early_exit / fused configs and HF's early-exit "
                        "row (default: chosen by measurement on the chat answers); HF's "
                        "early exit runs only beside an early_exit or fused config")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                   help="thinkstream's device (cuda: the GPU check, docs/benchmarks.md; the "
                        "CPU peers then need --peers none)")
    p.add_argument("--json", default=None)
    p.add_argument("--plot", default=None)


def peer_rows(peers: list[str], gguf: Path, prompts: list[list[int]], max_tokens: int,
              lookup: int, layer: int | None, hf_cache: dict[str, Any]) -> list[dict[str, Any]]:
    """The batch-1 rows of llama.cpp and HF (``speculative_peers``), each with and without
    its own drafting; ``layer``: HF's early exit too."""
    rows: list[dict[str, Any]] = []
    exit_tokens = CONFIGS["early_exit fixed"]["num_speculative_tokens"]
    for peer in peers:
        pbase = None
        drafts = ({"none": 0, f"prompt lookup {lookup}": lookup} if peer == "llamacpp"
                  else hf_drafts(lookup, layer, exit_tokens))
        for config, draft in drafts.items():
            if peer == "llamacpp":
                r = run_llamacpp(gguf, prompts, max_tokens, draft)
            else:
                r, hf_cache["model"] = run_hf(gguf, prompts, max_tokens, draft, hf_cache.get("model"))
            pbase = pbase or r
            r.update(batch=1, engine=peer, config=config, vs_none=r["tok_s"] / pbase["tok_s"],
                     decode_vs_none=r["decode_tok_s"] / pbase["decode_tok_s"],
                     same_output=r["outputs"] == pbase["outputs"] if draft else None)
            rows.append(r)
    return rows


def run(args: argparse.Namespace, checkpoint: Any = None) -> int:
    import torch

    from thinkstream.bench.report import machine, quantization_arg
    from thinkstream.llm import LLM
    from thinkstream.loading import load_checkpoint, resolve_model_path

    _check_lists(args)  # before anything loads
    torch.set_num_threads(1)
    gguf = resolve_model_path(args.model) if checkpoint is None else None
    ckpt = checkpoint or load_checkpoint(args.model)
    configs = {c: CONFIGS[c] for c in _csv(args.configs)}
    batched = set(_csv(args.batched_configs))
    peers = [p for p in _csv(args.peers) if p != "none"]
    probe = LLM(checkpoint=ckpt, num_threads=1, device=args.device)
    prompts = {w: _prompts(probe, w) for w in _csv(args.workloads)}
    del probe
    layer, layers = (args.exit_layer, [])
    wants_layer = any("early_exit" in c or "fused" in c for c in configs)
    if layer is None and wants_layer:
        layer, layers = choose_exit_layer(ckpt, prompts.get("chat") or next(iter(prompts.values())),
                                          args.max_tokens, args.device)
        print(f"early-exit layer chosen by measurement: {layer}", file=sys.stderr)
    rows: list[dict[str, Any]] = []
    hf_cache: dict[str, Any] = {}  # HF's model, loaded once
    meta = {"command": "thinkstream " + " ".join(sys.argv[1:]),
            "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "model": str(gguf or "<checkpoint>"), "dtype": args.dtype,
            "quantization": args.quantization, "threads": 1, "early_exit_layer": layer,
            "device": args.device,
            "exit_layers": layers,
            "machine": machine()}

    def save() -> None:  # after every row: a run cut short keeps what it measured
        if args.json:
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(json.dumps(
                {**meta, "rows": [{k: v for k, v in r.items() if k != "outputs"}
                                  for r in rows]}, indent=1))
    for w, ps in prompts.items():
        n = {"long": args.long_max_tokens, "echo": args.echo_max_tokens,
             "echo-holdout": args.echo_max_tokens}.get(w, args.max_tokens)
        for b in (int(x) for x in _csv(args.batches)):
            runs: dict[str, list[dict[str, Any]]] = {}
            for _ in range(args.reps):  # configurations alternate: load drifts hit all alike
                for name, spec in configs.items():
                    if b > 1 and name not in batched:
                        continue
                    if spec is not None and spec["method"] in ("early_exit", "fused"):
                        spec = {**spec, "early_exit_layer": layer}
                    r = run_thinkstream(ckpt, ps, b, n, spec, args.dtype,
                                        quantization_arg(args.quantization), args.device)
                    runs.setdefault(name, []).append(r)
                    print(f"{w} b{b} {name}: {r['tok_s']:.1f} tok/s, decode "
                          f"{r['decode_tok_s']:.1f}", file=sys.stderr)
            base = _median(runs[next(iter(runs))])
            for name, reps in runs.items():
                r = _median(reps)
                r.update(workload=w, batch=b, engine="thinkstream", config=name,
                         vs_none=r["tok_s"] / base["tok_s"], reps=[x["tok_s"] for x in reps],
                         decode_vs_none=r["decode_tok_s"] / base["decode_tok_s"],
                         decode_reps=[x["decode_tok_s"] for x in reps],
                         same_output=all(x["outputs"] == base["outputs"] for x in reps)
                         if configs[name] else None)
                rows.append(r)
                save()
            if b != 1 or gguf is None:
                continue
            hf_layer = layer if wants_layer else None
            for r in peer_rows(peers, gguf, ps, n, args.lookup_tokens, hf_layer, hf_cache):
                r.update(workload=w)
                rows.append(r)
                save()
                print(table([r]).splitlines()[-1], file=sys.stderr)
    print(table(rows))
    save()
    if args.plot:
        plot(rows, args.plot)
    return 0
