"""``thinkstream bench parallel --quick`` on the tiny model: every part it times runs, the
block counts are exact (the prompt held once by the paths and by ``n = N``, N times by
independent requests), and the report carries the CPU class and the targets."""

from __future__ import annotations

import argparse
import json

from helpers.tiny import tiny_checkpoint

from thinkstream.bench import parallel


def test_quick_parallel_bench(tmp_path) -> None:
    p = argparse.ArgumentParser()
    parallel.add_arguments(p)
    out = tmp_path / "p.json"
    args = p.parse_args(["--quick", "--dtype", "float32", "--parts", "wall,join,blocks",
                         "--json", str(out)])
    assert parallel.run(args, checkpoint=tiny_checkpoint()) == 0
    report = json.loads(out.read_text())
    assert [r["paths"] for r in report["wall"]] == [1, 2, 4]
    assert [r["path_tokens"] for r in report["join"]] == [16, 32]
    b = report["blocks"]  # 256-token prompt = 16 blocks; 8 paths of 8 tokens, 1 block each
    assert (b["views"], b["fork_n"], b["independent"]) == (16 + 8, 16 + 8, 8 * 17)
    assert "cpu" in report["machine"] and set(report["targets"]) == {
        "join_flat", "join_vs_reprefill"}
