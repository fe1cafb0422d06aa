"""The native decoder stack (``models/fused_decode.py``, ``kernels/decoder.c``): for every
architecture (Llama, Qwen2's q/k/v bias, Qwen3's q/k norm, Gemma 3's sandwich norms,
GELU, sliding window and two RoPE bases) a GGUF-block model gives the eager layers' tokens
and log-probabilities with the stack on: decode batches, short chunks, fresh short prompts,
steps mixing them, padded batches of chunks (speculative verification), under a tiny pool
too; the stack leaves the steps it does not take to the eager layers."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from helpers.tiny import tiny_gguf_checkpoint

from thinkstream import LLM, SamplingParams
from thinkstream.attention.metadata import Decode, Prefill, ShortBatch, ShortChunk
from thinkstream.kernels.gguf import load_gguf_kernels
from thinkstream.models.gguf_linear import ALL_ROWS

pytestmark = pytest.mark.skipif(load_gguf_kernels() is None, reason="the native kernels cannot be built here")
ARCHS = ("llama", "qwen2", "qwen3", "gemma3")
gguf_checkpoint = tiny_gguf_checkpoint  # the tiny checkpoint with its matrices as GGUF blocks


def run(arch: str, fused: bool, prompts, params, ckpt=None, **engine):
    """Outputs, the group kinds of the steps the native stack ran, and the engine."""
    llm = LLM(checkpoint=ckpt or gguf_checkpoint(arch), dtype="float32", quantization="gguf", block_size=4,
              **{"num_blocks": 64, "max_num_seqs": 4, **engine})
    model = llm.engine.model
    assert model.fused is not None
    kinds: list[str] = []
    native = model.fused

    def counted(x, positions, meta):
        out = native(x, positions, meta)
        if out is not None:
            kinds.append(tuple(type(g).__name__ for g in meta.groups))
        return out

    model.fused = counted if fused else None
    outs = llm.generate(prompts, params)
    assert llm.engine.check_integrity() is None
    assert llm.engine.kv.num_free_blocks == llm.engine.kv.num_blocks
    return outs, kinds, llm


def assert_same(a, b) -> None:
    for x, y in zip(a, b, strict=True):
        assert x.outputs[0].token_ids == y.outputs[0].token_ids
        for px, py in zip(x.outputs[0].logprobs, y.outputs[0].logprobs, strict=True):
            assert px.keys() == py.keys()
            assert np.allclose([p.logprob for p in px.values()], [p.logprob for p in py.values()], atol=2e-5)


@pytest.mark.parametrize("arch", ARCHS)
def test_decode_batch_equals_the_eager_layers(arch: str) -> None:
    """Three sequences decoding together (one a 21-token prompt: past Gemma's window of 8)."""
    prompts = [[5, 9, 14, 3], list(range(3, 24)), [7, 7, 8]]
    params = SamplingParams(temperature=0, max_tokens=10, ignore_eos=True, logprobs=3)
    eager, none, _ = run(arch, False, prompts, params)
    fused, kinds, _ = run(arch, True, prompts, params)
    assert none == []
    assert kinds.count(("Decode",)) >= 9
    assert_same(eager, fused)


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_short_chunk_after_a_cached_prefix(arch: str) -> None:
    """A second prompt sharing the first's blocks prefills its last tokens as one short chunk
    over the cached prefix: the stack runs that chunk with the chunk's causal mask."""
    shared = list(range(10, 26))
    params = SamplingParams(temperature=0, max_tokens=6, ignore_eos=True, logprobs=2)
    outs = {}
    for fused in (False, True):
        llm = LLM(checkpoint=gguf_checkpoint(arch), dtype="float32", quantization="gguf",
                  block_size=4, num_blocks=64, max_num_seqs=1, enable_prefix_caching=True)
        model, native, kinds = llm.engine.model, llm.engine.model.fused, []

        def counted(x, positions, meta, native=native, kinds=kinds):
            out = native(x, positions, meta)
            if out is not None:
                kinds.append((type(meta.groups[0]), x.shape[0]))
            return out

        model.fused = counted if fused else None
        first = llm.generate([shared], params)
        second = llm.generate([shared + [40, 41, 42, 43, 44]], params)
        outs[fused] = (first, second, kinds)
        assert llm.engine.check_integrity() is None
    assert (ShortChunk, 5) in outs[True][2] and (Decode, 1) in outs[True][2]
    assert outs[False][2] == []
    assert_same(outs[False][0], outs[True][0])
    assert_same(outs[False][1], outs[True][1])


def test_tiny_pool_preemption_gives_the_same_tokens() -> None:
    """Eight sequences in 12 blocks of 4: preempted and recomputed mid-decode, same tokens."""
    prompts = [[3 + i, 9, 14 + i, 3] for i in range(8)]
    params = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True, logprobs=1)
    eager, _, _ = run("llama", False, prompts, params, num_blocks=12, max_num_seqs=8)
    fused, kinds, llm = run("llama", True, prompts, params, num_blocks=12, max_num_seqs=8)
    assert llm.engine.num_preemptions > 0 and ("Decode",) in kinds
    assert_same(eager, fused)


def test_steps_it_does_not_take() -> None:
    """A prompt of more queries than the stack's attention takes (``max_queries``, lowered
    to 16 here: a 17-token prompt): None, x untouched; then decode. The limits: any rows
    and queries with the kernels' GEMM, 16 without."""
    llm = LLM(checkpoint=gguf_checkpoint("llama"), dtype="float32", quantization="gguf",
              block_size=4, num_blocks=64)
    model = llm.engine.model
    seen: list[tuple[int, bool]] = []
    native = model.fused
    gemm = model.layers[0].attn.qkv_proj.kernels.gemm
    assert (native.max_rows, native.max_queries) == ((ALL_ROWS, ALL_ROWS) if gemm else (16, 16))
    native.max_queries = 16

    def spy(x, positions, meta):
        before = x.clone()
        out = native(x, positions, meta)
        if out is None:
            assert torch.equal(x, before)
        seen.append((x.shape[0], out is not None))
        return out

    model.fused = spy
    llm.generate([list(range(3, 20))], SamplingParams(temperature=0, max_tokens=2, ignore_eos=True))
    assert seen[0] == (17, False) and seen[1] == (1, True)


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_big_steps_equal_the_eager_layers(arch: str) -> None:
    """The sizes the GEMM opened (kernels with it only): 32 sequences' fresh prompts in one
    step (96 rows: 32 Prefill groups), then decode steps of 32 rows; a 160-token prompt
    arriving mid-decode (Decode + a Prefill group of 160 queries, past Gemma's window of 8)
    and its decode."""
    params = SamplingParams(temperature=0, max_tokens=5, ignore_eos=True, logprobs=2)
    late = SamplingParams(temperature=0, max_tokens=3, ignore_eos=True, logprobs=2)
    prompts = [[3 + i, 9, 14 + i % 5] for i in range(32)]
    got = {}
    for fused in (False, True):
        llm = LLM(checkpoint=gguf_checkpoint(arch), dtype="float32", quantization="gguf",
                  block_size=4, num_blocks=256, max_num_seqs=33)
        model, native, rows = llm.engine.model, llm.engine.model.fused, []
        if not model.layers[0].attn.qkv_proj.kernels.gemm:
            pytest.skip("the portable kernels keep the stack at 16 rows")

        def counted(x, positions, meta, native=native, rows=rows):
            out = native(x, positions, meta)
            if out is not None:
                rows.append((x.shape[0], tuple(type(g).__name__ for g in meta.groups)))
            return out

        model.fused = counted if fused else None
        eng = llm.engine
        for i, p in enumerate(prompts):
            eng.add_request(f"r{i:02d}", p, params)
        outs = {}
        for step in range(12):
            if step == 2:
                eng.add_request("late", [5 + i % 90 for i in range(160)], late)
            for o in eng.step():
                if o.finished:
                    outs[o.request_id] = o
        while eng.has_unfinished_requests():
            for o in eng.step():
                if o.finished:
                    outs[o.request_id] = o
        assert eng.check_integrity() is None and eng.kv.num_free_blocks == eng.kv.num_blocks
        assert len(outs) == 33
        got[fused] = ([outs[k] for k in sorted(outs)], rows)
    assert got[False][1] == []
    kinds = got[True][1]
    assert kinds[0] == (96, ("Prefill",) * 32)
    assert (32, ("Decode",)) in kinds and (192, ("Prefill", "Decode")) in kinds and (33, ("Decode",)) in kinds
    assert_same(got[False][0], got[True][0])


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_mixed_groups_in_one_step(arch: str) -> None:
    """A request arriving while another decodes: one step holds the decode row and the fresh
    3-token prompt (Decode + Prefill groups, the decode row gathered by its index)."""
    params = SamplingParams(temperature=0, max_tokens=6, ignore_eos=True, logprobs=2)
    got = {}
    for fused in (False, True):
        llm = LLM(checkpoint=gguf_checkpoint(arch), dtype="float32", quantization="gguf",
                  block_size=4, num_blocks=64)
        eng, native, kinds = llm.engine, llm.engine.model.fused, []

        def counted(x, positions, meta, native=native, kinds=kinds):
            out = native(x, positions, meta)
            if out is not None:
                kinds.append(tuple(sorted(type(g).__name__ for g in meta.groups)))
            return out

        eng.model.fused = counted if fused else None
        eng.add_request("a", list(range(20, 30)), params)
        for _ in range(3):
            eng.step()
        eng.add_request("b", [7, 8, 9], params)
        outs = {}
        while eng.has_unfinished_requests():
            for o in eng.step():
                if o.finished:
                    outs[o.request_id] = o
        got[fused] = (outs, kinds)
        assert eng.check_integrity() is None
    assert ("Decode", "Prefill") in got[True][1]
    assert_same([got[False][0]["a"], got[False][0]["b"]], [got[True][0]["a"], got[True][0]["b"]])


def test_speculative_verification_of_two_sequences_padded() -> None:
    """n-gram drafts for two repetitive prompts: their verification chunks are one batch
    (ShortBatch) on the stack, in some steps padded (drafts of different lengths: the
    filler queries' outputs dropped); tokens and log-probs are the eager layers'."""
    prompts = [[5, 6, 7, 8, 9] * 3, [3, 4, 3, 4, 3]]
    params = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True, logprobs=5)
    spec = {"method": "ngram", "ngram_min": 1, "num_speculative_tokens": 3, "adaptive": False}
    eager, _, _ = run("llama", False, prompts, params, speculative=spec)
    llm = LLM(checkpoint=gguf_checkpoint("llama"), dtype="float32", quantization="gguf",
              block_size=4, num_blocks=64, speculative=spec)
    native, padded = llm.engine.model.fused, []

    def counted(x, positions, meta):
        out = native(x, positions, meta)
        padded.extend(out is not None and g.take.numel() < g.rows.numel()
                      for g in meta.groups if isinstance(g, ShortBatch))
        return out

    llm.engine.model.fused = counted
    fused = llm.generate(prompts, params)
    assert any(padded) and llm.engine.check_integrity() is None
    assert_same(eager, fused)


@pytest.mark.parametrize("arch", ["qwen2", "gemma3"])
def test_two_threads_compute_what_one_does(arch: str) -> None:
    """The stack's threads split weight rows, sequences and activation columns, never a sum:
    two threads give one thread's log-probabilities bit for bit (decode batch and chunks)."""
    prompts = [[5, 9, 14, 3], list(range(3, 24)), [7, 7, 8]]
    params = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True, logprobs=4)
    one, kinds, _ = run(arch, True, prompts, params, num_threads=1)
    two, kinds2, _ = run(arch, True, prompts, params, num_threads=2)
    assert kinds == kinds2 and ("Decode",) in kinds
    for x, y in zip(one, two, strict=True):
        assert x.outputs[0].token_ids == y.outputs[0].token_ids
        assert [{t: p.logprob for t, p in d.items()} for d in x.outputs[0].logprobs] == \
            [{t: p.logprob for t, p in d.items()} for d in y.outputs[0].logprobs]


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_two_threads_split_one_sequences_queries(arch: str) -> None:
    """One sequence alone: its prompt's chunks (16 queries over a growing context) are split
    between two threads by query (balanced by the keys each sees), and every query's output
    is one thread's bit for bit; the tokens are the eager layers'."""
    prompts = [list(range(3, 47))]
    params = SamplingParams(temperature=0, max_tokens=6, ignore_eos=True, logprobs=4)
    one, kinds, _ = run(arch, True, prompts, params, num_threads=1,
                        max_num_batched_tokens=16)
    two, kinds2, _ = run(arch, True, prompts, params, num_threads=2, max_num_batched_tokens=16)
    eager, _, _ = run(arch, False, prompts, params, num_threads=2, max_num_batched_tokens=16)
    assert kinds == kinds2 and len(kinds) >= 3 + 5  # three prompt chunks, then decode
    assert one[0].outputs[0].token_ids == two[0].outputs[0].token_ids
    assert [{t: p.logprob for t, p in d.items()} for d in one[0].outputs[0].logprobs] == \
        [{t: p.logprob for t, p in d.items()} for d in two[0].outputs[0].logprobs]
    assert_same(two, eager)


def test_drafts_never_push_a_step_off_the_stack() -> None:
    """Twelve sequences decoding with n-gram drafts of up to 3 tokens under a stack of 16
    rows (the portable kernels' limit, set here; with the GEMM it takes any): the drafts are
    trimmed to 16 rows (12 real tokens + 4 drafts), so no decode step falls to the eager
    layers; some drafts are still made and the tokens are plain greedy's."""
    prompts = [[5 + i, 6, 7, 8, 9] * 3 for i in range(12)]
    params = SamplingParams(temperature=0, max_tokens=10, ignore_eos=True)
    spec = {"method": "ngram", "ngram_min": 1, "num_speculative_tokens": 3, "adaptive": False}
    llm = LLM(checkpoint=gguf_checkpoint("llama"), dtype="float32", quantization="gguf",
              block_size=4, num_blocks=256, max_num_seqs=12, speculative=spec)
    native, decode_rows = llm.engine.model.fused, []

    def counted(x, positions, meta):
        if not any(isinstance(g, Prefill) for g in meta.groups):
            decode_rows.append(x.shape[0])
        return native(x, positions, meta)

    native.max_rows = 16
    counted.max_rows = native.max_rows  # what the speculative planner reads
    llm.engine.model.fused = counted
    got = llm.generate(prompts, params)
    plain, _, _ = run("llama", True, prompts, params, max_num_seqs=12, num_blocks=256)
    assert [o.outputs[0].token_ids for o in got] == [o.outputs[0].token_ids for o in plain]
    assert max(decode_rows) == 16 and llm.engine.speculative.stats.num_draft_tokens > 0


def test_compile_decode_leaves_the_stack_in_place() -> None:
    """compile_decode on a GGUF model: no compiled graph (a ctypes call cannot be traced and
    the stack is the faster of the two); decode steps run on the stack."""
    prompts = [[5, 9, 14, 3]]
    params = SamplingParams(temperature=0, max_tokens=4, ignore_eos=True)
    outs, kinds, llm = run("llama", True, prompts, params, compile_decode=True)
    assert llm.engine.runner.decode_graph is None and ("Decode",) in kinds


def test_info_says_whether_the_stack_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    from thinkstream.cli import _native_stack
    from thinkstream.models.precision import Precision

    cfg = gguf_checkpoint("llama").config
    gguf = Precision("float32", "gguf", "float32", "test")
    assert _native_stack(gguf, cfg, "cpu")
    assert not _native_stack(Precision("bfloat16", None, "bfloat16", "test"), cfg, "cpu")
    assert not _native_stack(gguf, cfg, "cuda")
    monkeypatch.setenv("THINKSTREAM_NATIVE", "0")
    assert not _native_stack(gguf, cfg, "cpu")


def test_three_threads_split_a_long_contexts_keys() -> None:
    """One sequence over 1,100 keys with threads that its two key/value heads cannot share
    evenly: chunks of 64 queries and decode rows split the keys by 512-key segments
    (``fq_attention_keys`` / ``_merge``), and the log-probabilities are one thread's bit for
    bit, the tokens the eager layers'."""
    prompts = [[3 + (7 * i) % 90 for i in range(1100)]]
    params = SamplingParams(temperature=0, max_tokens=4, ignore_eos=True, logprobs=4)
    base = gguf_checkpoint("llama")
    long = dataclasses.replace(base, config=dataclasses.replace(base.config, max_position_embeddings=2048))
    cfg = {"num_blocks": 300, "max_num_batched_tokens": 64, "ckpt": long}
    one, kinds, _ = run("llama", True, prompts, params, num_threads=1, **cfg)
    three, kinds3, _ = run("llama", True, prompts, params, num_threads=3, **cfg)
    eager, _, _ = run("llama", False, prompts, params, num_threads=1, **cfg)
    assert kinds == kinds3 and len(kinds) >= 1100 // 64 + 3
    assert [{t: p.logprob for t, p in d.items()} for d in one[0].outputs[0].logprobs] == \
        [{t: p.logprob for t, p in d.items()} for d in three[0].outputs[0].logprobs]
    assert_same(one, eager)
