"""What prompt lookup can give at batch 1 on a workload's real answers, by a measured cost
table: a replay, free of the machine's noise (docs/benchmarks.md, "Speculative decoding").

Greedy answers are the same with and without speculation, so the decode of each answer is
replayed teacher-forced: at each step a policy (``bench/speculative_policies.py``) picks a
draft length k from the step's lookup (``Step``: ``NgramProposer``'s draft from the prompt
and the answer so far, the matched suffix, the other candidates, whether the draft
continues the copy the last step accepted), the run of draft tokens equal to the answer
is accepted, and the step costs ``t(1 + k)`` from the table (``bench/verify_rows.py``
JSON: CPU ms of one sequence's forward over m rows after a cached prefix, interpolated
between measured rows). The speed-up is ``(n - 1) * t(1)`` over the replay's cost: decode
only (the prompt's prefill is the same in both). Besides the policies: fixed lengths and
``oracle`` (drafts exactly the accepted run: the ceiling for prompt lookup on this cost
curve). ``--max-rows`` caps a step's rows as the engine does (12 on CPUs with the GGUF
kernels' GEMM: the rows computed bit for bit as one row; ``speculative/decoder.py``); 0: no
cap. ``--policies``: the policy table too (each policy a row, each workload a column).

    python -m thinkstream.bench.speculative_sim --cost docs/results/verify_rows_zen4.json \\
        [--workloads echo,echo-short,chat] [--max-rows 12] [--answers answers.json] \\
        [--policies] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import random
from collections.abc import Callable
from pathlib import Path

from thinkstream.bench.speculative_policies import Adaptive, Fixed, Step, policies
from thinkstream.speculative.config import ADAPTIVE_MAX_TOKENS
from thinkstream.speculative.ngram import NgramProposer

FIXED = (1, 2, 3, 4, 5, 6, 7, 8, 11, 15, 23, 31)
MAX_MATCH = 64  # a matched suffix is measured up to this many tokens


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


def lookup(proposer: NgramProposer, key: str, tokens: list[int], k: int,
           last_end: int, prompt_len: int = 0) -> Step:
    """The step's ``Step`` for ``tokens`` (the prompt of ``prompt_len`` tokens and the
    answer so far), the draft of at most ``k`` tokens; ``last_end``: the position in the
    last step's source that the target's own token (``tokens[-1]``) continued, after the
    accepted run (-1: none); continuing when that token followed the source
    (``NgramProposer.continuing``'s rule)."""
    found = proposer.match(key, tokens, k)
    if found is None:
        return Step()
    went_on = 0 <= last_end < len(tokens) - 1 and tokens[last_end] == tokens[-1]
    end, n = found
    match = n
    while match < MAX_MATCH and end - match >= 0 and tokens[end - match] == tokens[-1 - match]:
        match += 1
    gram, last = tokens[-n:], len(tokens)
    conts = [tokens[e + 1 : min(e + 1 + k, last)] for e in range(n - 1, last - 1)
             if tokens[e - n + 1 : e + 1] == gram]
    agree = 0
    while all(len(c) > agree for c in conts) and len({c[agree] for c in conts}) == 1:
        agree += 1
    draft, before = tokens[end + 1 : end + 1 + k], tokens[last_end + 1 : last_end + 1 + k]
    m = min(len(draft), len(before))
    cont = went_on and (end == last_end or draft[:m] == before[:m])
    return Step(tuple(draft), end, match, len(conts), agree, cont, end < prompt_len)


def replay(answers: list[tuple[list[int], list[int]]], t: Callable[[int], float],
           policy: object | None, oracle: bool = False, k_max: int = 64) -> float:
    """Decode speed-up over one token per step of ``answers`` ((prompt, answer) pairs)
    with lengths from ``policy`` (``length(key, step)``, told each outcome by
    ``learn(key, step, k, accepted, shadow hit, ms)``; None and not oracle: no drafts), at
    most ``k_max``."""
    spent = base = 0.0
    for a, (prompt, answer) in enumerate(answers):
        key, toks, proposer = f"r{a}", prompt + answer, NgramProposer()
        i, last_end = len(prompt) + 1, -1  # the first answer token comes with the prefill
        while i < len(toks):
            step = lookup(proposer, key, toks[:i], k_max, last_end, len(prompt))
            full = step.draft
            run = next((j for j, d in enumerate(full) if i + j >= len(toks) or toks[i + j] != d),
                       len(full))
            k = run if oracle else policy.length(key, step) if policy else 0
            k = max(min(k, len(full), k_max), 0)
            acc = min(run, k)
            spent += t(1 + k)
            if policy is not None and not oracle:
                hit = (full[0] == toks[i]) if full else None
                policy.learn(key, step, k, acc, hit, t(1 + k))
            last_end = step.source + acc + 1 if full else -1
            i += acc + 1
        base += (len(answer) - 1) * t(1)
    return base / spent


def adaptive(answers: list[tuple[list[int], list[int]]], t: Callable[[int], float],
             k_max: int = ADAPTIVE_MAX_TOKENS) -> float:
    """The replay with the engine's adaptive length (at most ``k_max``) on the table's
    measured curve."""
    return replay(answers, t, Adaptive(), k_max=k_max)


def greedy_answers(workloads: list[str], model: str | None) -> dict[str, list]:
    """(prompt ids, greedy answer ids) per prompt of each workload, thinkstream float32."""
    from thinkstream.bench.speculative_workloads import ECHO_MAX_TOKENS, WORKLOADS
    from thinkstream.llm import LLM
    from thinkstream.sampling_params import SamplingParams

    llm = LLM(model, num_threads=1, dtype="float32", kv_cache_dtype="float32")
    out = {}
    for w in workloads:
        prompts = [llm.chat_prompt([{"role": "user", "content": p}]) for p in WORKLOADS[w]]
        n = {"echo": ECHO_MAX_TOKENS, "echo-holdout": ECHO_MAX_TOKENS, "long": 96}.get(w, 48)
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
    p.add_argument("--policies", action="store_true",
                   help="also every drafting policy of bench/speculative_policies.py")
    p.add_argument("--perturb", type=int, default=0, metavar="N",
                   help="adaptive with and without continuity on N tables, each row +-10%%")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    k_max = args.max_rows - 1 if args.max_rows > 0 else 64
    ms = {int(m): v for m, v in json.loads(Path(args.cost).read_text())["cpu_ms"].items()}
    t = cost_table(ms)
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
        r = {f"fixed {k}": replay(answers[w], t, Fixed(k)) for k in fixed}
        r["adaptive"] = adaptive(answers[w], t, k_max)
        r["oracle"] = replay(answers[w], t, None, oracle=True, k_max=k_max)
        rows[w] = r
        print(f"| {w} | " + " | ".join(f"{v:.2f}" for v in r.values()) + " |")
    out = {"cost": args.cost, "max_rows": args.max_rows, "rows": rows}
    if args.policies:
        out["policies"] = policy_table(answers, workloads, t, k_max)
    if args.perturb:
        out["perturbed"] = perturbed(answers, workloads, ms, k_max, args.perturb)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    return 0


def policy_table(answers: dict[str, list], workloads: list[str], t: Callable[[int], float],
                 k_max: int) -> dict[str, dict[str, float]]:
    """Every policy of ``bench/speculative_policies.py`` (and fixed 7, oracle) on each
    workload, printed as a table (a policy a row); returns {policy: {workload: speed-up}}."""
    costs = [t(1 + k) / t(1) for k in range(k_max + 1)]
    makers = {"fixed 7": lambda: Fixed(7), **policies(costs)}
    table = {name: {w: replay(answers[w], t, make(), k_max=k_max) for w in workloads}
             for name, make in makers.items()}
    table["oracle"] = {w: replay(answers[w], t, None, oracle=True, k_max=k_max) for w in workloads}
    print("\n| policy | " + " | ".join(workloads) + " |\n" + "|---" * (len(workloads) + 1) + "|")
    for name, r in table.items():
        print(f"| {name} | " + " | ".join(f"{r[w]:.2f}" for w in workloads) + " |")
    return table


def perturbed(answers: dict[str, list], workloads: list[str], ms: dict[int, float],
              k_max: int, n: int) -> dict[str, list[list[float]]]:
    """The adaptive length with and without copy continuity on ``n`` cost tables, each
    measured row count's ms scaled by a uniform draw in 0.9..1.1 (seeds 0..n-1: the kind
    of noise the engine's measured curve has); prints the mean and the least gain per
    workload. Returns {"before" / "continuity": [[speed-up per workload] per table]}."""
    out: dict[str, list[list[float]]] = {"before": [], "continuity": []}
    for seed in range(n):
        rnd = random.Random(seed)
        t = cost_table({m: v * rnd.uniform(0.9, 1.1) for m, v in sorted(ms.items())})
        for name, cont in (("before", False), ("continuity", True)):
            out[name].append([replay(answers[w], t, Adaptive(continuity=cont), k_max=k_max)
                              for w in workloads])
    gains = [[c - b for b, c in zip(rb, rc, strict=True)]
             for rb, rc in zip(out["before"], out["continuity"], strict=True)]
    print(f"\n{n} tables +-10%: | workload | before (mean) | continuity (mean) | gain mean | "
          "gain least |\n|---|---|---|---|---|")
    for j, w in enumerate(workloads):
        b, c = (sum(r[j] for r in out[k]) / n for k in ("before", "continuity"))
        print(f"| {w} | {b:.2f} | {c:.2f} | {c - b:+.2f} | {min(g[j] for g in gains):+.2f} |")
    return out

if __name__ == "__main__":
    raise SystemExit(main())
