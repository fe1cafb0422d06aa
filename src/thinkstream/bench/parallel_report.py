"""The report of ``thinkstream bench parallel``: medians, ratios, the issue's targets, a
markdown table, the JSON and a plot. Pure functions of the records (``bench.parallel``).

Targets (issue 12): 8 paths of 256 tokens in at most 3x one path's wall time; the time to
the first summary token within 1.5x between 8 x 64 and the largest size, and at least 10x
below re-prefilling at the largest size; the prompt's KV stored once whatever N is.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
from pathlib import Path

from thinkstream.bench.think_report import wilson

SCHEMA = "thinkstream-bench-parallel/1"
TARGETS = {"wall_8_paths_max": 3.0, "join_flat_max": 1.5, "join_vs_reprefill_min": 10.0}


def machine() -> dict:
    """The CPU class every figure is recorded with."""
    info = {"cpus": len(os.sched_getaffinity(0)), "platform": platform.platform(),
            "python": platform.python_version()}
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return info
    lines = dict(ln.split(":", 1) for ln in text.splitlines() if ":" in ln)
    flags = set(lines.get("flags\t\t", "").split())
    info["cpu"] = lines.get("model name\t", "").strip()
    info["isa"] = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags]
    return info


def _med(xs: list[float]) -> float:
    return statistics.median(xs)


def summarize(report: dict) -> None:
    """Add medians, ratios and target checks to ``report`` (in place)."""
    if "wall" in report:
        rows = report["wall"]
        one = _med(rows[0]["seconds"]) if rows and rows[0]["paths"] == 1 else None
        for r in rows:
            r["median_s"] = _med(r["seconds"])
            if one:
                r["vs_one_path"] = r["median_s"] / one
                r["one_after_another_s"] = r["paths"] * one
                r["vs_one_after_another"] = r["median_s"] / (r["paths"] * one)
        eight = next((r for r in rows if r["paths"] == 8 and "vs_one_path" in r), None)
        if eight is not None:
            report.setdefault("targets", {})["wall_8_paths"] = {
                "value": eight["vs_one_path"], "max": TARGETS["wall_8_paths_max"],
                "met": eight["vs_one_path"] <= TARGETS["wall_8_paths_max"]}
    if "join" in report and report["join"]:
        rows = report["join"]
        for r in rows:
            for key in ("join_s", "reprefill_s", "llamacpp_s"):
                if key in r:
                    r[key.replace("_s", "_median_s")] = _med(r[key])
            r["reprefill_vs_join"] = r["reprefill_median_s"] / r["join_median_s"]
            if "llamacpp_median_s" in r:
                r["llamacpp_vs_join"] = r["llamacpp_median_s"] / r["join_median_s"]
        flat = rows[-1]["join_median_s"] / rows[0]["join_median_s"]
        report.setdefault("targets", {})["join_flat"] = {
            "value": flat, "max": TARGETS["join_flat_max"], "met": flat <= TARGETS["join_flat_max"]}
        gain = rows[-1]["reprefill_vs_join"]
        report["targets"]["join_vs_reprefill"] = {
            "value": gain, "min": TARGETS["join_vs_reprefill_min"],
            "met": gain >= TARGETS["join_vs_reprefill_min"]}
    if "accuracy" in report:
        report["accuracy_summary"] = [
            {"model": model, "mode": mode, **_acc([r for r in recs if r["mode"] == mode])}
            for model, recs in report["accuracy"].items()
            for mode in ("1 path", "vote", "summary")]


def _acc(rs: list[dict]) -> dict:
    k, n = sum(r["correct"] for r in rs), len(rs)
    lo, hi = wilson(k, n)
    any_path = sum(r["answer"] in r["path_answers"] for r in rs)
    return {"n": n, "correct": k, "accuracy": k / n if n else 0.0, "ci95": [lo, hi],
            "any_path_right": any_path}


def table(report: dict) -> str:
    out = [f"machine: {report['machine'].get('cpu', '?')} ({report['machine']['cpus']} cpus, "
           f"{', '.join(report['machine'].get('isa', []))}); settings: {report['settings']}"]
    if "wall" in report:
        out += ["", "(a) N paths decoded together vs one path and one after another",
                "| paths | tokens each | wall s | vs 1 path | one after another s | ratio |",
                "|---:|---:|---:|---:|---:|---:|"]
        for r in report["wall"]:
            out.append(f"| {r['paths']} | {r['path_tokens']} | {r['median_s']:.2f} | "
                       f"{r.get('vs_one_path', 0):.2f}x | {r.get('one_after_another_s', 0):.2f} | "
                       f"{r.get('vs_one_after_another', 0):.2f} |")
    if report.get("join"):
        out += ["", "(b) first summary token after 8 paths: join through views vs re-prefill",
                "| tokens / path | context | join ms | re-prefill s | x | llama.cpp s | x |",
                "|---:|---:|---:|---:|---:|---:|---:|"]
        for r in report["join"]:
            lc = (f"{r['llamacpp_median_s']:.2f} | {r['llamacpp_vs_join']:.0f}x"
                  if "llamacpp_median_s" in r else "- | -")
            out.append(f"| {r['path_tokens']} | {r['context_tokens']} | "
                       f"{r['join_median_s'] * 1e3:.1f} | {r['reprefill_median_s']:.2f} | "
                       f"{r['reprefill_vs_join']:.0f}x | {lc} |")
    if "blocks" in report:
        b = report["blocks"]
        out += ["", f"(c) peak KV blocks ({b['block_size']} tokens each): {b['paths']} paths of "
                f"{b['path_tokens']} tokens after a {b['prompt_tokens']}-token prompt",
                "| views (paths) | n = N fork | N requests | N requests + prefix cache |",
                "|---:|---:|---:|---:|",
                f"| {b['views']} | {b['fork_n']} | {b['independent']} | "
                f"{b['independent_prefix_cache']} |"]
    if "accuracy_summary" in report:
        out += ["", "(d) accuracy (state tracking + context QA, exact answers), 95% CI",
                "| model | mode | right / n | accuracy | 95% CI | a path had it |",
                "|---|---|---:|---:|---|---:|"]
        for r in report["accuracy_summary"]:
            out.append(f"| {r['model']} | {r['mode']} | {r['correct']}/{r['n']} | "
                       f"{r['accuracy']:.0%} | {r['ci95'][0]:.0%}-{r['ci95'][1]:.0%} | "
                       f"{r['any_path_right']} |")
    for name, t in report.get("targets", {}).items():
        bound = f"<= {t['max']}" if "max" in t else f">= {t['min']}"
        out.append(f"target {name}: {t['value']:.2f} ({bound}): {'met' if t['met'] else 'NOT met'}")
    return "\n".join(out)


def write_json(report: dict, path: str | Path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")


def plot(report: dict, path: str | Path) -> None:
    """(a) wall time by N against one after another; (b) time to the first summary token
    by path length, join vs re-prefill (log scale); (d) accuracy with its CI."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    if "wall" in report:
        ns = [r["paths"] for r in report["wall"]]
        axes[0].plot(ns, [r["median_s"] for r in report["wall"]], "o-", label="together")
        axes[0].plot(ns, [r.get("one_after_another_s", 0) for r in report["wall"]], "s--",
                     label="one after another")
        axes[0].set(xlabel="paths", ylabel="wall s", title="(a) N paths")
        axes[0].legend()
    if report.get("join"):
        ls = [r["path_tokens"] for r in report["join"]]
        for key, label in (("join_median_s", "join (views)"), ("reprefill_median_s",
                           "re-prefill (thinkstream)"), ("llamacpp_median_s", "re-prefill (llama.cpp)")):
            if key in report["join"][0]:
                axes[1].plot(ls, [r[key] for r in report["join"]], "o-", label=label)
        axes[1].set(xlabel="tokens per path (8 paths)", ylabel="s to first summary token",
                    yscale="log", title="(b) join")
        axes[1].legend()
    rows = report.get("accuracy_summary", [])
    if rows:
        xs = range(len(rows))
        acc = [r["accuracy"] for r in rows]
        err = [[a - r["ci95"][0] for a, r in zip(acc, rows, strict=True)],
               [r["ci95"][1] - a for a, r in zip(acc, rows, strict=True)]]
        axes[2].bar(xs, acc, yerr=err, color=[f"C{i % 3}" for i in xs])
        axes[2].set_xticks(list(xs), [f"{r['model'][:8]}\n{r['mode']}" for r in rows], fontsize=7)
        axes[2].set(ylabel="accuracy", ylim=(0, 1), title="(d) accuracy, 95% CI")
    cpu = report["machine"].get("cpu", "")
    fig.suptitle(f"thinkstream bench parallel, {cpu} ({report['machine']['cpus']} cpus)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def merge(paths: list[str]) -> dict:
    """Reports of separate parts (``--parts``) as one: each part's records and command."""
    out: dict = {"schema": SCHEMA, "commands": []}
    for p in paths:
        part = json.loads(Path(p).read_text(encoding="utf-8"))
        out["commands"].append(part["command"])
        for key in ("machine", "settings", "created", "model_path"):
            out.setdefault(key, part.get(key))
        for key in ("wall", "join", "blocks", "accuracy"):
            if key in part:
                out[key] = part[key]
    out.pop("targets", None)
    summarize(out)
    return out


def main(argv: list[str] | None = None) -> int:
    """``python -m thinkstream.bench.parallel_report a.json b.json --plot p.png``: merge the
    parts' reports, print the table, plot."""
    import argparse

    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("reports", nargs="+")
    ap.add_argument("--plot", default=None)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    report = merge(args.reports)
    print(table(report))
    if args.json:
        write_json(report, args.json)
    if args.plot:
        plot(report, args.plot)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
