"""What rounding the activations in the GGUF kernels costs (docs/benchmarks.md, "Activations
in the GGUF kernels"): ``quantization="gguf"`` (float32), ``"gguf-q16"`` and ``"gguf-q8"``
against the dense float32 model of the same file.

Per mode: the logits of a fixed 128-token paragraph computed a row at a time (as decode
computes them: one row per kernel call, where the int paths apply), their largest and mean
difference from the dense model's, the paragraph's perplexity and the top-1 agreement; then
20 prompts x 64 greedy tokens, one sequence at a time, compared with ``"gguf"``'s.

    python -m thinkstream.bench.activations [--model gemma3-270m] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import math

import torch

from thinkstream.attention.metadata import SeqSlice, build_attention_metadata
from thinkstream.llm import LLM
from thinkstream.loading import load_checkpoint
from thinkstream.sampling_params import SamplingParams

TEXT = ("The history of streaming inference begins with the observation that input rarely arrives all "
        "at once. Speech is transcribed word by word, documents are retrieved one passage at a time, "
        "and users type their questions over several seconds. A system that waits for the whole input "
        "before it starts thinking wastes that time. The alternative is to process each piece as it "
        "arrives, keeping the model's state in a cache and extending it, so that when the last word "
        "comes in only a little work remains. This idea is old in speech recognition and machine "
        "translation, where simultaneous systems have been studied for decades.")
PROMPTS = ("The capital of France is", "Once upon a time, in a small village,", "def fibonacci(n):",
           "The three laws of thermodynamics are", "Photosynthesis is the process by which",
           "In 1969, the first humans", "A good recipe for pancakes needs",
           "The main causes of the First World War were", "To install Python on Linux, you",
           "The difference between a list and a tuple in Python is", "Water boils at",
           "The largest planet in the solar system is", "Machine learning is",
           "Here is a short poem about the sea:", "The best way to learn a new language is",
           "SELECT name FROM users WHERE", "The human heart has four chambers:", "Shakespeare wrote",
           "An electric car works by", "The rules of chess say that")
MODES = ("gguf", "gguf-q16", "gguf-q8")


def logits_of(llm: LLM, ids: list[int], row_by_row: bool) -> torch.Tensor:
    """(len(ids), vocab) float32 logits of ``ids`` as one prompt, computed in one step or
    one row per step (each row over the cached rows before it)."""
    eng = llm.engine
    if not eng.kv.allocate("probe", len(ids)):
        raise RuntimeError("the KV cache cannot hold the probe text")
    steps = [(p, 1) for p in range(len(ids))] if row_by_row else [(0, len(ids))]
    out = []
    try:
        with torch.inference_mode():
            for start, n in steps:
                meta = build_attention_metadata([SeqSlice(eng.kv.block_table("probe"), start, n)],
                                                eng.kv.block_size, eng.runner.kv_caches,
                                                eng.model_config.sliding_window)
                h = eng.model(torch.tensor(ids[start:start + n]), torch.arange(start, start + n), meta)
                out.append(eng.model.compute_logits(h))
    finally:
        eng.kv.free("probe")
    return torch.cat(out)


def perplexity(logits: torch.Tensor, ids: list[int]) -> float:
    logp = torch.log_softmax(logits[:-1].double(), dim=-1)  # (T - 1, vocab)
    return math.exp(-logp.gather(1, torch.tensor(ids[1:]).unsqueeze(1)).mean().item())


def agreement(runs: list[list[int]], ref: list[list[int]]) -> dict[str, float]:
    """Greedy continuations against the reference's: identical ones, mean common prefix,
    share of equal tokens by position."""
    prefix = [next((i for i, (a, b) in enumerate(zip(x, y, strict=True)) if a != b), len(x))
              for x, y in zip(runs, ref, strict=True)]
    equal = sum(a == b for x, y in zip(runs, ref, strict=True) for a, b in zip(x, y, strict=True))
    return {"identical": sum(x == y for x, y in zip(runs, ref, strict=True)),
            "mean_common_prefix": sum(prefix) / len(prefix),
            "token_agreement": equal / sum(len(x) for x in runs)}


def measure(model: str | None, tokens: int = 64) -> dict:
    ckpt = load_checkpoint(model)
    dense = LLM(checkpoint=ckpt, dtype="float32", quantization=None, max_num_seqs=1)
    ids = dense.tokenizer.encode(TEXT, add_special_tokens=True)[:128]
    ref = logits_of(dense, ids, row_by_row=False)
    result: dict = {"model": model or "smollm2", "text_tokens": len(ids),
                    "float32_dense_ppl": perplexity(ref, ids), "modes": {}}
    params = SamplingParams(temperature=0, max_tokens=tokens, ignore_eos=True)
    prompts = [dense.tokenizer.encode(p, add_special_tokens=True) for p in PROMPTS]
    greedy = {}
    for mode in MODES:
        llm = LLM(checkpoint=ckpt, dtype="float32", quantization=mode, max_num_seqs=1)
        logits = logits_of(llm, ids, row_by_row=True)
        err = (logits - ref).abs()
        greedy[mode] = [o.outputs[0].token_ids for o in llm.generate(prompts, params)]
        result["modes"][mode] = {
            "max_logit_err": err.max().item(), "mean_logit_err": err.mean().item(),
            "ppl": perplexity(logits, ids),
            "top1_agree_text": (logits.argmax(-1) == ref.argmax(-1)).float().mean().item()}
        if mode != "gguf":
            result["modes"][mode]["greedy_vs_gguf"] = {
                "prompts": len(prompts), "tokens": tokens, **agreement(greedy[mode], greedy["gguf"])}
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="default: SmolLM2-135M-Instruct")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", default=None)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    result = measure(args.model)
    print(json.dumps(result, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
