"""Joins read every path through views, nothing recomputed: a ``parallel`` join equals a
dense pass with ParaThinker's mask and positions (paths apart, the summary sees all), a
``sequential`` join equals re-prefilling the concatenated text where that is exact (a one-
layer model: its keys depend on token and position only), and the paths' own tokens equal
the dense reference's greedy choices."""

from __future__ import annotations

import torch
from helpers.parallel import GREEDY, PROMPT, run_paths
from helpers.tiny import reference_logits, tiny_checkpoint

from thinkstream.config import EngineConfig
from thinkstream.engine.llm_engine import LLMEngine
from thinkstream.parallel.config import ParallelConfig
from thinkstream.parallel.paths import ParallelPaths


def _path_ids(paths: ParallelPaths) -> list[list[int]]:
    """Each path's tokens as the summary reads them: suffix, then sampled tokens."""
    return [p.seq.token_ids[1 : p.seq.num_tokens - 1] for p in paths.paths]


def _top_logprobs(out) -> list[dict[int, float]]:
    """Per sampled position, the 8 most likely tokens' logprobs (a peaked tiny model puts
    ~0 on the chosen token: the others tell positions apart)."""
    return [{t: e.logprob for t, e in pos.items()} for pos in out.logprobs]


def _close(got: list[dict[int, float]], want: list[dict[int, float]]) -> float:
    assert [g.keys() for g in got] == [w.keys() for w in want]
    return max(abs(g[t] - w[t]) for g, w in zip(got, want, strict=True) for t in g)


def test_parallel_join_equals_the_parathinker_reference() -> None:
    ckpt = tiny_checkpoint()
    cfg = ParallelConfig(paths=3, path_tokens=4, path_prompts=("A:", "Path two:", ""),
                         summary_prompt=" so:")
    final, paths, engine = run_paths(ckpt, cfg)
    out = final.outputs[0]
    assert len(out.token_ids) == 5 and out.num_path_tokens == 12
    lens = [len(p) for p in _path_ids(paths)]
    assert len(set(lens)) > 1  # paths of different lengths: the summary continues after the longest
    summary = paths.summary
    ids, pos, owner = list(PROMPT), list(range(len(PROMPT))), [-1] * len(PROMPT)
    f = len(PROMPT)
    for k, p in enumerate(_path_ids(paths)):
        ids += p
        pos += [f + j for j in range(len(p))]
        owner += [k] * len(p)
    tail = summary + out.token_ids[:-1]
    ids += tail
    pos += [f + max(lens) + j for j in range(len(tail))]
    owner += [-2] * len(tail)
    n = len(ids)
    allowed = torch.zeros(n, n, dtype=torch.bool)
    for q in range(n):
        for k in range(q + 1):
            allowed[q, k] = owner[k] == -1 or owner[q] == -2 or owner[k] == owner[q]
    logits = reference_logits(ckpt.config, ckpt.tensors, ids, pos, allowed)
    # every path's sampled tokens are the reference's greedy choices on its rows
    start = f
    for k, p in enumerate(_path_ids(paths)):
        sampled = paths.paths[k].token_ids
        first = start + len(p) - len(sampled) - 1  # the row predicting its first sample
        rows = [f - 1] if first < start else [first]
        rows = rows + list(range(start + len(p) - len(sampled), start + len(p) - 1))
        assert logits[rows].argmax(-1).tolist() == sampled[: len(rows)], k
        start += len(p)
    rows = list(range(n - len(tail) + len(summary) - 1, n))
    assert logits[rows].argmax(-1).tolist() == out.token_ids
    lp = logits[rows].log_softmax(-1)
    want = [{t: float(lp[i, t]) for t in pos} for i, pos in enumerate(_top_logprobs(out))]
    assert _close(_top_logprobs(out), want) < 1e-4


def test_sequential_join_equals_reprefilling_the_concatenated_text() -> None:
    ckpt = tiny_checkpoint("llama", num_layers=1)  # keys of token and position alone: exact
    cfg = ParallelConfig(paths=3, path_tokens=4, path_prompts=("A:", "Path two:", "x"),
                         summary_prompt=" so:", layout="sequential")
    final, paths, _ = run_paths(ckpt, cfg)
    out = final.outputs[0]
    text = PROMPT + [t for p in _path_ids(paths) for t in p] + paths.summary
    engine = LLMEngine(checkpoint=ckpt, config=EngineConfig(num_blocks=64, block_size=4))
    engine.add_request("plain", text, GREEDY)
    ref = None
    while ref is None:
        ref = next((o for o in engine.step() if o.finished), None)
    plain = ref.outputs[0]
    assert plain.token_ids == out.token_ids
    assert _close(_top_logprobs(out), _top_logprobs(plain)) < 1e-4
