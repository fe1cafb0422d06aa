"""What a bfloat16 KV cache costs in accuracy and saves in memory (``EngineConfig.
kv_cache_dtype``; README "KV cache dtype", docs/benchmarks.md).

Two engines on one model (default: ``LLM()``'s, float32 activations), one with a float32
cache and one with a bfloat16 cache, score the same prompts: README's chat question, a
40-token text and streamed-style documents of ``--lengths`` tokens. Per prompt: the largest
|logit difference| over every position, the largest |log-probability difference| of the
prompt's own next tokens, and how many positions keep their argmax; then each engine's
greedy answer to README's question, its KV bytes per token and its blocks in
``--kv-cache-mb``. Deterministic (no timing). With AVX512_BF16 the fused attention kernel
reads bfloat16 caches with bfloat16 dot products (q and the probabilities rounded too);
``THINKSTREAM_ISA=avx2`` measures the widening build (only K and V rounded).

    python -m thinkstream.bench.kv_cache_dtype [--model M] [--lengths 512,2000] [--json F]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch

from thinkstream.bench.report import cpu_record

CHAT = [{"role": "user", "content": "What is the capital of France?"}]
TEXT = ("The history of streaming inference begins with the observation that input rarely "
        "arrives all at once. Speech is transcribed word by word, documents are retrieved one "
        "passage at a time, and users type their questions over several seconds.")


def prompt_logits(llm, ids: list[int]) -> torch.Tensor:
    """Logits (T, V) float32 of ``ids`` as one fresh prompt through ``llm``'s model and KV
    pool (blocks taken and given back; no scheduler, no sampling)."""
    from thinkstream.attention.metadata import SeqSlice, build_attention_metadata

    eng = llm.engine
    if not eng.kv.allocate("kv-dtype-probe", len(ids)):
        raise ValueError(f"{len(ids)} tokens do not fit the KV pool")
    try:
        meta = build_attention_metadata([SeqSlice(eng.kv.block_table("kv-dtype-probe"), 0, len(ids))],
                                        eng.kv.block_size, eng.runner.kv_caches,
                                        eng.model_config.sliding_window)
        with torch.inference_mode():
            return eng.model.compute_logits(eng.model(torch.tensor(ids), torch.arange(len(ids)), meta))
    finally:
        eng.kv.free("kv-dtype-probe")


def compare(a: torch.Tensor, b: torch.Tensor, ids: list[int]) -> dict[str, float]:
    """Logits a, b (T, V) of the same prompt ``ids``: max |a - b|, max |difference| of the
    log-probability of each next prompt token, share of positions with the same argmax."""
    target = torch.tensor(ids[1:])[:, None]  # (T-1, 1)
    la, lb = (x.log_softmax(-1)[:-1].gather(1, target) for x in (a, b))
    return {"tokens": len(ids), "max_abs_logit_diff": float((a - b).abs().max()),
            "max_abs_prompt_logprob_diff": float((la - lb).abs().max()),
            "argmax_agreement": float((a.argmax(-1) == b.argmax(-1)).float().mean())}


def measure(model: str | None, lengths: list[int], kv_cache_mb: int, threads: int) -> dict[str, Any]:
    from thinkstream.bench.streaming import document
    from thinkstream.llm import LLM
    from thinkstream.sampling_params import SamplingParams
    from thinkstream.worker.runner import kv_bytes_per_block

    llms = {kv: LLM(model, dtype="float32", kv_cache_dtype=kv, num_threads=threads,
                    kv_cache_memory=kv_cache_mb << 20, max_num_seqs=4)
            for kv in ("float32", "bfloat16")}
    ref = llms["float32"]
    tok = ref.tokenizer
    chat = tok.chat_template is not None  # a base model (Gemma 3 270M) has none
    prompts = {"README chat question": tok.encode_chat(CHAT)} if chat else {}
    prompts["40-token text"] = tok.encode(TEXT, add_special_tokens=True)[:40]
    for n in lengths:
        text = "".join(document(tok, n, 3, "speech"))
        prompts[f"{n}-token document"] = tok.encode(text, add_special_tokens=True)[:n]
    rows = {name: compare(prompt_logits(ref, ids), prompt_logits(llms["bfloat16"], ids), ids)
            for name, ids in prompts.items()}
    greedy = SamplingParams(temperature=0, max_tokens=32)
    engines = {}
    for kv, llm in llms.items():
        eng = llm.engine
        engines[kv] = {"precision": eng.precision.reason, "num_kv_blocks": eng.num_kv_blocks,
                       "kv_bytes_per_token": kv_bytes_per_block(eng.model_config, 1,
                                                                getattr(torch, kv)),
                       "readme_answer": llm.chat(CHAT, greedy)[0].outputs[0].text if chat else None}
    from thinkstream.kernels.attention import load_fq_attention

    fq = load_fq_attention()  # which attention build read the bfloat16 caches
    kernel = None if fq is None else {"isa": fq.isa, "bf16_dot_products": fq.bf16_dot}
    return {"model": str(ref.engine.model_path), "kv_cache_mb": kv_cache_mb,
            "attention_kernel": kernel, "prompts": rows, "engines": engines}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None)
    p.add_argument("--lengths", default="512,2000", help="document lengths in tokens")
    p.add_argument("--kv-cache-mb", type=int, default=256)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", default=None, help="write the results here")
    args = p.parse_args(argv)
    result = measure(args.model, [int(n) for n in args.lengths.split(",") if n],
                     args.kv_cache_mb, args.threads)
    print("| prompt | tokens | max abs logit diff | max abs prompt log-prob diff | argmax agree |")
    print("|---|---|---|---|---|")
    for name, r in result["prompts"].items():
        print(f"| {name} | {r['tokens']} | {r['max_abs_logit_diff']:.3f} | "
              f"{r['max_abs_prompt_logprob_diff']:.3f} | {100 * r['argmax_agreement']:.1f}% |")
    print(f"attention kernel: {result['attention_kernel']}")
    for kv, e in result["engines"].items():
        print(f"{kv} cache: {e['kv_bytes_per_token']} bytes/token, {e['num_kv_blocks']} blocks in "
              f"{args.kv_cache_mb} MiB, README answer {e['readme_answer']!r}")
    if args.json:
        doc = {"cpu": cpu_record(), "threads": args.threads, **result}
        Path(args.json).write_text(json.dumps(doc, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
