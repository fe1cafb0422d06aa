"""Compiled decode (worker/graphs.py) against the eager step on the tiny model: the buckets, the
padded step that CUDA graphs capture (run eagerly here), and one real torch.compile run.
Batches 3 and 5 are not bucket sizes, so rows and context are padded."""

from __future__ import annotations

import pytest
import torch
from helpers.runs import run_staggered
from helpers.tiny import random_tensors, tiny_checkpoint, tiny_config

from thinkstream.attention.metadata import SeqSlice, allocate_kv_caches, build_attention_metadata
from thinkstream.config import EngineConfig
from thinkstream.engine.llm_engine import LLMEngine
from thinkstream.models.registry import build_model
from thinkstream.sampling_params import SamplingParams
from thinkstream.worker.graphs import (
    CompiledDecode,
    GraphDecode,
    batch_buckets,
    context_bucket,
    plain_decode,
)

BS = 4
SLOTS = 64 * BS  # the scratch slot is SLOTS, one past the pool
PROMPTS = [[5, 6, 7, 8, 9], [100, 200, 300, 12, 13, 14, 15, 16, 17, 18, 19], [42],
           [3, 1, 4, 1, 5, 9, 2, 6], [300, 301, 302, 303, 304, 305, 306, 307, 308, 309]]


def test_buckets() -> None:
    assert batch_buckets(64) == (1, 2, 4, 8, 16, 24, 32, 40, 48, 56, 64)
    assert batch_buckets(5) == (1, 2, 4, 5)
    assert batch_buckets(1) == (1,)
    assert [context_bucket(n) for n in (1, 64, 65, 300)] == [64, 64, 128, 512]


def _decode_twice(arch: str, batch: int, executor, seed: int = 5):
    """Prefill ``batch`` prompts into two identical caches, then one decode step each way:
    eager on the first, ``executor(model, caches)`` on the second."""
    cfg = tiny_config(arch)
    model = build_model(cfg, random_tensors(cfg, seed=seed))
    a, b = (allocate_kv_caches(cfg.num_layers, SLOTS + 1, cfg.num_kv_heads, cfg.head_dim,
                               torch.float32, "cpu") for _ in range(2))
    prompts = PROMPTS[:batch]
    tables = [[10 + 4 * i + j for j in range(4)] for i in range(batch)]
    slices = [SeqSlice(t, 0, len(p)) for t, p in zip(tables, prompts, strict=True)]
    ids = torch.tensor([x for p in prompts for x in p])
    pos = torch.cat([torch.arange(len(p)) for p in prompts])
    with torch.inference_mode():
        for caches in (a, b):
            model(ids, pos, build_attention_metadata(slices, BS, caches, cfg.sliding_window))
        step = [SeqSlice(t, len(p), 1) for t, p in zip(tables, prompts, strict=True)]
        ids = torch.tensor([7 * i + 11 for i in range(batch)])
        pos = torch.tensor([len(p) for p in prompts])
        meta_a = build_attention_metadata(step, BS, a, cfg.sliding_window)
        eager = model.compute_logits(model(ids, pos, meta_a))
        meta_b = build_attention_metadata(step, BS, b, cfg.sliding_window)
        assert plain_decode(meta_b) is not None
        got = executor(model, b)(ids, pos, meta_b)
    return eager, got, a, b


def _assert_same(eager, got, a, b) -> None:
    assert got.shape == eager.shape
    assert torch.allclose(got, eager, atol=1e-5, rtol=1e-5), (got - eager).abs().max()
    assert torch.equal(got.argmax(-1), eager.argmax(-1))
    for (ka, va), (kb, vb) in zip(a, b, strict=True):  # real slots alike; padding wrote scratch only
        assert torch.allclose(ka[:SLOTS], kb[:SLOTS], atol=1e-6)
        assert torch.allclose(va[:SLOTS], vb[:SLOTS], atol=1e-6)


@pytest.mark.parametrize("arch", ["llama", "gemma3"])  # gemma3: sliding-window masks too
@pytest.mark.parametrize("batch", [3, 5])
def test_padded_step_equals_eager(arch: str, batch: int) -> None:
    def padded(model, caches):
        return GraphDecode(model, caches, SLOTS, (1, 2, 4, 8), torch.device("cpu"), capture=False)

    eager, got, a, b = _decode_twice(arch, batch, padded)
    _assert_same(eager, got, a, b)
    assert any(k[SLOTS].abs().sum() > 0 for k, _ in b)  # the padded rows did write the scratch
    assert all(k[SLOTS].abs().sum() == 0 for k, _ in a)


def test_graph_decode_needs_scratch_slot() -> None:
    cfg = tiny_config()
    caches = allocate_kv_caches(cfg.num_layers, SLOTS, cfg.num_kv_heads, cfg.head_dim, torch.float32, "cpu")
    with pytest.raises(ValueError, match="scratch"):
        GraphDecode(build_model(cfg, random_tensors(cfg)), caches, SLOTS, (1,), torch.device("cpu"))


def _run(engine: LLMEngine, late: int = 3) -> list[list[int]]:
    """Three requests, two more after ``late`` steps (a mixed prefill + decode step)."""
    params = SamplingParams(temperature=0.0, max_tokens=10, ignore_eos=True)
    return run_staggered(engine, PROMPTS[:3], PROMPTS[3:], params, late)


class _Counting:
    """Wraps a decode executor; counts the steps it ran (not None)."""

    def __init__(self, inner) -> None:
        self.inner, self.graph_steps = inner, 0

    def __call__(self, *args):
        out = self.inner(*args)
        self.graph_steps += out is not None
        return out


def _engine(compile_decode: bool) -> LLMEngine:
    cfg = EngineConfig(block_size=BS, num_blocks=64, compile_decode=compile_decode)
    return LLMEngine(config=cfg, checkpoint=tiny_checkpoint())


def test_engine_padded_path_equals_eager() -> None:
    engine = _engine(compile_decode=True)
    r = engine.runner
    scratch = r.kv_caches[0][0].shape[0] - 1
    r.decode_graph = counting = _Counting(
        GraphDecode(engine.model, r.kv_caches, scratch, (1, 2, 4, 8), r.device, capture=False))
    assert _run(engine) == _run(_engine(compile_decode=False))
    assert counting.graph_steps > 10


@pytest.mark.slow  # torch.compile: 8 s on a quiet machine, 164 s seen on a busy one
def test_compiled_decode_equals_eager() -> None:
    """The one test that compiles (about 10 s): CPU inductor, dynamic batch and context."""
    def compiled(model, caches):
        return CompiledDecode(model)

    for batch, seed in ((3, 5), (5, 5), (5, 6)):  # seed 6: other weights, same graph reused
        _assert_same(*_decode_twice("llama", batch, compiled, seed))
    engine = _engine(compile_decode=True)
    engine.runner.decode_graph = counting = _Counting(engine.runner.decode_graph)
    assert _run(engine) == _run(_engine(compile_decode=False))
    assert counting.graph_steps > 10


def test_cli_flag_sets_compile_decode() -> None:
    import argparse

    from thinkstream.cli import add_engine_args, engine_config

    p = argparse.ArgumentParser()
    add_engine_args(p)
    assert engine_config(p.parse_args(["--compile-decode"])).compile_decode is True
    assert engine_config(p.parse_args([])).compile_decode is False
