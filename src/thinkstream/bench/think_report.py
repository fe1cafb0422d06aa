"""The report of ``thinkstream bench think-while-reading``: aggregates, comparison with batch
thinking, the issue's targets, a table and a plot. Pure functions of the records.

Per (task set, mode, depth), and over all sets (``set == "all"``): mean input tokens waited
before the first reasoning token, median seconds from the input's end to the first answer
token and to the finished answer, mean tokens generated (reasoning + answer), accuracy with
a Wilson 95% interval. Against ``batch`` at the same set and depth: the reduction of tokens
waited and of the time to the finished answer, the accuracy difference and a one-sided
exact McNemar test on the paired tasks (p of "this mode is no worse" being wrong).
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

SCHEMA = "thinkstream-bench-think-while-reading/1"
TARGETS = {"onset_reduction": 0.80, "final_reduction": 0.60, "alpha": 0.05}


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a proportion k/n (95% for z = 1.96)."""
    if n == 0:
        return (0.0, 1.0)
    p = k / n
    den = 1 + z * z / n
    mid = (p + z * z / (2 * n)) / den
    half = z / den * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return (max(0.0, mid - half), min(1.0, mid + half))


def mcnemar_worse(only_base: int, only_mode: int) -> float:
    """One-sided exact McNemar p-value that the mode is worse than the base: of the
    ``only_base + only_mode`` discordant tasks, at least ``only_base`` favour the base."""
    n = only_base + only_mode
    return sum(math.comb(n, i) for i in range(only_base, n + 1)) / 2 ** n if n else 1.0


def _aggregate(rs: list[dict]) -> dict:
    k, n = sum(r["correct"] for r in rs), len(rs)
    lo, hi = wilson(k, n)
    return {
        "n": n, "input_tokens": statistics.fmean(r["input_tokens"] for r in rs),
        "waited_tokens": statistics.fmean(r["waited_tokens"] for r in rs),
        "first_answer_s": statistics.median(r["first_answer_s"] for r in rs),
        "final_answer_s": statistics.median(r["final_answer_s"] for r in rs),
        "total_tokens": statistics.fmean(r["total_tokens"] for r in rs),
        "reasoning_tokens": statistics.fmean(r["reasoning_tokens"] for r in rs),
        "reasoning_after_close": statistics.fmean(r["reasoning_after_close"] for r in rs),
        "correct": k, "accuracy": k / n, "ci95": [lo, hi],
    }


def _vs_batch(row: dict, base: dict, rs: list[dict], base_rs: list[dict]) -> None:
    right = {(r["set"], r["task"]): r["correct"] for r in base_rs}
    pairs = [(right[r["set"], r["task"]], r["correct"]) for r in rs if (r["set"], r["task"]) in right]
    only_base = sum(b and not m for b, m in pairs)
    only_mode = sum(m and not b for b, m in pairs)
    row["vs_batch"] = {
        "onset_reduction": 1 - row["waited_tokens"] / base["waited_tokens"] if base["waited_tokens"] else 0.0,
        "first_reduction": 1 - row["first_answer_s"] / base["first_answer_s"],
        "final_reduction": 1 - row["final_answer_s"] / base["final_answer_s"],
        "accuracy_diff": row["accuracy"] - base["accuracy"],
        "discordant": [only_base, only_mode], "p_worse": mcnemar_worse(only_base, only_mode),
    }


def summarize(report: dict) -> None:
    """Add ``summary`` (one row per set / mode / depth, then the "all" rows) and ``targets``
    (per mode and depth over all sets, against batch; the no-think reference has none)."""
    records = report["records"]
    groups: dict[tuple[str, str, str], list[dict]] = {}
    for r in records:
        groups.setdefault((r["set"], r["mode"], r["depth"]), []).append(r)
        groups.setdefault(("all", r["mode"], r["depth"]), []).append(r)
    rows = {key: {"set": key[0], "mode": key[1], "depth": key[2], **_aggregate(rs)}
            for key, rs in groups.items()}
    for (kind, mode, depth), row in rows.items():
        base = (kind, "batch", depth)
        if mode != "batch" and base in rows:
            _vs_batch(row, rows[base], groups[kind, mode, depth], groups[base])
    order = {s: i for i, s in enumerate([*report["sets"], "all"])}
    report["summary"] = sorted(rows.values(), key=lambda r: (order[r["set"]], r["depth"]))
    report["targets"] = {
        f"{r['mode']} {r['depth']}": {
            "onset_reduction": r["vs_batch"]["onset_reduction"],
            "onset_80pct_fewer_tokens_waited": r["vs_batch"]["onset_reduction"] >= TARGETS["onset_reduction"],
            "final_reduction": r["vs_batch"]["final_reduction"],
            "final_60pct_less_time": r["vs_batch"]["final_reduction"] >= TARGETS["final_reduction"],
            "accuracy_diff": r["vs_batch"]["accuracy_diff"], "p_worse": r["vs_batch"]["p_worse"],
            "accuracy_not_significantly_worse": r["vs_batch"]["p_worse"] >= TARGETS["alpha"],
        } for r in report["summary"]
        if r["set"] == "all" and "vs_batch" in r and r["mode"] != "no-think"}


def _pct(x: float) -> str:
    return f"{x * 100:+.0f}%"


def table(report: dict) -> str:
    lines = ["| set | mode | depth | n | tokens waited (of input) | first answer s | final answer s "
             "| tokens generated | accuracy [95% CI] | waited vs batch | final vs batch |",
             "|---" * 11 + "|"]
    for r in report["summary"]:
        v = r.get("vs_batch")
        cells = [r["set"], r["mode"], r["depth"], str(r["n"]),
                 f"{r['waited_tokens']:.1f} ({r['input_tokens']:.0f})", f"{r['first_answer_s']:.2f}",
                 f"{r['final_answer_s']:.2f}", f"{r['total_tokens']:.0f}",
                 f"{r['accuracy'] * 100:.0f}% [{r['ci95'][0] * 100:.0f}, {r['ci95'][1] * 100:.0f}]",
                 _pct(-v["onset_reduction"]) if v else "-", _pct(-v["final_reduction"]) if v else "-"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_json(report: dict, path: str | Path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")


def plot(report: dict, path: str | Path) -> None:
    """Over all sets, one bar per mode and depth: tokens waited, seconds from the input's
    end to the answer (first token hatched, finished answer solid), accuracy with its CI."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in report["summary"] if r["set"] == "all"]
    labels = [f"{r['mode']} {r['depth']}" if r["mode"] != "no-think" else "no-think" for r in rows]
    modes = ["batch", "interleaved", "gap", "grouped", "no-think"]
    colors = [f"C{modes.index(r['mode'])}" for r in rows]
    xs = range(len(rows))
    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    axes[0].bar(xs, [r["waited_tokens"] for r in rows], color=colors)
    axes[0].set_ylabel("input tokens before reasoning starts (mean)")
    axes[1].bar(xs, [r["final_answer_s"] for r in rows], color=colors, label="finished answer")
    axes[1].bar(xs, [r["first_answer_s"] for r in rows], color="none", edgecolor="k", hatch="//",
                label="first answer token")
    axes[1].set_ylabel("seconds after the input ends (median)")
    axes[1].legend(fontsize=7)
    acc = [r["accuracy"] for r in rows]
    err = [[a - r["ci95"][0] for a, r in zip(acc, rows, strict=True)],
           [r["ci95"][1] - a for a, r in zip(acc, rows, strict=True)]]
    axes[2].bar(xs, acc, color=colors, yerr=err, capsize=3)
    axes[2].set_ylim(0, 1)
    axes[2].set_ylabel("accuracy (Wilson 95% CI)")
    for ax in axes:
        ax.set_xticks(list(xs), labels, fontsize=7, rotation=45, ha="right")
        ax.grid(True, axis="y", alpha=0.3)
    s = report["settings"]
    every = (f"{s['interval_s']} s" if s.get("interval_steps") is None
             else f"{s['interval_steps']} steps")
    fig.suptitle(f"think while reading - {Path(str(report.get('model', ''))).name}, "
                 f"{s['tasks_per_set']} tasks x {len(report['sets'])} sets, one sentence every "
                 f"{every}", fontsize=9)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


__all__ = ["SCHEMA", "mcnemar_worse", "plot", "summarize", "table", "wilson", "write_json"]
