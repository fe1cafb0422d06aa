"""A bfloat16 KV cache under a float32 model (``EngineConfig.kv_cache_dtype``).

The engine's log-probabilities equal a dense float32 reference whose keys (after RoPE) and
values are rounded to bfloat16 (``reference_logits(kv_dtype=...)``), on the eager layers
and on the native decoder stack (a GGUF-block model, ``kernels/decoder.c`` rounding the
keys and values it stores): prefill, chunked prefill, decode, a prefix-cache hit and a
streaming session. The same reference without rounding is far off, so the comparison
sees the cache's dtype. Greedy tokens agree between the two stacks and thread counts; the
same ``kv_cache_memory`` holds exactly twice the blocks; bad values raise ValueError; an
abort leaves the pool full."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from helpers.tiny import reference_logits, tiny_checkpoint, tiny_gguf_checkpoint

from thinkstream import LLM, EngineConfig, SamplingParams
from thinkstream.kernels.gguf import load_gguf_kernels
from thinkstream.worker.runner import kv_bytes_per_block

NATIVE = load_gguf_kernels() is not None
STACKS = ["eager", pytest.param("native", marks=pytest.mark.skipif(
    not NATIVE, reason="the native kernels cannot be built here"))]
PARAMS = SamplingParams(temperature=0, max_tokens=6, ignore_eos=True, logprobs=5, prompt_logprobs=5)
PROMPT = [5, 9, 14, 3, 100, 200, 33, 7, 8, 9, 10, 41, 77, 150, 12, 3, 19, 260, 4]  # 19 tokens
TOL = 2e-3  # rounding flips where float32 sums differ in the last bit; float32 KV: > 1e-2 off


def make_llm(stack: str, kv: str = "bfloat16", **engine) -> LLM:
    """A tiny Llama, float32, KV cache ``kv``: dense eager layers, or GGUF blocks on the
    native stack (its linears within 1e-4 of the dequantized float32 weights)."""
    ckpt = tiny_gguf_checkpoint("llama") if stack == "native" else tiny_checkpoint("llama")
    llm = LLM(checkpoint=ckpt, dtype="float32", quantization="gguf" if stack == "native" else None,
              kv_cache_dtype=kv, **{"block_size": 4, "num_blocks": 64, "max_num_batched_tokens": 64,
                                    **engine})
    model = llm.engine.model
    assert (model.fused is not None) == (stack == "native")
    assert llm.engine.runner.kv_caches[0][0].dtype == getattr(torch, kv)
    if model.fused is not None:  # count the steps the stack runs (None: left to the layers)
        native, llm.native_steps = model.fused, []

        def counted(x, positions, meta):
            out = native(x, positions, meta)
            llm.native_steps.append(out is not None)
            return out
        model.fused = counted
    return llm


def max_error(llm: LLM, out, kv_dtype: torch.dtype | None = torch.bfloat16) -> float:
    """Largest |logprob - reference| over every prompt and output position's top 5 (the
    reference: one dense pass over prompt + output, K/V rounded through ``kv_dtype``)."""
    prompt, toks = list(out.prompt_token_ids), out.outputs[0].token_ids
    native = llm.engine.model.fused is not None
    ckpt = tiny_gguf_checkpoint("llama") if native else tiny_checkpoint("llama")
    ref = reference_logits(ckpt.config, ckpt.tensors, prompt + toks[:-1], kv_dtype=kv_dtype)
    ref = ref.log_softmax(-1)
    assert toks == ref[len(prompt) - 1 :].argmax(-1).tolist()
    rows = [(i - 1, lp) for i, lp in enumerate(out.prompt_logprobs or []) if lp is not None]
    rows += [(len(prompt) - 1 + i, lp) for i, lp in enumerate(out.outputs[0].logprobs)]
    assert len(rows) == (len(prompt) - 1 if out.prompt_logprobs else 0) + len(toks)
    return max(abs(p.logprob - float(ref[r, t])) for r, lp in rows for t, p in lp.items())


def assert_rounded(llm: LLM, out) -> None:
    assert max_error(llm, out) < TOL
    assert max_error(llm, out, None) > 5 * TOL  # the float32-KV reference is far off
    if hasattr(llm, "native_steps"):  # every step of it ran on the native stack
        assert llm.native_steps and all(llm.native_steps)


@pytest.mark.parametrize("stack", STACKS)
def test_prefill_decode_and_chunks_equal_the_rounded_reference(stack: str) -> None:
    """A whole prompt, the same prompt in 5-token chunks, then decode."""
    for chunk in (64, 5):
        llm = make_llm(stack, max_num_batched_tokens=chunk, enable_prefix_caching=False)
        assert_rounded(llm, llm.generate([PROMPT], PARAMS)[0])
        assert llm.engine.check_integrity() is None


@pytest.mark.parametrize("stack", STACKS)
def test_prefix_cache_hit_equals_the_rounded_reference(stack: str) -> None:
    """The second prompt reads the first's cached blocks (bfloat16 as stored) and computes
    only its last tokens (no prompt log-probabilities: they would recompute the prompt)."""
    llm = make_llm(stack)
    assert_rounded(llm, llm.generate([PROMPT], PARAMS)[0])
    params = dataclasses.replace(PARAMS, prompt_logprobs=None)
    hits = llm.engine.kv.prefix_hits
    second = llm.generate([PROMPT[:16] + [21, 22, 23]], params)[0]
    assert llm.engine.kv.prefix_hits - hits == 16  # four full blocks of 4
    assert_rounded(llm, second)
    assert llm.engine.check_integrity() is None


@pytest.mark.parametrize("stack", STACKS)
def test_streaming_session_equals_the_rounded_reference(stack: str) -> None:
    """Input appended in pieces (each prefilled as it arrives), closed with a last piece."""
    llm = make_llm(stack)
    s = llm.open_session(PROMPT[:3], sampling_params=PARAMS)
    for i in range(3, 15, 4):
        s.append(PROMPT[i : i + 4])
    out = s.complete(PROMPT[15:])
    assert list(out.prompt_token_ids) == PROMPT
    assert_rounded(llm, out)
    assert llm.engine.check_integrity() is None
    assert llm.engine.kv.num_free_blocks == llm.engine.kv.num_blocks


@pytest.mark.skipif(not NATIVE, reason="the native kernels cannot be built here")
def test_greedy_tokens_alike_on_both_stacks_and_thread_counts() -> None:
    """Four prompts decoding together: eager layers, native stack with 1 and 2 threads."""
    prompts = [PROMPT, PROMPT[3:11], [7, 7, 8], list(range(30, 52))]
    params = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)
    tokens = []
    for stack, threads in (("eager", 1), ("native", 1), ("native", 2)):
        llm = make_llm(stack, num_threads=threads)
        tokens.append([o.outputs[0].token_ids for o in llm.generate(prompts, params)])
        assert llm.engine.kv.num_free_blocks == llm.engine.kv.num_blocks
    assert tokens[0] == tokens[1] == tokens[2]


def test_the_same_memory_holds_twice_the_blocks() -> None:
    ckpt = tiny_checkpoint("llama")
    f32 = kv_bytes_per_block(ckpt.config, 4, torch.float32)
    engines = {kv: LLM(checkpoint=ckpt, dtype="float32", quantization=None, block_size=4,
                       kv_cache_memory=10 * f32, kv_cache_dtype=kv).engine
               for kv in ("auto", "float32", "bfloat16")}
    assert {kv: e.num_kv_blocks for kv, e in engines.items()} == {
        "auto": 10, "float32": 10, "bfloat16": 20}
    precision = engines["bfloat16"].precision  # what ``thinkstream info`` prints
    assert precision.kv_dtype == "bfloat16" and precision.dtype == "float32"
    assert precision.reason == "dtype float32 as given; KV cache bfloat16 (as given)"
    assert engines["auto"].precision.kv_dtype == "float32"


def test_bad_values_raise_naming_the_field() -> None:
    with pytest.raises(ValueError, match="kv_cache_dtype must be one of auto, float32, bfloat16"):
        EngineConfig(kv_cache_dtype="float8")
    with pytest.raises(ValueError, match="kv_cache_dtype"):
        LLM(checkpoint=tiny_checkpoint("llama"), kv_cache_dtype="int8")


def test_abort_leaves_the_pool_full() -> None:
    llm = make_llm("eager")
    engine = llm.engine
    engine.add_request("a", PROMPT, SamplingParams(temperature=0, max_tokens=50, ignore_eos=True))
    engine.add_request("b", PROMPT[:7], SamplingParams(temperature=0, max_tokens=50, ignore_eos=True))
    for _ in range(3):
        engine.step()
    assert engine.kv.num_free_blocks < engine.kv.num_blocks
    engine.abort("a")
    engine.abort("b")
    assert engine.check_integrity() is None
    assert engine.kv.num_free_blocks == engine.kv.num_blocks



def test_a_draft_model_keeps_its_kv_in_the_cache_dtype() -> None:
    """Speculative decoding with a draft model (the target's first layer): the draft's own
    caches are bfloat16 too, the pool is sized by both models' bfloat16 bytes, and greedy
    output is the target's without speculation."""
    from thinkstream.speculative.config import SpeculativeConfig

    target = tiny_checkpoint(tie_word_embeddings=False)
    small = tiny_checkpoint(num_layers=1, tie_word_embeddings=False)
    budget = 1 << 20
    params = SamplingParams(temperature=0, max_tokens=16, ignore_eos=True)
    spec = SpeculativeConfig(method="draft_model", draft_model=small, num_speculative_tokens=3,
                             adaptive=False)
    outs = []
    for speculative in (None, spec):
        llm = LLM(checkpoint=target, dtype="float32", quantization=None, block_size=4,
                  kv_cache_memory=budget, kv_cache_dtype="bfloat16", speculative=speculative)
        outs.append([o.outputs[0].token_ids for o in llm.generate([PROMPT, PROMPT[5:12]], params)])
        assert llm.engine.kv.num_free_blocks == llm.engine.kv.num_blocks
    engine = llm.engine
    proposer = engine.speculative.proposer
    assert {t.dtype for kv in proposer.kv_caches for t in kv} == {torch.bfloat16}
    per_block = sum(kv_bytes_per_block(c.config, 4, torch.bfloat16) for c in (target, small))
    assert engine.num_kv_blocks == budget // per_block
    assert engine.speculative.stats.num_accepted_tokens > 0
    assert outs[0] == outs[1]


def test_cli_flags() -> None:
    """``--kv-cache-dtype`` beside ``--dtype``: run / serve's engine flags, info, bench."""
    from thinkstream.cli import build_parser, engine_config

    parser = build_parser()
    args = parser.parse_args(["run", "hi", "--dtype", "float32", "--kv-cache-dtype", "bfloat16"])
    assert engine_config(args).kv_cache_dtype == "bfloat16"
    assert engine_config(parser.parse_args(["run", "hi"])).kv_cache_dtype == "auto"
    assert parser.parse_args(["info", "--kv-cache-dtype", "bfloat16"]).kv_cache_dtype == "bfloat16"
    bench = parser.parse_args(["bench", "profile", "--kv-cache-dtype", "bfloat16"])
    assert bench.kv_cache_dtype == "bfloat16"
    with pytest.raises(SystemExit):
        parser.parse_args(["run", "hi", "--kv-cache-dtype", "float8"])


def test_profile_bench_with_a_bfloat16_cache(tmp_path, capsys) -> None:
    """``bench profile --kv-cache-dtype bfloat16`` runs it, says so, and records it."""
    import argparse
    import json

    from thinkstream.bench.cli import register

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(), "bench")
    out = tmp_path / "profile.json"
    args = parser.parse_args(["bench", "profile", "--batch", "1", "--steps", "2", "--context", "9",
                              "--dtype", "float32", "--quantization", "none", "--cpu-clock",
                              "--kv-cache-dtype", "bfloat16", "--json", str(out)])
    assert args.fn(args, checkpoint=tiny_checkpoint("llama")) == 0
    assert "batch 1 (float32, KV cache bfloat16" in capsys.readouterr().out
    doc = json.loads(out.read_text())
    assert doc["profiles"][0]["kv_cache_dtype"] == "bfloat16" and "isa" in doc["cpu"]


def test_accuracy_bench_compare() -> None:
    """``bench/kv_cache_dtype.compare``: logit and next-token log-prob differences."""
    from thinkstream.bench.kv_cache_dtype import compare

    a = torch.zeros(3, 4)
    b = a.clone()
    b[0, 2] = 0.5  # position 0: the next token (2) gains, the argmax moves to 2
    got = compare(a, b, [7, 2, 1])
    assert got["max_abs_logit_diff"] == 0.5 and got["argmax_agreement"] == pytest.approx(2 / 3)
    expected = torch.tensor([0.0, 0.0, 0.5, 0.0]).log_softmax(-1)[2] - torch.zeros(4).log_softmax(-1)[2]
    assert abs(got["max_abs_prompt_logprob_diff"] - float(expected)) < 1e-6


def test_info_prints_the_cache_dtype(monkeypatch, capsys) -> None:
    """``thinkstream info --kv-cache-dtype bfloat16``: the precision block names the cache."""
    import json

    import thinkstream.loading
    from thinkstream.cli import build_parser

    monkeypatch.setattr(thinkstream.loading, "load_checkpoint", lambda *_a, **_k: tiny_checkpoint("llama"))
    args = build_parser().parse_args(["info", "--dtype", "float32", "--kv-cache-dtype", "bfloat16"])
    assert args.fn(args) == 0
    precision = json.loads(capsys.readouterr().out)["precision"]
    assert precision["dtype"] == "float32" and precision["kv_cache_dtype"] == "bfloat16"
    assert precision["why"].endswith("; KV cache bfloat16 (as given)")
