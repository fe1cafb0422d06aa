"""The vLLM side of the vLLM CPU peer: a script run by the python of vLLM's own virtual
environment (never imported by thinkstream, which only reads this file's path; it imports
nothing of thinkstream, so it runs without it).

Two commands::

    python vllm_worker.py export MODEL.gguf OUT_DIR   # GGUF -> HF directory (offline)
    python vllm_worker.py serve HF_DIR --threads 1 --max-batch 32 --dtype float32

``serve`` builds one ``vllm.LLM`` and answers JSON lines on its stdin, one reply line
each (``bench/vllm_peer.py`` is the other end; anything vLLM prints goes to stderr):

- ``{"op": "generate", "requests": [[prompt_ids, max_tokens], ...]}`` ->
  ``{"ok": true, "first_s": s, "total_s": s, "cpu_s": s, "generated": n, "tokens": [[...]]}``
  (greedy, ``ignore_eos``: exactly ``max_tokens`` per request; ``first_s`` when every
  request had its first token, as ``peers.Timing``; ``cpu_s`` this process's CPU time);
- ``{"op": "rss"}`` -> ``{"ok": true, "peak_rss_mb": mb}``;
- end of input: exit. Errors: ``{"ok": false, "error": traceback}``.
The first line is ``{"ok": true, "ready": {...settings...}, "vocab_size": n}``.
"""

from __future__ import annotations

import os
import sys

# This file's folder holds bench modules named like the standard library's (profile.py):
# never import from it (the peer also runs python -P).
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != os.path.dirname(__file__)]

import argparse  # noqa: E402
import json  # noqa: E402
import resource  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
from pathlib import Path  # noqa: E402


def export(gguf: Path, out: Path) -> None:
    """GGUF -> HF directory with transformers (dequantized weights, the GGUF's tokenizer).
    transformers 5.x refuses ``save_pretrained`` on a GGUF-loaded model while its
    quantizer flags are set, so they are cleared first; nothing is downloaded."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name,
                                                 dtype=torch.float32)
    model.hf_quantizer, model.is_quantized = None, False
    for config in (model.config, getattr(model, "generation_config", None)):
        if config is not None and hasattr(config, "quantization_config"):
            delattr(config, "quantization_config")
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out))
    AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name).save_pretrained(str(out))


def _generate(llm, requests: list[list]) -> dict:
    """Greedy generation of every request at once, stepped to the end (as thinkstream's
    bench peer does), timing when all first tokens were out."""
    from vllm import SamplingParams, TokensPrompt

    engine = llm.llm_engine
    c0, t0 = time.process_time(), time.perf_counter()
    waiting = set()
    for i, (prompt, max_tokens) in enumerate(requests):
        params = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True,
                                detokenize=False)
        engine.add_request(str(i), TokensPrompt(prompt_token_ids=list(prompt)), params)
        waiting.add(str(i))
    tokens: dict[str, list[int]] = {}
    first = None
    while engine.has_unfinished_requests():
        for out in engine.step():
            tokens[out.request_id] = list(out.outputs[0].token_ids)
            if tokens[out.request_id]:
                waiting.discard(out.request_id)
        if first is None and not waiting:
            first = time.perf_counter() - t0
    total = time.perf_counter() - t0
    ordered = [tokens.get(str(i), []) for i in range(len(requests))]
    return {"ok": True, "first_s": first if first is not None else total, "total_s": total,
            "cpu_s": time.process_time() - c0, "generated": sum(map(len, ordered)),
            "tokens": ordered}


def serve(args: argparse.Namespace) -> None:
    proto = os.fdopen(os.dup(1), "w", buffering=1)  # replies; vLLM's prints go to stderr
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    import vllm
    from vllm import LLM

    llm = LLM(model=args.hf_dir, dtype=args.dtype, max_num_seqs=args.max_batch,
              max_num_batched_tokens=2048, max_model_len=args.max_model_len, seed=0,
              enable_prefix_caching=True)
    settings = {"vllm": vllm.__version__, "dtype": args.dtype, "threads": args.threads,
                "max_num_seqs": args.max_batch, "max_num_batched_tokens": 2048,
                "max_model_len": args.max_model_len, "prefix_caching": True,
                "kv_cache_gb": os.environ.get("VLLM_CPU_KVCACHE_SPACE"),
                "hf_dir": args.hf_dir}
    vocab = llm.llm_engine.model_config.get_vocab_size()
    proto.write(json.dumps({"ok": True, "ready": settings, "vocab_size": vocab}) + "\n")
    for line in sys.stdin:
        try:
            msg = json.loads(line)
            if msg["op"] == "generate":
                reply = _generate(llm, msg["requests"])
            elif msg["op"] == "rss":
                rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
                reply = {"ok": True, "peak_rss_mb": rss}
            else:
                reply = {"ok": False, "error": f"unknown op {msg['op']!r}"}
        except Exception:  # reported to the parent, which raises it
            reply = {"ok": False, "error": traceback.format_exc()}
        proto.write(json.dumps(reply) + "\n")


def main() -> None:
    p = argparse.ArgumentParser(description="vLLM CPU peer worker (see bench/vllm_peer.py)")
    sub = p.add_subparsers(dest="command", required=True)
    e = sub.add_parser("export")
    e.add_argument("gguf", type=Path)
    e.add_argument("out", type=Path)
    s = sub.add_parser("serve")
    s.add_argument("hf_dir")
    s.add_argument("--threads", type=int, default=1)
    s.add_argument("--max-batch", type=int, default=32)
    s.add_argument("--max-model-len", type=int, default=4096)
    s.add_argument("--dtype", default="float32")
    args = p.parse_args()
    if args.command == "export":
        export(args.gguf, args.out)
    else:
        serve(args)


if __name__ == "__main__":  # vLLM's CPU engine starts worker processes: a main guard
    main()
