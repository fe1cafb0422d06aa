"""GPU check, run on a lent CUDA machine: the engine on a SmolLM2-135M-shaped model with
random weights (no model file needed), bfloat16, prefill and decode throughput. With
``--compile-decode`` the decode rows run again with ``compile_decode=True`` (CUDA graphs per
batch / context bucket, worker/graphs.py), side by side, and the greedy tokens are compared.

    python -m thinkstream.bench.gpu_check --json out.json [--compile-decode]
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
    ap.add_argument("--compile-decode", action="store_true",
                    help="also decode with compile_decode=True (CUDA graphs) and compare")
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
    engines = {"": llm}
    if args.compile_decode:
        engines["_graphs"] = LLM(checkpoint=ck, device="cuda", dtype="bfloat16", max_num_seqs=256,
                                 max_num_batched_tokens=8192, kv_cache_memory=4 << 30,
                                 compile_decode=True)
    p = SamplingParams(temperature=0, max_tokens=64, ignore_eos=True)
    tokens: dict[str, list] = {}
    for b in (1, 32, 128):
        warm, prompts = ([torch.randint(3, 49000, (32,), generator=g).tolist() for _ in range(b)]
                         for _ in range(2))
        for tag, eng in engines.items():
            eng.generate(warm, p)  # warm-up, fresh prompts: CUDA graphs are captured here
            out: list = []
            dt = timed(lambda prompts=prompts, eng=eng, out=out: out.extend(eng.generate(prompts, p)))
            tokens[f"{b}{tag}"] = [o.outputs[0].token_ids for o in out]
            res[f"decode_b{b}{tag}_tok_s"] = b * 64 / dt
            eng.engine.check_integrity()
        if args.compile_decode:
            same = sum(x == y for x, y in zip(tokens[str(b)], tokens[f"{b}_graphs"], strict=True))
            res[f"decode_b{b}_graphs_same_tokens"] = f"{same}/{b}"
    print(json.dumps(res, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
