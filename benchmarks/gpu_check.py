"""GPU check, run on a lent CUDA machine: the engine on a SmolLM2-135M-shaped model with
random weights (no model file needed), bfloat16, prefill and decode throughput.

    PYTHONPATH=src python benchmarks/gpu_check.py --json out.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from helpers.tiny import random_tensors, tiny_tokenizer  # noqa: E402

from thinkstream import LLM, SamplingParams  # noqa: E402
from thinkstream.config import ModelConfig  # noqa: E402
from thinkstream.loading import LoadedCheckpoint  # noqa: E402

SMOLLM2 = dict(architecture="llama", vocab_size=49152, hidden_size=576, intermediate_size=1536,
               num_layers=30, num_heads=9, num_kv_heads=3, head_dim=64, rope_theta=1e5,
               max_position_embeddings=8192, tie_word_embeddings=True, eos_token_ids=(2,))


def timed(fn) -> float:
    torch.cuda.synchronize()
    t = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    cfg = ModelConfig(**SMOLLM2)
    ck = LoadedCheckpoint(cfg, random_tensors(cfg, 0), tiny_tokenizer(), Path("<random smollm2>"))
    llm = LLM(checkpoint=ck, device="cuda", dtype="bfloat16", max_num_seqs=256,
              max_num_batched_tokens=8192, kv_cache_memory=4 << 30)
    res: dict[str, float] = {"gpu": torch.cuda.get_device_name()}
    g = torch.Generator().manual_seed(0)
    llm.generate([[1, 2, 3]], SamplingParams(temperature=0, max_tokens=4))  # warm-up
    for n in (512, 2048):
        ids = torch.randint(3, 49000, (n,), generator=g).tolist()
        dt = min(timed(lambda ids=ids: llm.generate([ids], SamplingParams(temperature=0, max_tokens=1)))
                 for _ in range(3))
        res[f"prefill_{n}_tok_s"] = n / dt
    for b in (1, 32, 128):
        prompts = [torch.randint(3, 49000, (32,), generator=g).tolist() for _ in range(b)]
        p = SamplingParams(temperature=0, max_tokens=64, ignore_eos=True)
        dt = timed(lambda prompts=prompts, p=p: llm.generate(prompts, p))
        res[f"decode_b{b}_tok_s"] = b * 64 / dt
    llm.engine.check_integrity()
    print(json.dumps(res, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
