"""``thinkstream bench think-while-reading``: reasoning while the input streams vs after it.

Tasks (``think_tasks``: context QA, state tracking, ordering) arrive one sentence every
``--interval`` seconds into a chat session with thinking on (``LLM.open_session``); between
arrivals the engine steps. ``--interval-steps N`` paces arrivals by the engine instead (one
sentence every N steps, sooner when it runs out of work): what is read before the reasoning
starts then no longer depends on the machine's speed or load (times are still measured).
After the last chunk the session closes and the answer is timed.
Every task runs in every mode and depth back to back (so load drift hits all alike), with
the same model, system prompt, note / pass templates and budgets:

- ``batch``: no reasoning while reading (the input is still prefilled as it arrives); at
  close every sentence is noted in order, then the passes, then the answer
  (``ThinkConfig(defer_notes=True)``, gap positions: the same notes, only later).
- ``interleaved``, ``gap``, ``grouped``: the layouts of ``thinking.layouts``; each note
  starts as soon as its sentence is read.
- ``no-think`` (a reference, only if asked for): the same session without reasoning.

Depth: D1 answer after the last note, D2 one integration pass, D3 integration and
reflection. Per task: input tokens streamed before the first reasoning token ("tokens
waited", all of them for batch), seconds from the input's end to the first answer token
and to the finished answer, reasoning and answer tokens, and whether the answer is right
(``think_tasks.score``). ``think_report`` aggregates, compares with batch and plots.
"""

from __future__ import annotations

import argparse
import datetime
import sys
import time
from typing import Any

from thinkstream.bench import think_report as rep
from thinkstream.bench.report import add_run_arguments, emit, machine
from thinkstream.bench.think_tasks import SETS, Task, extract, make_tasks
from thinkstream.thinking import DEPTHS, Layout, ThinkConfig

MODES = ("batch", "interleaved", "gap", "grouped")
REFERENCE = "no-think"  # optional reference: no reasoning at all (depth does not apply)
SYSTEM = ("You read a text one sentence at a time and write short notes. Then answer the "
          "question about the text with one word or number.")


def think_config(mode: str, depth: str, note_tokens: int, pass_tokens: int,
                 tokenizer: Any) -> ThinkConfig | None:
    """The same templates and budgets for every mode; the gap holds one note segment."""
    if mode == REFERENCE:
        return None
    base = ThinkConfig(depth=depth, note_tokens=note_tokens, pass_tokens=pass_tokens)
    enc = lambda s: tokenizer.encode(s, add_special_tokens=False)  # noqa: E731
    gap = len(enc(base.note_head)) + note_tokens + len(enc(base.note_tail))
    kind = "gap" if mode == "batch" else mode
    return ThinkConfig(layout=Layout(kind, gap=gap), depth=depth, note_tokens=note_tokens,
                       pass_tokens=pass_tokens, defer_notes=mode == "batch")


def _step_until(engine: Any, deadline: float) -> None:
    """Step the engine while it has work, idle otherwise, until ``deadline`` (monotonic)."""
    while (now := time.monotonic()) < deadline:
        if engine.has_work():
            engine.step()
        else:
            time.sleep(min(0.002, deadline - now))


def _step_n(engine: Any, steps: int) -> None:
    """Up to ``steps`` engine steps, fewer if it runs out of work (no waiting)."""
    for _ in range(steps):
        if not engine.has_work():
            return
        engine.step()


def run_task(llm: Any, task: Task, cfg: ThinkConfig | None, interval: float,
             params: Any, interval_steps: int | None = None) -> dict:
    """Stream one task's chunks (one per ``interval`` seconds, or per ``interval_steps``
    engine steps if given; each ends in a line break so a sentence's unit is complete on
    arrival), close, and time the answer."""
    s = llm.open_session(messages=[{"role": "system", "content": SYSTEM}],
                         sampling_params=params, thinking=cfg)
    ctrl = llm._sessions.thinker(s.id)
    t0 = time.monotonic()
    for i, chunk in enumerate(task.chunks):
        if interval_steps is None:
            _step_until(llm.engine, t0 + i * interval)
        elif i:
            _step_n(llm.engine, interval_steps)
        s.append(chunk + "\n", prefill=False)
    t_end = time.monotonic()
    before_close = ctrl.reasoning_tokens if ctrl is not None else 0
    first = last = None
    for out in s.close():
        if first is None and out.outputs[0].token_ids:
            first = time.monotonic()
        last = out
    t_final = time.monotonic()
    o = last.outputs[0]
    if ctrl is None:  # no reasoning: it never starts
        text = "".join(c + "\n" for c in task.chunks)
        start, end, onset = 0, len(llm.tokenizer.encode(text, add_special_tokens=False)), None
    else:
        start, end, onset = ctrl.content_start, ctrl.num_content, ctrl.onset_input_tokens
    reasoning = ctrl.reasoning_tokens if ctrl is not None else 0
    return {
        "input_tokens": end - start,
        "waited_tokens": end - start if onset is None else min(onset, end) - start,
        "onset_s": None if ctrl is None or ctrl.onset_time is None else ctrl.onset_time - t0,
        "input_s": t_end - t0,
        "first_answer_s": (first if first is not None else t_final) - t_end,
        "final_answer_s": t_final - t_end,
        "reasoning_tokens": reasoning, "reasoning_after_close": reasoning - before_close,
        "answer_tokens": len(o.token_ids), "total_tokens": reasoning + len(o.token_ids),
        "notes": 0 if ctrl is None else sum(g.unit is not None for g in ctrl.segs),
        "units": 0 if ctrl is None else len(ctrl.units),
        "text": o.text, "reasoning": o.reasoning_content,
        "extracted": extract(task, o.text), "answer": task.answer,
        "correct": extract(task, o.text) == task.answer,
    }


def _csv(value: str, allowed: tuple[str, ...], what: str) -> list[str]:
    items = [v.strip() for v in value.split(",") if v.strip()]
    for v in items:
        if v not in allowed:
            raise ValueError(f"--{what}: unknown {v!r}; choose from {', '.join(allowed)}")
    return items


def _configs(args: argparse.Namespace) -> list[tuple[str, str]]:
    """(mode, depth) pairs: ``--depths`` for every mode, ``--all-depths`` modes get all;
    the no-think reference runs once (labelled D1)."""
    modes = _csv(args.modes, (*MODES, REFERENCE), "modes")
    depths = _csv(args.depths, DEPTHS, "depths")
    full = _csv(args.all_depths, MODES, "all-depths") if args.all_depths else []
    pairs = [(m, d) for d in DEPTHS for m in modes if m != REFERENCE and (d in depths or m in full)]
    return pairs + [(REFERENCE, "D1")] * (REFERENCE in modes)


def _log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def run(args: argparse.Namespace, checkpoint: Any = None) -> int:
    """Run, print the table, write ``--json`` / ``--plot``. ``checkpoint``: an already
    loaded model (tests)."""
    from thinkstream.llm import LLM
    from thinkstream.sampling_params import SamplingParams

    if args.quick:
        args.tasks, args.depths, args.all_depths = min(args.tasks, 2), "D1", ""
    if args.tasks < 1 or args.interval < 0:
        raise ValueError("--tasks must be >= 1 and --interval >= 0")
    if args.interval_steps is not None and args.interval_steps < 1:
        raise ValueError("--interval-steps must be >= 1")
    sets = _csv(args.sets, SETS, "sets")
    configs = _configs(args)
    t = time.monotonic()
    llm = LLM(args.model, dtype=args.dtype, quantization=args.quantization,
              num_threads=args.threads, enable_prefix_caching=False, checkpoint=checkpoint)
    load_s = time.monotonic() - t
    params = SamplingParams(temperature=0.0, max_tokens=args.max_tokens)
    cfgs = {c: think_config(*c, args.note_tokens, args.pass_tokens, llm.tokenizer) for c in configs}
    tasks = {k: make_tasks(k, args.seed, args.tasks) for k in sets}
    run_task(llm, tasks[sets[0]][0], cfgs[configs[0]], 0.0, params)  # warm-up, not recorded
    records = []
    for kind in sets:
        for i, task in enumerate(tasks[kind]):
            for mode, depth in configs:
                r = run_task(llm, task, cfgs[mode, depth], args.interval, params,
                             args.interval_steps)
                records.append({"set": kind, "task": i, "mode": mode, "depth": depth, **r})
                _log(f"{kind} #{i} {mode} {depth}: waited {r['waited_tokens']}/{r['input_tokens']} "
                     f"tok, final {r['final_answer_s']:.2f} s, {'ok' if r['correct'] else 'wrong'} "
                     f"({r['extracted']} vs {r['answer']})")
    gap_cfg = think_config("gap", "D1", args.note_tokens, args.pass_tokens, llm.tokenizer)
    report = {
        "schema": rep.SCHEMA,
        "command": "thinkstream " + " ".join(sys.argv[1:]) if checkpoint is None else "test",
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "model": str(llm.engine.model_path) if checkpoint is None else "<checkpoint>",
        "machine": machine(),
        "settings": {"dtype": args.dtype, "quantization": args.quantization,
                     "threads": args.threads, "interval_s": args.interval,
                     "interval_steps": args.interval_steps,
                     "tasks_per_set": args.tasks, "seed": args.seed, "max_tokens": args.max_tokens,
                     "note_tokens": args.note_tokens, "pass_tokens": args.pass_tokens,
                     "gap": gap_cfg.layout.gap, "answer_request": gap_cfg.answer_request,
                     "system": SYSTEM, "load_s": load_s},
        "sets": sets, "configs": [list(c) for c in configs], "records": records,
    }
    rep.summarize(report)
    return emit(rep, report, args)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None,
                   help="GGUF file, HF directory, 'smollm2-135m' (default) or 'gemma3-270m'")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--quantization", default=None, choices=["int8", "int4"])
    p.add_argument("--tasks", type=int, default=10, help="tasks per set (default 10)")
    p.add_argument("--sets", default=",".join(SETS), help="comma-separated subset of " + ",".join(SETS))
    p.add_argument("--modes", default=",".join(MODES),
                   help=f"comma-separated subset of {','.join(MODES)} (and {REFERENCE}: no reasoning)")
    p.add_argument("--depths", default=",".join(DEPTHS), help="depths for every mode (default all)")
    p.add_argument("--all-depths", default="",
                   help="modes run at every depth whatever --depths says (e.g. batch,gap)")
    p.add_argument("--interval", type=float, default=0.5, help="seconds between sentences (default 0.5)")
    p.add_argument("--interval-steps", type=int, default=None, metavar="N",
                   help="one sentence every N engine steps instead of --interval seconds "
                        "(sooner when the engine runs out of work): tokens waited do not depend "
                        "on the machine's speed or load")
    p.add_argument("--max-tokens", type=int, default=16, help="answer budget (greedy, stops at EOS)")
    p.add_argument("--note-tokens", type=int, default=24, help="budget of one note")
    p.add_argument("--pass-tokens", type=int, default=48, help="budget of one D2/D3 pass")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    add_run_arguments(p, "2 tasks per set, D1 only: a smoke run")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(p)
    return run(p.parse_args(argv))


__all__ = ["MODES", "add_arguments", "run", "run_task", "think_config"]
