"""Where one decode step of thinkstream spends its time.

The engine is left untouched: timers are wrapped around the bound methods of one engine
instance (and forward hooks on its model), then ``steps`` decode steps of a batch of
sequences run. Components (wall time, ms per step):

- model: the decoder layers (``runner.model`` call) and the LM head (``compute_logits``),
  or with ``compile_decode`` the compiled decode step (both; ``runner.decode_graph``); the
  layers split into their linears (forward hooks on every linear module: the matmuls,
  dense or GGUF-native), attention (``paged_attention``, wrapped for the run) and the rest
  (norms, rotary embedding, residual adds, casts, module-call overhead); in the native
  decoder stack (``models/fused_decode.py``) its own timers split matmuls and attention;
- runner prep: ``runner.forward`` minus the model: token/position tensors, attention
  metadata (slot maps, block tables);
- sampling: ``runner.sample``;
- scheduler: ``schedule`` + ``commit`` + ``append_token`` + block tables;
- outputs: detokenizing and building ``RequestOutput``s (``engine._outputs``);
- speculative proposer (with ``speculative``): drafting (``proposer.propose``); the
  verifier is the model's forward over the drafts and the sampler's extra rows, inside
  "model" and "sampling" (the header gives drafts and accepted tokens per step);
- other Python: the rest of ``engine.step``.

A torch.profiler pass over the same steps lists the top operators by self CPU time.
"""

from __future__ import annotations

import ctypes
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any


def _timed(fn: Callable, acc: dict[str, float], key: str,
           clock: Callable[[], float] = time.perf_counter) -> Callable:
    def wrapper(*args, **kwargs):
        t0 = clock()
        try:
            return fn(*args, **kwargs)
        finally:
            acc[key] += clock() - t0
    return wrapper


def _instrument_layers(model, acc: dict[str, float], clock: Callable[[], float]) -> Callable[[], None]:
    """Time the linears and attention inside the decoder layers; returns the undo."""
    from torch import nn

    import thinkstream.models.layers as layers
    from thinkstream.models.gguf_linear import GGUFLinear
    from thinkstream.models.quant import QuantLinear

    starts: list[float] = []
    handles = []
    for mod in model.layers.modules():
        if isinstance(mod, nn.Linear | GGUFLinear | QuantLinear):
            handles.append(mod.register_forward_pre_hook(lambda m, a: starts.append(clock())))
            handles.append(mod.register_forward_hook(
                lambda m, a, out: acc.__setitem__("linears", acc["linears"] + clock() - starts.pop())))
    original = layers.paged_attention
    layers.paged_attention = _timed(original, acc, "attention", clock)
    stack = model.fused  # the native decoder stack (models/fused_decode.py): its own timers
    timers = (ctypes.c_double * 2)()
    if stack is not None:
        stack.time_parts(timers, clock is time.process_time)

    def undo() -> None:
        if stack is not None:
            stack.time_parts(None)
            acc["linears"] += timers[0]
            acc["attention"] += timers[1]
        layers.paged_attention = original
        for h in handles:
            h.remove()
    return undo


def _instrument(engine, acc: dict[str, float], clock: Callable[[], float] = time.perf_counter) -> None:
    sched, runner = engine.scheduler, engine.runner
    for name in ("schedule", "commit", "append_token"):
        setattr(sched, name, _timed(getattr(sched, name), acc, "scheduler", clock))
    engine.kv.block_table = _timed(engine.kv.block_table, acc, "scheduler", clock)
    runner.forward = _timed(runner.forward, acc, "forward", clock)
    runner.sample = _timed(runner.sample, acc, "sampling", clock)
    engine._outputs = _timed(engine._outputs, acc, "outputs", clock)
    if engine.speculative is not None:
        proposer = engine.speculative.proposer
        proposer.propose = _timed(proposer.propose, acc, "proposer", clock)
    if runner.decode_graph is not None:  # no hooks inside what torch.compile traces
        runner.decode_graph = _timed(runner.decode_graph, acc, "decode graph", clock)
        return
    runner.model.compute_logits = _timed(runner.model.compute_logits, acc, "lm head", clock)
    start: list[float] = []
    runner.model.register_forward_pre_hook(lambda m, a: start.append(clock()))

    def done(m, a, out):
        acc["decoder layers"] += clock() - start.pop()
    runner.model.register_forward_hook(done)


def profile_decode(model: str | None, batch: int, steps: int = 32, *, dtype: str = "bfloat16",
                   quantization: str | None = None, threads: int | None = None,
                   checkpoint: Any = None, prompt_len: int = 16, top_ops: int = 8,
                   compile_decode: bool = False, speculative: str | None = None,
                   cpu_clock: bool = False, kv_cache_dtype: str = "auto") -> dict[str, Any]:
    """Profile ``steps`` decode steps at ``batch`` sequences; returns ms per step per part.
    ``speculative``: a method (``SpeculativeConfig``); the prompts then repeat a chunk, so
    prompt lookup has something to find. ``cpu_clock``: this process's CPU time instead of
    wall time (with one thread, the cost without the waits of a shared machine).
    ``kv_cache_dtype``: ``EngineConfig.kv_cache_dtype``."""
    import torch

    from thinkstream.bench.workloads import decode_workload
    from thinkstream.llm import LLM
    from thinkstream.sampling_params import SamplingParams

    options: dict[str, Any] = {"checkpoint": checkpoint} if checkpoint is not None else {}
    options["quantization"] = quantization  # None: none (LLM's own default is "auto")
    if compile_decode:
        options["compile_decode"] = True
    if speculative:
        options["speculative"] = speculative
    llm = LLM(model, dtype=dtype, max_num_seqs=max(batch, 1), num_threads=threads,
              kv_cache_dtype=kv_cache_dtype, **options)
    engine = llm.engine
    vocab = engine.model_config.vocab_size
    work = decode_workload(batch, vocab, output_len=(8 if speculative else 2) * steps + 8,
                           prompt_len=prompt_len)
    for r in work.requests:
        prompt = list(r.prompt) * (4 if speculative else 1)
        engine.add_request(None, prompt, SamplingParams(
            temperature=0.0, max_tokens=r.max_tokens, ignore_eos=True))
    # prefill (chunks of up to 1,024 tokens a step), then a few warm-up decode steps (and
    # the decode compile)
    for _ in range(8 + -(-batch * len(prompt) // 1024)):
        engine.step()
    acc: dict[str, float] = defaultdict(float)
    clock = time.process_time if cpu_clock else time.perf_counter
    _instrument(engine, acc, clock)
    undo = _instrument_layers(engine.model, acc, clock) if engine.runner.decode_graph is None else None
    spec = engine.speculative
    before = (spec.stats.num_draft_tokens, spec.stats.num_accepted_tokens) if spec else (0, 0)
    t0 = clock()
    try:
        for _ in range(steps):
            engine.step()
    finally:
        if undo is not None:
            undo()
    total = clock() - t0
    drafted, accepted = ((spec.stats.num_draft_tokens - before[0],
                          spec.stats.num_accepted_tokens - before[1]) if spec else (0, 0))
    ms = {k: 1e3 * v / steps for k, v in acc.items()}  # before the profiler's steps add more
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(min(steps, 8)):
            engine.step()
    graph_ms = ms.get("decode graph", 0.0)
    model_ms = ms.get("decoder layers", 0.0) + ms.get("lm head", 0.0) + graph_ms
    layers_ms = ms.get("decoder layers", 0.0)
    parts = {
        "model: decoder layers: linears (matmul)": ms.get("linears", 0.0),
        "model: decoder layers: attention": ms.get("attention", 0.0),
        "model: decoder layers: other (norms, rope, residuals, casts, calls)":
            layers_ms - ms.get("linears", 0.0) - ms.get("attention", 0.0),
        "model: lm head": ms.get("lm head", 0.0),
        "model: compiled decode step (layers + head)": graph_ms,
        "runner prep (inputs, attention metadata)": ms.get("forward", 0.0) - model_ms,
        "sampling": ms.get("sampling", 0.0),
        "scheduler + kv bookkeeping": ms.get("scheduler", 0.0),
        "outputs (detokenize, RequestOutput)": ms.get("outputs", 0.0),
    }
    if spec is not None:
        parts["speculative proposer"] = ms.get("proposer", 0.0)
    parts["other Python in step()"] = 1e3 * total / steps - sum(parts.values())
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    n_prof = min(steps, 8)
    ops = [(e.key, e.self_cpu_time_total / 1e3 / n_prof, e.count // n_prof)
           for e in events[:top_ops]]
    native = engine.model.fused is not None and engine.runner.decode_graph is None
    return {"batch": batch, "steps": steps, "dtype": engine.precision.dtype,
            "kv_cache_dtype": engine.precision.kv_dtype,
            "quantization": engine.precision.quantization, "native_stack": native,
            "precision": engine.precision.reason, "clock": "cpu" if cpu_clock else "wall",
            "compile_decode": compile_decode, "speculative": speculative,
            "drafts_per_step": drafted / steps, "accepted_per_step": accepted / steps,
            "step_ms": 1e3 * total / steps, "tok_s": (batch * steps + accepted) / total,
            "parts_ms": parts,
            "top_ops": ops}


def format_profile(p: dict[str, Any]) -> str:
    kv = p.get("kv_cache_dtype", p["dtype"])
    lines = [f"batch {p['batch']} ({p['dtype']}{'' if kv == p['dtype'] else ', KV cache ' + kv}"
             f", quantization={p['quantization']}"
             f"{', native decoder stack' if p.get('native_stack') else ''}"
             f"{', compile_decode' if p.get('compile_decode') else ''}"
             f"{', speculative ' + p['speculative'] if p.get('speculative') else ''}): "
             f"{p['step_ms']:.1f} ms/step, {p['tok_s']:.0f} tok/s"
             + (f", {p['drafts_per_step']:.1f} drafts and {p['accepted_per_step']:.1f} accepted "
                "per step (verified in the model's forward)" if p.get("speculative") else ""),
             "| part | ms/step | share |", "|---|---|---|"]
    for name, v in p["parts_ms"].items():
        lines.append(f"| {name} | {v:.2f} | {100 * v / p['step_ms']:.0f}% |")
    lines += ["", "| top operator (self CPU) | ms/step | calls/step |", "|---|---|---|"]
    lines += [f"| {k} | {v:.2f} | {c} |" for k, v, c in p["top_ops"]]
    return "\n".join(lines) + "\n"
