"""What prompt lookup can give at batch 1 on a workload's real answers, by a measured cost
table: a replay, free of the machine's noise (docs/benchmarks.md, "Speculative decoding").

Greedy answers are the same with and without speculation, so the decode of each answer is
replayed teacher-forced: at each step a policy picks a draft length k, ``NgramProposer``
drafts from the prompt and the answer so far, the run of draft tokens equal to the answer
is accepted, and the step costs ``t(1 + k)`` from the table (``bench/verify_rows.py``
JSON: CPU ms of one sequence's forward over m rows after a cached prefix, interpolated
between measured rows). The speed-up is ``(n - 1) * t(1)`` over the replay's cost: decode
only (the prompt's prefill is the same in both). Policies: fixed lengths; ``adaptive``
(``LengthController`` on the table's curve as ``StepCost`` measures it in the engine,
shadow drafts at length 0 as the decoder makes them); ``oracle`` (drafts exactly the
accepted run: the ceiling for prompt lookup on this cost curve). ``--max-rows`` caps a
step's rows as the engine does (12 on CPUs with the GGUF kernels' GEMM: the rows computed
bit for bit as one row; ``speculative/decoder.py``); 0: no cap.

    python -m thinkstream.bench.speculative_sim --cost docs/results/verify_rows_zen4.json \\
        [--workloads echo,echo-short,chat] [--max-rows 12] [--answers answers.json] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

from thinkstream.speculative.adaptive import LengthController, StepCost
from thinkstream.speculative.config import ADAPTIVE_MAX_TOKENS
from thinkstream.speculative.ngram import NgramProposer

FIXED = (1, 2, 3, 4, 5, 6, 7, 8, 11, 15, 23, 31)
Policy = Callable[[list[int], int, list[int]], int]  # (tokens so far, i, full draft) -> k


def cost_table(ms: dict[int, float]) -> Callable[[int], float]:
    """t(m) in ms from measured rows: exact where measured, linear between, past the last
    the slope of the last two."""
    rows = sorted(ms)

    def t(m: int) -> float:
        if m in ms:
            return ms[m]
        lo = max((r for r in rows if r < m), default=rows[0])
        hi = min((r for r in rows if r > m), default=None)
        if hi is None:
            a, b = rows[-2], rows[-1]
            return ms[b] + (ms[b] - ms[a]) / (b - a) * (m - b)
        return ms[lo] + (ms[hi] - ms[lo]) * (m - lo) / (hi - lo)
    return t


def replay(answers: list[tuple[list[int], list[int]]], t: Callable[[int], float],
           choose: Callable[[str], int] | None, learn: Callable[..., None] | None = None,
           oracle: bool = False, k_max: int = 64) -> float:
    """Decode speed-up over one token per step of ``answers`` ((prompt, answer) pairs)
    with lengths from ``choose(request key)`` (None and not oracle: no drafts), at most
    ``k_max``; ``learn(key, drafted, accepted, shadow hit, tokens, ms)`` hears each step."""
    spent = base = 0.0
    for a, (prompt, answer) in enumerate(answers):
        key, toks, lookup = f"r{a}", prompt + answer, NgramProposer()
        i = len(prompt) + 1  # the first answer token comes with the prefill
        while i < len(toks):
            full = lookup.lookup(key, toks[:i], k_max).tokens
            run = next((j for j, d in enumerate(full) if i + j >= len(toks) or toks[i + j] != d),
                       len(full))
            k = min(run if oracle else choose(key) if choose else 0, len(full), k_max)
            acc = min(run, k)
            spent += t(1 + k)
            if learn is not None:
                shadow = int(bool(full) and full[0] == toks[i])
                learn(key, k, acc, shadow if full else None, 1 + k, t(1 + k))
            i += acc + 1
        base += (len(answer) - 1) * t(1)
    return base / spent


def adaptive(answers: list[tuple[list[int], list[int]]], t: Callable[[int], float],
             k_max: int = ADAPTIVE_MAX_TOKENS) -> float:
    """The replay with the engine's adaptive length (at most ``k_max``) on the table's
    measured curve."""
    cost = StepCost(16)
    ctl = LengthController(ADAPTIVE_MAX_TOKENS, 16, 0.0, cost=cost)

    def learn(key: str, k: int, acc: int, shadow: int | None, n: int, ms: float) -> None:
        if k:
            ctl.update(key, k, acc)
        elif shadow is not None and ctl.shadow_wanted(key):
            ctl.update(key, 1, shadow, real=False)
        cost.observe(n, ms / 1e3)
        ctl.knee = cost.knee

    return replay(answers, t, lambda key: ctl.length(key, 1, 1), learn, k_max=k_max)


def greedy_answers(workloads: list[str], model: str | None) -> dict[str, list]:
    """(prompt ids, greedy answer ids) per prompt of each workload, thinkstream float32."""
    from thinkstream.bench.speculative_workloads import ECHO_MAX_TOKENS, WORKLOADS
    from thinkstream.llm import LLM
    from thinkstream.sampling_params import SamplingParams

    llm = LLM(model, num_threads=1, dtype="float32", kv_cache_dtype="float32")
    out = {}
    for w in workloads:
        prompts = [llm.chat_prompt([{"role": "user", "content": p}]) for p in WORKLOADS[w]]
        n = {"echo": ECHO_MAX_TOKENS, "long": 96}.get(w, 48)
        res = llm.generate(prompts, SamplingParams(temperature=0.0, max_tokens=n))
        out[w] = [(p, list(r.outputs[0].token_ids)) for p, r in zip(prompts, res, strict=True)]
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cost", required=True, help="bench/verify_rows.py JSON (cpu_ms per rows)")
    p.add_argument("--workloads", default="echo,echo-short,chat")
    p.add_argument("--model", default=None)
    p.add_argument("--answers", default=None, help="cache of the greedy answers (JSON)")
    p.add_argument("--max-rows", type=int, default=12, help="a step's rows at most (0: any)")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    k_max = args.max_rows - 1 if args.max_rows > 0 else 64
    t = cost_table({int(m): v for m, v in json.loads(Path(args.cost).read_text())["cpu_ms"].items()})
    workloads = [w for w in args.workloads.split(",") if w]
    cache = Path(args.answers) if args.answers else None
    answers = json.loads(cache.read_text()) if cache and cache.exists() else {}
    if any(w not in answers for w in workloads):
        answers.update(greedy_answers([w for w in workloads if w not in answers], args.model))
        if cache:
            cache.write_text(json.dumps(answers))
    rows = {}
    fixed = [k for k in FIXED if k <= k_max]
    print("| workload | " + " | ".join(f"fixed {k}" for k in fixed) + " | adaptive | oracle |")
    print("|---" * (len(fixed) + 3) + "|")
    for w in workloads:
        r = {f"fixed {k}": replay(answers[w], t, lambda key, k=k: k) for k in FIXED if k <= k_max}
        r["adaptive"] = adaptive(answers[w], t, k_max)
        r["oracle"] = replay(answers[w], t, None, oracle=True, k_max=k_max)
        rows[w] = r
        print(f"| {w} | " + " | ".join(f"{v:.2f}" for v in r.values()) + " |")
    if args.json:
        Path(args.json).write_text(json.dumps({"cost": args.cost, "max_rows": args.max_rows,
                                               "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
