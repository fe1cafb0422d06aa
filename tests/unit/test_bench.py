"""The benchmark harness: deterministic workloads, exact report math, and a --quick run on
a tiny random model (thinkstream peer only, in process). No timing assertions."""

from __future__ import annotations

import argparse
import json

import pytest

from thinkstream.bench import report, workloads
from thinkstream.bench.cli import register, run
from thinkstream.bench.llamacpp import common_prefix_len
from thinkstream.bench.workloads import Request, Sizes, build_workloads

VOCAB = 49152
PINNED_SHAREGPT_LENGTHS = [58, 29, 18, 71, 39]
PINNED_SHAREGPT_FIRST_IDS = (45660, 24297, 36937)


def test_prefill_workload_exact():
    w = workloads.prefill_workload(128, VOCAB, seed=0)
    assert (w.kind, w.case, len(w.requests)) == ("prefill", "128", 1)
    assert len(w.requests[0].prompt) == 128 and w.requests[0].max_tokens == 1
    assert w.requests[0].prompt[:4] == workloads.prefill_workload(128, VOCAB).requests[0].prompt[:4]
    assert all(256 <= t < VOCAB for t in w.requests[0].prompt)
    assert w.requests[0].prompt != workloads.prefill_workload(128, VOCAB, seed=1).requests[0].prompt


def test_workloads_are_deterministic_and_pinned():
    w = workloads.sharegpt_workload(VOCAB)
    assert len(w.requests) == 256
    assert (w.num_prompt_tokens, w.num_output_tokens) == (11363, 7828)
    assert [len(r.prompt) for r in w.requests[:5]] == PINNED_SHAREGPT_LENGTHS
    assert w.requests[0].prompt[:3] == PINNED_SHAREGPT_FIRST_IDS
    assert w == workloads.sharegpt_workload(VOCAB)
    assert all(4 <= len(r.prompt) <= 512 and 4 <= r.max_tokens <= 128 for r in w.requests)


def test_shared_prefix_mix():
    w = workloads.shared_prefix_workload(VOCAB)
    assert len(w.requests) == 64 and all(r.max_tokens == 32 for r in w.requests)
    assert common_prefix_len(list(w.requests)) == 1024
    assert all(1024 + 16 <= len(r.prompt) <= 1024 + 96 for r in w.requests)


def test_decode_workload_and_sizes():
    w = workloads.decode_workload(8, VOCAB, output_len=64)
    assert [len(r.prompt) for r in w.requests] == [16] * 8
    assert w.num_output_tokens == 8 * 64 and w.case == "batch 8"
    kinds = [(x.kind, x.case) for x in build_workloads(("prefill", "decode", "throughput"), VOCAB,
                                                       Sizes())]
    assert kinds == [("prefill", "128"), ("prefill", "512"), ("prefill", "2048"),
                     ("decode", "batch 1"), ("decode", "batch 8"), ("decode", "batch 32"),
                     ("throughput", "sharegpt x256"), ("throughput", "shared-prefix x64")]


def test_common_prefix_len():
    reqs = [Request((1, 2, 3, 4), 1), Request((1, 2, 3), 1), Request((1, 2, 9, 4), 1)]
    assert common_prefix_len(reqs) == 2
    assert common_prefix_len(reqs[:2]) == 3


def _sample(peer, kind, case, first, total, prompt=512, out=1, n=1, rep=0):
    return {"workload": kind, "case": case, "peer": peer, "rep": rep, "prompt_tokens": prompt,
            "output_tokens": out, "requests": n, "first_s": first, "total_s": total}


def test_report_math_exact():
    samples = [
        _sample("thinkstream", "prefill", "512", 0.5, 0.5),
        _sample("thinkstream", "prefill", "512", 0.25, 0.25),
        _sample("thinkstream", "prefill", "512", 1.0, 1.0),
        _sample("hf", "prefill", "512", 1.0, 1.0),
        _sample("hf", "prefill", "512", 2.0, 2.0),
        _sample("thinkstream", "decode", "batch 2", 0.5, 1.5, prompt=32, out=130, n=2),
        _sample("hf", "decode", "batch 2", 1.0, 5.0, prompt=32, out=130, n=2),
        _sample("thinkstream", "throughput", "mix", 0, 4.0, prompt=100, out=400, n=8),
        _sample("hf", "throughput", "mix", 0, 8.0, prompt=100, out=400, n=8),
    ]
    summary = report.summarize(samples)
    by = {(r["workload"], r["peer"]): r for r in summary}
    assert by["prefill", "thinkstream"]["median"] == {"ttft_s": 0.5, "prefill_tok_s": 1024.0}
    assert by["prefill", "thinkstream"]["reps"] == 3
    assert by["prefill", "hf"]["median"] == {"ttft_s": 1.5, "prefill_tok_s": 384.0}
    assert by["decode", "thinkstream"]["median"]["decode_tok_s"] == 128.0
    assert by["decode", "hf"]["median"]["decode_tok_s"] == 32.0
    assert by["throughput", "hf"]["median"] == {"req_s": 1.0, "output_tok_s": 50.0, "total_s": 8.0}
    ratios = {(r["workload"], r["peer"]): r["ratio"] for r in report.ratios(summary)}
    assert ratios == {("prefill", "hf"): 1024.0 / 384.0, ("decode", "hf"): 4.0,
                      ("throughput", "hf"): 2.0}
    doc = report.build_report({"peers": {"thinkstream": {}, "hf": {}}, "samples": samples}, {})
    text = report.table(doc)
    assert "| decode | batch 2 | decode_tok_s (tok/s) | 128 | 32.0 | 4.00x |" in text
    assert "| prefill | 512 | ttft_s (s) | 0.5 | 1.5 | 3.00x |" in text


def test_quick_run_tiny_model(tmp_path, tiny_ckpt):
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(), "bench")
    out = tmp_path / "bench.json"
    args = parser.parse_args(["bench", "all", "--quick", "--peers", "thinkstream", "--reps", "2",
                              "--dtype", "float32", "--kv-cache-mb", "64", "--json", str(out)])
    assert run(args, checkpoint=tiny_ckpt) == 0
    doc = json.loads(out.read_text())
    assert doc["schema"] == report.SCHEMA
    assert set(doc) >= {"command", "created", "model", "machine", "reps", "quick", "sizes",
                        "peers", "summary", "ratios", "samples"}
    assert set(doc["peers"]["thinkstream"]) >= {"settings", "load_s", "peak_rss_mb"}
    cases = [(r["workload"], r["case"]) for r in doc["summary"]]
    assert cases == [("prefill", "16"), ("prefill", "64"), ("decode", "batch 1"),
                     ("decode", "batch 4"), ("throughput", "sharegpt x8"),
                     ("throughput", "shared-prefix x4")]
    assert len(doc["samples"]) == 2 * len(cases) and doc["ratios"] == []
    assert all(r["reps"] == 2 and all(v > 0 for v in r["median"].values()) for r in doc["summary"])


def test_unknown_peer_is_rejected(tiny_ckpt):
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(), "bench")
    args = parser.parse_args(["bench", "decode", "--peers", "nope"])
    with pytest.raises(ValueError, match="unknown peer"):
        run(args, checkpoint=tiny_ckpt)
    # an empty list: a message naming the flag (was min() of an empty sequence)
    with pytest.raises(ValueError, match="--peers: name at least one of thinkstream"):
        run(parser.parse_args(["bench", "decode", "--peers", " , "]), checkpoint=tiny_ckpt)


def test_streaming_quick_tiny_model(tmp_path, tiny_ckpt):
    from thinkstream.bench import streaming

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(), "bench")
    out = tmp_path / "streaming.json"
    args = parser.parse_args(["bench", "streaming", "--lengths", "24,48", "--sessions", "2",
                              "--session-tokens", "16", "--session-rate", "400",
                              "--arrivals-per-s", "50", "--policies", "fcfs",
                              "--rate", "2000", "--max-tokens", "3", "--kv-cache-mb", "16",
                              "--reps", "2", "--peers", "thinkstream-stream,thinkstream-oneshot",
                              "--json", str(out)])
    assert args.fn is streaming.run and args.threads == 1 and args.pattern == "speech"
    assert args.fn(args, checkpoint=tiny_ckpt) == 0
    doc = json.loads(out.read_text())
    assert doc["schema"] == streaming.SCHEMA
    assert set(doc) >= {"command", "created", "model", "machine", "pattern", "threads",
                        "max_tokens", "rate_tok_per_s", "prefill_tok_per_s", "peers", "lengths",
                        "concurrent", "targets"}
    assert [r["doc_tokens"] for r in doc["lengths"]] == [24, 48]
    for row in doc["lengths"]:
        assert set(row["results"]) == {"thinkstream-stream", "thinkstream-oneshot"}
        assert all(v["tokens"] == 3 and v["total_s"] >= v["ttft_s"] > 0
                   for v in row["results"].values())
        assert row["best_waiting"] == "thinkstream-oneshot" and row["prompt_tokens"] > 24
        samples = row["results"]["thinkstream-stream"]["samples"]
        assert len(samples) == 2
        a, b = sorted(s["ttft_s"] for s in samples)
        assert row["results"]["thinkstream-stream"]["ttft_s"] == pytest.approx((a + b) / 2)
    assert [(r["mode"], r["policy"]) for r in doc["concurrent"]] == [("session", "fcfs"),
                                                                      ("one-shot", "-")]
    assert all(r["output_tokens"] == r["expected_tokens"] == 6 for r in doc["concurrent"])
    assert set(doc["targets"]) == {"throughput_ratio_vs_non_streaming",
                                   "throughput_no_worse_than_non_streaming"}
    assert "| 48 |" in streaming.table(doc)


def test_streaming_bursts_document_and_unknown_peer(tiny_ckpt):
    from thinkstream.bench import streaming

    tok = tiny_ckpt.tokenizer
    chunks = streaming.document(tok, 400, seed=1, pattern="bursts")
    assert len(chunks) == streaming.BURSTS + 1 and chunks[-1] == streaming.QUESTION
    speech = streaming.document(tok, 400, seed=1)
    assert "".join(speech) == "".join(chunks) and len(speech) > len(chunks)
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(), "bench")
    args = parser.parse_args(["bench", "streaming", "--peers", "vllm"])
    with pytest.raises(ValueError, match="unknown peer"):
        args.fn(args, checkpoint=tiny_ckpt)


def test_speculative_bench_tiny_model(tmp_path, tiny_ckpt):
    from thinkstream.bench import speculative

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(), "bench")
    out = tmp_path / "spec.json"
    args = parser.parse_args(["bench", "speculative", "--workloads", "echo-short", "--batches", "1,2",
                              "--configs", "none,ngram fixed,early_exit fixed",
                              "--batched-configs", "none,ngram fixed", "--exit-layer", "1",
                              "--peers", "none", "--max-tokens", "4", "--json", str(out)])
    assert args.fn is speculative.run
    assert args.fn(args, checkpoint=tiny_ckpt) == 0
    doc = json.loads(out.read_text())
    rows = [(r["batch"], r["config"]) for r in doc["rows"]]
    assert rows == [(1, "none"), (1, "ngram fixed"), (1, "early_exit fixed"), (2, "none"),
                    (2, "ngram fixed")]
    assert all(r["same_output"] in (None, True) for r in doc["rows"])  # greedy: lossless
    assert doc["rows"][0]["vs_none"] == 1.0 and doc["early_exit_layer"] == 1
    # decode tokens/s: the tokens after each answer's first (4 answers of 4 tokens at batch 1)
    assert doc["rows"][0]["decode_tokens"] == 4 * 3 and doc["rows"][0]["decode_vs_none"] == 1.0
    assert all(0 < r["decode_seconds"] < r["seconds"] for r in doc["rows"])


@pytest.mark.parametrize(("flags", "message"), [
    (["--configs", "bogus"], "--configs: unknown 'bogus'; choose from none, "),
    (["--workloads", "echo,nope"], "--workloads: unknown 'nope'; choose from echo, echo-short, chat, long"),
    (["--peers", "vllm"], "--peers: unknown 'vllm'; choose from llamacpp, hf, none"),
    (["--batches", "1,0"], "--batches: batch sizes >= 1, got '1,0'"),
    (["--batched-configs", ""], "--batched-configs: name at least one of none, "),
    (["--device", "cuda"], "--device cuda: the peers (llama.cpp, HF) run on the CPU; "),
])
def test_speculative_bench_lists_are_checked_before_loading(flags, message):
    """Were a KeyError or a ZeroDivisionError after the model had loaded."""
    from thinkstream.bench import speculative

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(), "bench")
    args = parser.parse_args(["bench", "speculative", "--model", "/nonexistent.gguf", *flags])
    with pytest.raises(ValueError) as err:  # the model path is never looked at
        speculative.run(args)
    assert str(err.value).startswith(message)
    speculative._check_lists(parser.parse_args(["bench", "speculative"]))  # defaults: fine
    speculative._check_lists(parser.parse_args(["bench", "speculative", "--device", "cuda",
                                                "--peers", "none"]))


def test_profile_takes_a_context_length(tiny_ckpt, capsys):
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(), "bench")
    args = parser.parse_args(["bench", "profile", "--batch", "1", "--steps", "2", "--context", "40",
                              "--dtype", "float32", "--quantization", "none", "--cpu-clock"])
    assert args.context == 40
    assert args.fn(args, checkpoint=tiny_ckpt) == 0
    assert "batch 1 (float32" in capsys.readouterr().out


def test_fq_kernel_bench_inputs_are_paged_and_causal():
    import torch

    from thinkstream.bench import fq_kernel

    x = fq_kernel.inputs(5, 40, torch.bfloat16)
    slots = x["slots"][0]
    assert slots.shape == (40,) and len(set(slots.tolist())) == 40
    assert torch.equal(slots.view(-1, 8)[:, 1:] - slots.view(-1, 8)[:, :-1], torch.ones(5, 7, dtype=torch.int64))
    assert len(x["caches"]) == fq_kernel.LAYERS and x["caches"][0][0].dtype == torch.bfloat16
    assert x["mask"].shape == (1, 5, 40) and x["mask"][0].sum(1).tolist() == [36, 37, 38, 39, 40]


@pytest.mark.parametrize("argv", [["profile", "--steps", "0"], ["profile", "--batch", "0"],
                                  ["decode", "--reps", "0"], ["decode", "--threads", "-1"],
                                  ["decode", "--max-batch", "0"],
                                  ["speculative", "--reps", "0"], ["streaming", "--reps", "0"],
                                  ["parallel", "--reps", "0"], ["parallel", "--threads", "0"]])
def test_counts_below_one_are_usage_errors(argv, capsys):
    """Were a ZeroDivisionError, an UnboundLocalError, a StopIteration, 'no median for
    empty data' after minutes of work, a worker's traceback, or (parallel) a run that
    ignored them."""
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(), "bench")
    with pytest.raises(SystemExit) as exc:
        parser.parse_args(["bench", *argv])
    assert exc.value.code == 2
    assert f"argument {argv[-2]}: must be >= 1, got {argv[-1]}" in capsys.readouterr().err


def test_answer_step_times_every_clock(tiny_ckpt):
    """bench/answer_step: the close command and the answer step on the wall, process and
    engine-thread clocks; the answer's one token comes from that step (asserted inside)."""
    from thinkstream.bench import answer_step
    from thinkstream.llm import LLM

    llm = LLM(checkpoint=tiny_ckpt, dtype="float32", block_size=4, num_blocks=128, max_num_seqs=4)
    close, step = answer_step.answer_step(llm, 40, seed=3)
    assert set(close) == set(step) == {"wall", "cpu", "thread"} == set(answer_step.CLOCKS)
    assert all(t >= 0.0 for t in (*close.values(), *step.values()))
    assert step["wall"] > 0.0 and not llm.engine.requests
    llm.engine.check_integrity()


def test_decode_batches_above_max_batch_are_not_run() -> None:
    """With fewer sequence slots than a batch the batch ran in turns, and its decode rate
    (tokens after every first token over the time after the last one) came out 43x."""
    assert Sizes().within(32).decode_batches == (1, 8, 32)
    assert Sizes().within(8).decode_batches == (1, 8)
    assert Sizes().within(1).decode_batches == (1,)
    assert Sizes().within(1).prefill_lengths == Sizes().prefill_lengths
