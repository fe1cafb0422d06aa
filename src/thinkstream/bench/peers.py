"""The engines compared, behind one small interface: ``generate(requests) -> Timing``.

Every peer generates greedily, exactly ``max_tokens`` tokens per request (EOS ignored),
from the same prompt token ids. ``Timing.first_s`` is when every request of the first
batch had its first token (the time to first token of a prefill, the end of the prompt
phase of a decode batch); ``total_s`` is when the last one finished.

- ``ThinkstreamPeer``: ``thinkstream.LLM``'s engine, requests added at once, stepped to the end.
- ``HFPeer``: transformers loading the same GGUF; a hand-written greedy loop with a KV
  cache (forward + argmax, left padding and an attention mask for batches); requests run
  in static waves of ``max_batch`` (no continuous batching, no prefix caching).
- ``LlamaCppPeer`` (``llamacpp.py``): llama-cpp-python's low-level batch API.
- ``VLLMPeer`` (``vllm_peer.py``): vLLM's CPU build in its own environment, a subprocess.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from thinkstream.bench.workloads import Request


@dataclass(frozen=True)
class Timing:
    first_s: float  # every request has its first token
    total_s: float  # every request has finished
    generated: int  # tokens generated in all (must equal the workload's output tokens)
    cpu_s: float | None = None  # CPU time of a peer in a process of its own (vLLM), else None


class Peer(Protocol):
    name: str

    def settings(self) -> dict[str, Any]: ...

    def generate(self, requests: list[Request]) -> Timing: ...


class ThinkstreamPeer:
    name = "thinkstream"

    def __init__(self, model: str | None, dtype: str = "float32", quantization: str | None = None,
                 max_batch: int = 32, kv_cache_mb: int = 1024, threads: int | None = None,
                 checkpoint: Any = None, compile_decode: bool = False,
                 kv_cache_dtype: str = "auto") -> None:
        from thinkstream.llm import LLM

        options: dict[str, Any] = {"checkpoint": checkpoint} if checkpoint is not None else {}
        options["quantization"] = quantization  # None: none (LLM's own default is "auto")
        self._settings = {"dtype": dtype, "quantization": quantization, "max_num_seqs": max_batch,
                          "kv_cache_mb": kv_cache_mb, "max_num_batched_tokens": 2048,
                          "prefix_caching": True, "threads": threads,
                          "compile_decode": compile_decode, "kv_cache_dtype": kv_cache_dtype}
        self.llm = LLM(model, dtype=dtype, max_num_seqs=max_batch, kv_cache_dtype=kv_cache_dtype,
                       kv_cache_memory=kv_cache_mb << 20, max_num_batched_tokens=2048,
                       num_threads=threads, compile_decode=compile_decode, **options)
        self.vocab_size = self.llm.engine.model_config.vocab_size
        if compile_decode:  # compile every graph now (one per batch range), not while timed
            from thinkstream.sampling_params import SamplingParams

            warm = SamplingParams(temperature=0.0, max_tokens=3, ignore_eos=True)
            for batch in sorted({1, 4, 8, max_batch}):
                self.llm.generate([[1 + i, 2, 3] for i in range(batch)], warm, use_tqdm=False)

    def settings(self) -> dict[str, Any]:
        return self._settings

    def generate(self, requests: list[Request]) -> Timing:
        from thinkstream.sampling_params import SamplingParams

        engine = self.llm.engine
        t0 = time.perf_counter()
        ids = []
        for r in requests:
            params = SamplingParams(temperature=0.0, max_tokens=r.max_tokens, ignore_eos=True)
            ids.append(engine.add_request(None, list(r.prompt), params))
        waiting = set(ids)
        outputs: dict[str, Any] = {}
        first = None
        while engine.has_unfinished_requests():
            for out in engine.step():
                outputs[out.request_id] = out.outputs[0].token_ids
                waiting.discard(out.request_id)
            if first is None and not waiting:
                first = time.perf_counter() - t0
        total = time.perf_counter() - t0
        self.last_tokens = [list(outputs.get(i, ())) for i in ids]  # for parity checks
        return Timing(first if first is not None else total, total,
                      sum(map(len, self.last_tokens)))


class HFPeer:
    name = "hf"

    def __init__(self, gguf_path: Path, dtype: str = "bfloat16", max_batch: int = 32,
                 threads: int | None = None) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        import torch
        import transformers
        from transformers import AutoModelForCausalLM

        torch.set_num_threads(threads or len(os.sched_getaffinity(0)))
        self.torch = torch
        self.max_batch = max_batch
        self.model = AutoModelForCausalLM.from_pretrained(
            str(gguf_path.parent), gguf_file=gguf_path.name, dtype=getattr(torch, dtype)
        ).eval()
        self.vocab_size = self.model.config.vocab_size
        self._settings = {"dtype": dtype, "transformers": transformers.__version__,
                          "batching": f"static waves of {max_batch}, left padding",
                          "attention": self.model.config._attn_implementation,
                          "threads": torch.get_num_threads()}

    def settings(self) -> dict[str, Any]:
        return self._settings

    def generate(self, requests: list[Request]) -> Timing:
        t0 = time.perf_counter()
        first_at = None
        for i in range(0, len(requests), self.max_batch):
            at = self._wave(requests[i:i + self.max_batch])
            first_at = first_at or at
        total = time.perf_counter() - t0
        return Timing((first_at or t0) - t0, total, sum(r.max_tokens for r in requests))

    def _wave(self, wave: list[Request]) -> float:
        """Greedy decode of one left-padded batch with a KV cache; returns when its first
        tokens were ready."""
        torch = self.torch
        width = max(len(r.prompt) for r in wave)
        ids = torch.zeros(len(wave), width, dtype=torch.long)
        mask = torch.zeros(len(wave), width, dtype=torch.long)
        for row, r in enumerate(wave):
            ids[row, width - len(r.prompt):] = torch.tensor(r.prompt)
            mask[row, width - len(r.prompt):] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)  # (B, T)
        steps = max(r.max_tokens for r in wave)
        with torch.inference_mode():
            out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions,
                             use_cache=True, logits_to_keep=1)
            token = out.logits[:, -1].argmax(-1, keepdim=True)  # (B, 1)
            first_at = time.perf_counter()
            past, pos = out.cache, positions[:, -1:]
            generated = [token]
            for _ in range(steps - 1):
                mask = torch.cat([mask, mask.new_ones(len(wave), 1)], dim=1)
                pos = pos + 1
                out = self.model(input_ids=token, attention_mask=mask, position_ids=pos,
                                 cache=past, use_cache=True)
                token = out.logits[:, -1].argmax(-1, keepdim=True)
                past = out.cache
                generated.append(token)
        self.last_tokens = torch.cat(generated, dim=1)  # (B, steps), for parity checks
        return first_at
