"""From raw samples to the report: per-sample metrics, medians per (workload, case, peer),
ratios thinkstream / peer on each workload's headline metric (higher is better, so a
ratio above 1 means thinkstream is ahead), a markdown table, JSON and a PNG."""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
from pathlib import Path
from typing import Any

SCHEMA = "thinkstream-bench/1"
# The headline metric of each workload kind; all are "higher is better".
HEADLINE = {"prefill": "prefill_tok_s", "decode": "decode_tok_s", "throughput": "output_tok_s"}
UNITS = {"prefill_tok_s": "tok/s", "decode_tok_s": "tok/s", "output_tok_s": "tok/s",
         "req_s": "req/s", "ttft_s": "s", "total_s": "s"}


def machine() -> dict[str, Any]:
    """What a result was measured on: cores, platform, CPU model and instruction sets."""
    return {"cpus": len(os.sched_getaffinity(0)), "platform": platform.platform(),
            "python": platform.python_version(), "cpu": cpu_record()}


def cpu_record(cpuinfo: str | None = None) -> dict[str, Any]:
    """The CPU class: ``kernels.cpu``'s model name and instruction sets, plus the x86 family
    and model numbers (a VM may name the CPU only "AMD EPYC"; family 25 model 17 is Zen 4)."""
    from thinkstream.kernels.cpu import detect_cpu

    record: dict[str, Any] = detect_cpu().as_dict()
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            cpuinfo = ""
    names = {"cpu family": "cpu_family", "model": "model_number"}
    for line in cpuinfo.splitlines():  # the first processor's entry
        key, _, value = (part.strip() for part in line.partition(":"))
        if key in names and names[key] not in record:
            record[names[key]] = value
    return record


def quantization_arg(value: str | None) -> str | None:
    """The CLI's ``--quantization`` ("none" spelled out) -> ``EngineConfig.quantization``."""
    return None if value in (None, "none") else value


def metrics(sample: dict[str, Any]) -> dict[str, float]:
    """The figures of one run.

    - prefill: time to first token and prompt tokens / that time;
    - decode: tokens generated after every sequence had its first, over the time that took
      (aggregate over the batch), and the time to the first tokens;
    - throughput: requests and output tokens over the wall time of the whole workload.
    """
    kind, first, total = sample["workload"], sample["first_s"], sample["total_s"]
    if kind == "prefill":
        return {"ttft_s": first, "prefill_tok_s": sample["prompt_tokens"] / first}
    if kind == "decode":
        steps = sample["output_tokens"] - sample["requests"]
        return {"ttft_s": first, "decode_tok_s": steps / (total - first), "total_s": total}
    if kind == "throughput":
        return {"req_s": sample["requests"] / total, "output_tok_s": sample["output_tokens"] / total,
                "total_s": total}
    raise ValueError(f"unknown workload kind {kind!r}")


def summarize(samples: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Median of every metric per (workload, case, peer), in first-seen order."""
    groups: dict[tuple[str, str, str], list[dict[str, float]]] = {}
    for s in samples:
        groups.setdefault((s["workload"], s["case"], s["peer"]), []).append(metrics(s))
    rows = []
    for (kind, case, peer), ms in groups.items():
        median = {k: statistics.median(m[k] for m in ms) for k in ms[0]}
        rows.append({"workload": kind, "case": case, "peer": peer, "reps": len(ms),
                     "median": median})
    return rows


def ratios(summary: list[dict[str, Any]], base: str = "thinkstream") -> list[dict[str, Any]]:
    """thinkstream's median / each other peer's median of the headline metric."""
    ours = {(r["workload"], r["case"]): r for r in summary if r["peer"] == base}
    out = []
    for r in summary:
        mine = ours.get((r["workload"], r["case"]))
        if r["peer"] == base or mine is None:
            continue
        metric = HEADLINE[r["workload"]]
        out.append({"workload": r["workload"], "case": r["case"], "metric": metric,
                    "peer": r["peer"], "ratio": mine["median"][metric] / r["median"][metric]})
    return out


def build_report(raw: dict[str, Any], meta: dict[str, Any]) -> dict[str, Any]:
    summary = summarize(raw["samples"])
    return {"schema": SCHEMA, **meta, "peers": raw["peers"], "summary": summary,
            "ratios": ratios(summary), "samples": raw["samples"]}


def _fmt(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v:,.0f}" if v >= 100 else f"{v:,.1f}" if v >= 10 else f"{v:.3g}"


def table(report: dict[str, Any]) -> str:
    """Markdown: one row per (workload, case) with every peer's median headline metric
    (and time to first token for prefill), then the ratios, then peak memory."""
    peers = list(report["peers"])
    others = [p for p in peers if p != "thinkstream"]
    med = {(r["workload"], r["case"], r["peer"]): r["median"] for r in report["summary"]}
    rat = {(r["workload"], r["case"], r["peer"]): r["ratio"] for r in report["ratios"]}
    head = ["workload", "case", "metric", *peers, *(f"thinkstream/{p}" for p in others)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    cases = list(dict.fromkeys((r["workload"], r["case"]) for r in report["summary"]))
    for kind, case in cases:
        metric_list = [HEADLINE[kind]] + (["ttft_s"] if kind == "prefill" else [])
        for metric in metric_list:
            vals = [_fmt(med.get((kind, case, p), {}).get(metric)) for p in peers]
            rs = []
            for p in others:
                mine, theirs = med.get((kind, case, "thinkstream")), med.get((kind, case, p))
                if metric == HEADLINE[kind]:
                    rs.append(f"{rat[(kind, case, p)]:.2f}x" if (kind, case, p) in rat else "-")
                elif mine and theirs:  # lower is better: show the speed-up
                    rs.append(f"{theirs[metric] / mine[metric]:.2f}x")
                else:
                    rs.append("-")
            unit = UNITS[metric]
            lines.append(f"| {kind} | {case} | {metric} ({unit}) | " + " | ".join(vals + rs) + " |")
    rss = [_fmt(report["peers"][p].get("peak_rss_mb")) for p in peers]
    lines.append("| memory | peak RSS | MiB | " + " | ".join(rss + ["-"] * len(others)) + " |")
    return "\n".join(lines)


def write_json(report: dict[str, Any], path: str | Path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(report, indent=1, default=str) + "\n", encoding="utf-8")


def plot(report: dict[str, Any], path: str | Path) -> None:
    """One panel per workload kind: grouped bars of the headline metric per case and peer."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    peers = list(report["peers"])
    kinds = list(dict.fromkeys(r["workload"] for r in report["summary"]))
    fig, axes = plt.subplots(1, len(kinds), figsize=(5 * len(kinds), 4), squeeze=False)
    for ax, kind in zip(axes[0], kinds, strict=True):
        rows = [r for r in report["summary"] if r["workload"] == kind]
        cases = list(dict.fromkeys(r["case"] for r in rows))
        width = 0.8 / len(peers)
        for i, peer in enumerate(peers):
            vals = [next((r["median"][HEADLINE[kind]] for r in rows
                          if r["case"] == c and r["peer"] == peer), 0.0) for c in cases]
            ax.bar([j + i * width for j in range(len(cases))], vals, width, label=peer)
        ax.set_xticks([j + width * (len(peers) - 1) / 2 for j in range(len(cases))], cases)
        ax.set_title(f"{kind}: {HEADLINE[kind]}")
        ax.set_ylabel("tokens / s (median)")
        ax.legend()
    fig.suptitle(f"thinkstream bench - {Path(str(report.get('model', ''))).name}")
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def emit(rep: Any, report: dict[str, Any], args: Any) -> int:
    """Print ``rep.table(report)``; write the JSON to ``args.json`` and the plot to
    ``args.plot`` where given (``rep``: a report module with ``table`` / ``write_json`` /
    ``plot``: this one, ``think_report``, ``parallel_report``). Returns 0, the exit status
    of a benchmark command."""
    print(rep.table(report))
    if args.json:
        rep.write_json(report, args.json)
    if args.plot:
        rep.plot(report, args.plot)
    return 0


def positive_int(text: str) -> int:
    """An argparse type for counts (repetitions, steps, batch sizes, threads): 0 or less is
    a usage error naming the flag, not a ZeroDivisionError or a StopIteration later."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def add_run_arguments(p: Any, quick_help: str) -> None:
    """The options every report-writing benchmark shares: ``--seed``, ``--quick`` (a smoke
    run; ``quick_help`` says what it shrinks), ``--json`` and ``--plot``."""
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help=quick_help)
    p.add_argument("--json", default=None, help="write the report here")
    p.add_argument("--plot", default=None, help="write a PNG here (needs matplotlib)")


def write_one_thread_json(path: str | Path, reps: int, **results: Any) -> None:
    """The JSON of a one-thread, CPU-time micro-benchmark (``bench/gemm.py``,
    ``stack_rows.py``, ``verify_rows.py``): the CPU class it ran on, the clock, ``reps``
    and ``results``."""
    doc = {"cpu": cpu_record(), "threads": 1, "clock": "process CPU time", "reps": reps, **results}
    Path(path).write_text(json.dumps(doc, indent=1))

