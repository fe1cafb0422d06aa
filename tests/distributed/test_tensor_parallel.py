"""Tensor parallelism on CPU with gloo: two processes (rank 0 here, rank 1 spawned by the
engine) against one, on the tiny model. Each scenario compares every step's logits
(float32, within 1e-4) and the tokens (identical): greedy batches, n > 1, prefix-cache
hits, a streaming-input session, the overlap; and how heads split (replicated KV heads'
numerics: ``test_tp_ranks_in_threads``). The block pool is full again after each."""

from __future__ import annotations

import pytest
import torch
from helpers.tiny import tiny_checkpoint, tiny_config

from thinkstream import LLM, SamplingParams
from thinkstream.distributed.plan import local_config, plan_shards

GREEDY = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)
ENGINE = dict(dtype="float32", num_blocks=64, block_size=4, num_threads=1)
LONG = "The quick brown fox jumps over the lazy dog. What is the capital of France?"


class Recorder:
    """Keeps the logits of every step a runner executes (rank 0)."""

    def __init__(self, llm: LLM) -> None:
        self.logits: list[torch.Tensor] = []
        runner = llm.engine.runner
        execute = runner.execute

        def record(batch):
            out = execute(batch)
            self.logits.append(out.clone())
            return out

        runner.execute = record


@pytest.fixture(scope="module")
def pair():
    ckpt = tiny_checkpoint()
    one = LLM(checkpoint=ckpt, **ENGINE)
    two = LLM(checkpoint=ckpt, tensor_parallel_size=2, **ENGINE)
    yield one, two, Recorder(one), Recorder(two)
    two.engine.close()


def _same(pair, run) -> list:
    one, two, r1, r2 = pair
    r1.logits.clear()
    r2.logits.clear()
    a, b = run(one), run(two)
    assert len(r1.logits) == len(r2.logits) > 0
    for x, y in zip(r1.logits, r2.logits, strict=True):
        assert x.shape == y.shape
        torch.testing.assert_close(y, x, atol=1e-4, rtol=0)
    for llm in (one, two):
        llm.engine.check_integrity()
        assert llm.engine.kv.num_free_blocks == llm.engine.kv.num_blocks
    return [a, b]


def _tokens(outs) -> list[list[int]]:
    return [list(c.token_ids) for o in outs for c in o.outputs]


def test_greedy_batch_matches_one_rank(pair) -> None:
    prompts = ["The quick brown fox", "Paris is the capital", "0123456789 numbers"]
    a, b = _same(pair, lambda llm: llm.generate(prompts, GREEDY))
    assert _tokens(a) == _tokens(b)
    assert len(_tokens(a)[0]) == 12


def test_n_samples_match(pair) -> None:
    params = SamplingParams(n=3, temperature=4.0, seed=7, max_tokens=8, ignore_eos=True)
    a, b = _same(pair, lambda llm: llm.generate(["Streaming input arrives"], params))
    assert _tokens(a) == _tokens(b)
    assert len({tuple(t) for t in _tokens(a)}) > 1  # the samples differ from each other


def test_prefix_cache_hits_match(pair) -> None:
    def twice(llm):
        first = llm.generate([LONG], GREEDY)
        hits = llm.engine.kv.prefix_hit_rate
        second = llm.generate([LONG + " Paris"], GREEDY)
        assert llm.engine.kv.prefix_hit_rate > hits  # the second prompt reused cached blocks
        return first + second

    a, b = _same(pair, twice)
    assert _tokens(a) == _tokens(b)


def test_session_matches(pair) -> None:
    def session(llm):
        s = llm.open_session(messages=[], sampling_params=GREEDY)
        s.append("The quick brown ")
        s.append("fox jumps over the lazy dog.")
        s.replace("The quick brown fox jumps.")
        return [s.complete()]

    a, b = _same(pair, session)
    assert _tokens(a) == _tokens(b)


def test_overlapped_all_reduces_match(pair) -> None:
    """TokenWeave split: a prompt straddling the middle token, a batch, decode steps."""
    two = pair[1]
    two.engine.runner.overlap = True
    try:
        prompts = [LONG, "The quick brown fox", "Paris"]
        a, b = _same(pair, lambda llm: llm.generate(prompts, GREEDY))
        assert _tokens(a) == _tokens(b)
    finally:
        two.engine.runner.overlap = False


def test_fewer_kv_heads_than_ranks_replicates_them() -> None:
    # (the numerics: test_tp_ranks_in_threads, "one KV head, replicated")
    cfg = tiny_config("llama", num_kv_heads=1)
    shards = plan_shards(cfg, 2)
    assert [s.kv_heads for s in shards] == [(0, 1), (0, 1)]
    assert [s.q_heads for s in shards] == [(0, 2), (2, 4)]
    assert local_config(cfg, shards[1]).num_kv_heads == 1


def test_uneven_split_follows_kv_groups() -> None:
    # SmolLM2's shape: 9 heads in 3 KV groups, 1536 features, 49,152 tokens, over 2 ranks
    cfg = tiny_config("llama", num_heads=9, num_kv_heads=3)
    shards = plan_shards(cfg, 2)
    assert [s.kv_heads for s in shards] == [(0, 2), (2, 3)]
    assert [s.q_heads for s in shards] == [(0, 6), (6, 9)]
    with pytest.raises(ValueError, match="attention heads"):
        plan_shards(cfg, 16)
    with pytest.raises(ValueError, match="KV heads"):
        plan_shards(cfg, 4)  # 3 KV heads neither cover nor divide 4 ranks
