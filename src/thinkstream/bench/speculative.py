"""``thinkstream bench speculative``: speculative decoding against no speculation and the
peers' own drafting, on three workloads at several batch sizes.

Workloads (chat prompts, greedy): **echo** (repeat, correct or edit a given passage or
function: the answer quotes its input), **chat** (short open questions: little overlap) and
**long** (long-form writing). Batch b runs b requests at once (the workload's prompts
cycled); batch 1 runs them one after another. Configurations: no speculation, each
proposer with a fixed length, and adaptive (``speculative.adaptive``). Peers at batch 1 on
the same GGUF: llama.cpp with prompt-lookup drafting (llama-cpp-python's
``LlamaPromptLookupDecoding``) and without, and HF transformers' ``generate`` without,
with ``prompt_lookup_num_tokens`` and with ``assistant_early_exit`` (transformers' own
self-speculation: its first k layers draft, ``num_assistant_tokens`` at a time, the same
layer and length as thinkstream's ``early_exit fixed``). Everything runs in this process on one thread,
one configuration after another (compare ratios within one run: these machines are
shared and noisy).

Reported per row: tokens/s, the ratio to the same engine without speculation, the
acceptance rate and mean accepted length (tokens per verification), and whether the
greedy output equals the run without speculation. With ``--reps`` the configurations
of a workload and batch run in turn, repeatedly, and the median run is reported (of two,
the faster).
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from pathlib import Path
from typing import Any

PASSAGE = ("The river rose slowly through the night. By morning the lower road was under "
           "water, the ferry had stopped running, and the school on the hill had opened its "
           "doors to families from the valley. Volunteers carried blankets, bread and dry "
           "clothes up the path while the mayor spoke with the engineers about the dam.")
CODE = ("def total_price(items, tax_rate):\n    subtotal = 0\n    for item in items:\n"
        "        subtotal += item.price * item.quantity\n    tax = subtotal * tax_rate\n"
        "    return subtotal + tax\n")
WORKLOADS: dict[str, list[str]] = {
    "echo": [f"Repeat the following text exactly, word for word:\n\n{PASSAGE}",
             f"Rewrite this function with the variable `subtotal` renamed to `net`. Output "
             f"only the code.\n\n{CODE}",
             f"Copy this paragraph, replacing 'river' with 'stream':\n\n{PASSAGE}",
             f"Quote the sentences of this text that mention the school:\n\n{PASSAGE}"],
    "chat": ["What are three good habits for better sleep?", "Name some fruits rich in vitamin C.",
             "How do I make a cup of green tea?", "Give me two ideas for a weekend trip."],
    "long": ["Write a long story about a lighthouse keeper who finds a message in a bottle.",
             "Write a detailed essay about the history of bicycles."],
}
CONFIGS: dict[str, dict | None] = {
    "none": None,
    "ngram fixed": {"method": "ngram", "num_speculative_tokens": 5, "adaptive": False},
    "ngram adaptive": {"method": "ngram", "num_speculative_tokens": 5},
    "early_exit fixed": {"method": "early_exit", "num_speculative_tokens": 3, "adaptive": False},
    "early_exit adaptive": {"method": "early_exit", "num_speculative_tokens": 3},
    "fused adaptive": {"method": "fused", "num_speculative_tokens": 5},
}


def _prompts(llm: Any, workload: str) -> list[list[int]]:
    return [llm.chat_prompt([{"role": "user", "content": p}]) for p in WORKLOADS[workload]]


def run_thinkstream(ckpt: Any, prompts: list[list[int]], batch: int, max_tokens: int,
                    spec: dict | None, dtype: str, quantization: str | None) -> dict[str, Any]:
    """Generate ``max_tokens`` greedy tokens for ``batch`` requests (prompts cycled)."""
    from thinkstream.llm import LLM
    from thinkstream.sampling_params import SamplingParams

    llm = LLM(checkpoint=ckpt, dtype=dtype, quantization=quantization, num_threads=1,
              max_num_seqs=max(batch, 1), max_num_batched_tokens=2048, speculative=spec)
    params = SamplingParams(temperature=0.0, max_tokens=max_tokens)
    llm.generate([prompts[0]], SamplingParams(temperature=0.0, max_tokens=4))  # warm-up
    hook = llm.engine.speculative
    before = (hook.stats.num_drafts, hook.stats.num_draft_tokens,
              hook.stats.num_accepted_tokens) if hook else (0, 0, 0)
    work = [prompts[i % len(prompts)] for i in range(batch)]
    t0 = time.perf_counter()
    if batch == 1:
        outs = [llm.generate([p], params)[0] for p in prompts]
    else:
        outs = llm.generate(work, params)
    seconds = time.perf_counter() - t0
    tokens = [list(o.outputs[0].token_ids) for o in outs]
    row = {"tokens": sum(map(len, tokens)), "seconds": seconds,
           "tok_s": sum(map(len, tokens)) / seconds, "outputs": tokens}
    if hook is not None:
        drafts, drafted, accepted = (hook.stats.num_drafts - before[0],
                                     hook.stats.num_draft_tokens - before[1],
                                     hook.stats.num_accepted_tokens - before[2])
        row.update(acceptance=accepted / drafted if drafted else 0.0,
                   mean_accepted_length=1 + accepted / drafts if drafts else 1.0,
                   draft_tokens=drafted, propose_s=hook.stats.propose_s)
    return row


def run_llamacpp(gguf: Path, prompts: list[list[int]], max_tokens: int,
                 lookup: int) -> dict[str, Any]:
    """llama.cpp (llama-cpp-python's ``Llama``), batch 1, greedy; ``lookup`` > 0 drafts
    that many tokens by prompt lookup."""
    import llama_cpp
    from llama_cpp.llama_speculative import LlamaPromptLookupDecoding

    draft = LlamaPromptLookupDecoding(num_pred_tokens=lookup) if lookup else None
    llm = llama_cpp.Llama(str(gguf), n_ctx=4096, n_threads=1, n_threads_batch=1,
                          draft_model=draft, verbose=False, logits_all=draft is not None)
    llm.create_completion(prompts[0], max_tokens=4, temperature=0.0)  # warm-up
    t0 = time.perf_counter()
    outs = []
    for p in prompts:
        llm.reset()
        res = llm.create_completion(p, max_tokens=max_tokens, temperature=0.0, top_k=1)
        outs.append(res["usage"]["completion_tokens"])
    seconds = time.perf_counter() - t0
    return {"tokens": sum(outs), "seconds": seconds, "tok_s": sum(outs) / seconds}


def run_hf(gguf: Path, prompts: list[list[int]], max_tokens: int, draft: dict[str, Any],
           model: Any = None) -> tuple[dict[str, Any], Any]:
    """HF transformers ``generate``, batch 1, greedy; ``draft``: its drafting arguments
    (``hf_drafts``), none for plain decoding. Returns the row and the model (loaded once)."""
    import torch
    import transformers

    if model is None:
        model = transformers.AutoModelForCausalLM.from_pretrained(
            str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32).eval()
    t0 = time.perf_counter()
    outputs = []
    with torch.inference_mode():
        for p in prompts:
            ids = torch.tensor([p])
            out = model.generate(ids, max_new_tokens=max_tokens, do_sample=False,
                                 attention_mask=torch.ones_like(ids), **draft)
            outputs.append(out[0, ids.shape[1]:].tolist())
    seconds = time.perf_counter() - t0
    n = sum(map(len, outputs))
    return {"tokens": n, "seconds": seconds, "tok_s": n / seconds, "outputs": outputs}, model


def hf_drafts(lookup: int, layer: int | None, exit_tokens: int) -> dict[str, dict[str, Any]]:
    """HF's configurations: none, prompt lookup of ``lookup`` tokens, and (with a layer)
    early exit at ``layer`` drafting ``exit_tokens`` per step (constant schedule: its
    default heuristic changes the length between calls)."""
    out: dict[str, dict[str, Any]] = {"none": {},
                                      f"prompt lookup {lookup}": {"prompt_lookup_num_tokens": lookup}}
    if layer is not None:
        out[f"early exit {layer} x{exit_tokens}"] = {
            "assistant_early_exit": layer, "num_assistant_tokens": exit_tokens,
            "num_assistant_tokens_schedule": "constant"}
    return out


def choose_exit_layer(ckpt: Any, prompts: list[list[int]], max_tokens: int) -> tuple[int, list]:
    """The early-exit layer with the best measured speed-up bound (``measure_exit_layers``
    on the greedy answers to ``prompts``), and the per-layer reports."""
    from dataclasses import asdict

    from thinkstream.llm import LLM
    from thinkstream.sampling_params import SamplingParams
    from thinkstream.speculative.early_exit import measure_exit_layers

    llm = LLM(checkpoint=ckpt, num_threads=1)
    outs = llm.generate(prompts, SamplingParams(temperature=0.0, max_tokens=max_tokens))
    texts = [list(o.prompt_token_ids) + list(o.outputs[0].token_ids) for o in outs]
    reports = measure_exit_layers(llm.engine, texts)
    best = max(reports, key=lambda r: r.speedup)
    return best.layer, [asdict(r) for r in reports]


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| workload | batch | engine | config | tok/s | vs none | acceptance | "
             "mean accepted length | same output |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        acc = f"{r['acceptance']:.2f}" if "acceptance" in r else "-"
        mal = f"{r['mean_accepted_length']:.2f}" if "mean_accepted_length" in r else "-"
        same = {True: "yes", False: "NO", None: "-"}[r.get("same_output")]
        lines.append(f"| {r['workload']} | {r['batch']} | {r['engine']} | {r['config']} | "
                     f"{r['tok_s']:.1f} | {r['vs_none']:.2f}x | {acc} | {mal} | {same} |")
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


def add_arguments(p: argparse.ArgumentParser) -> None:
    from thinkstream.bench.report import positive_int

    p.add_argument("--model", default=None, help="GGUF (default: SmolLM2-135M-Instruct)")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"],
                   help="thinkstream's dtype (default: the engine's own)")
    p.add_argument("--quantization", default="auto", choices=["auto", "none", "gguf", "int8", "int4"],
                   help="thinkstream's weight quantization (auto: GGUF-native where it runs)")
    p.add_argument("--workloads", default="echo,chat,long", help="subset of echo,chat,long")
    p.add_argument("--batches", default="1,8,32")
    p.add_argument("--configs", default=",".join(CONFIGS),
                   help=f"subset of: {', '.join(CONFIGS)}")
    p.add_argument("--batched-configs", default="none,ngram fixed,ngram adaptive,fused adaptive",
                   help="the configurations also run at batch > 1")
    p.add_argument("--peers", default="llamacpp,hf", help="batch-1 peers: llamacpp,hf or none")
    p.add_argument("--reps", type=positive_int, default=1,
                   help="thinkstream runs per configuration, alternating (median reported)")
    p.add_argument("--max-tokens", type=int, default=48)
    p.add_argument("--long-max-tokens", type=int, default=96)
    p.add_argument("--lookup-tokens", type=int, default=5, help="the peers' draft length")
    p.add_argument("--exit-layer", type=int, default=None,
                   help="early-exit layer (default: chosen by measurement on the chat answers)")
    p.add_argument("--json", default=None)
    p.add_argument("--plot", default=None)


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
    probe = LLM(checkpoint=ckpt, num_threads=1)
    prompts = {w: _prompts(probe, w) for w in _csv(args.workloads)}
    del probe
    layer, layers = (args.exit_layer, [])
    wants_layer = any("early_exit" in c or "fused" in c for c in configs) or "hf" in peers
    if layer is None and wants_layer:
        layer, layers = choose_exit_layer(ckpt, prompts.get("chat") or next(iter(prompts.values())),
                                          args.max_tokens)
        print(f"early-exit layer chosen by measurement: {layer}", file=sys.stderr)
    rows: list[dict[str, Any]] = []
    hf_model = None
    meta = {"command": "thinkstream " + " ".join(sys.argv[1:]),
            "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "model": str(gguf or "<checkpoint>"), "dtype": args.dtype,
            "quantization": args.quantization, "threads": 1, "early_exit_layer": layer,
            "exit_layers": layers,
            "machine": machine()}

    def save() -> None:  # after every row: a run cut short keeps what it measured
        if args.json:
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(json.dumps(
                {**meta, "rows": [{k: v for k, v in r.items() if k != "outputs"}
                                  for r in rows]}, indent=1))
    for w, ps in prompts.items():
        n = args.long_max_tokens if w == "long" else args.max_tokens
        for b in (int(x) for x in _csv(args.batches)):
            runs: dict[str, list[dict[str, Any]]] = {}
            for _ in range(args.reps):  # configurations alternate: load drifts hit all alike
                for name, spec in configs.items():
                    if b > 1 and name not in batched:
                        continue
                    if spec is not None and spec["method"] in ("early_exit", "fused"):
                        spec = {**spec, "early_exit_layer": layer}
                    r = run_thinkstream(ckpt, ps, b, n, spec, args.dtype, quantization_arg(args.quantization))
                    runs.setdefault(name, []).append(r)
                    print(f"{w} b{b} {name}: {r['tok_s']:.1f} tok/s", file=sys.stderr)
            base = _median(runs[next(iter(runs))])
            for name, reps in runs.items():
                r = _median(reps)
                r.update(workload=w, batch=b, engine="thinkstream", config=name,
                         vs_none=r["tok_s"] / base["tok_s"], reps=[x["tok_s"] for x in reps],
                         same_output=all(x["outputs"] == base["outputs"] for x in reps)
                         if configs[name] else None)
                rows.append(r)
                save()
            if b != 1 or gguf is None:
                continue
            exit_tokens = CONFIGS["early_exit fixed"]["num_speculative_tokens"]
            for peer in peers:
                pbase = None
                drafts = ({"none": 0, f"prompt lookup {args.lookup_tokens}": args.lookup_tokens}
                          if peer == "llamacpp" else hf_drafts(args.lookup_tokens, layer, exit_tokens))
                for config, draft in drafts.items():
                    if peer == "llamacpp":
                        r = run_llamacpp(gguf, ps, n, draft)
                    else:
                        r, hf_model = run_hf(gguf, ps, n, draft, hf_model)
                    pbase = pbase or r
                    same = r["outputs"] == pbase["outputs"] if "outputs" in r else None
                    r.update(workload=w, batch=1, engine=peer, config=config,
                             vs_none=r["tok_s"] / pbase["tok_s"],
                             same_output=same if draft else None)
                    rows.append(r)
                    save()
                    print(table([r]).splitlines()[-1], file=sys.stderr)
    print(table(rows))
    save()
    if args.plot:
        plot(rows, args.plot)
    return 0
