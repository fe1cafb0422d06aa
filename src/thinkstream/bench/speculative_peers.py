"""The peers of ``thinkstream bench speculative`` with their own drafting, batch 1, greedy,
one thread, on the same GGUF: llama.cpp (llama-cpp-python's ``Llama``) without and with
``LlamaPromptLookupDecoding``, HF transformers' ``generate`` without, with
``prompt_lookup_num_tokens`` and with ``assistant_early_exit``.

Every runner returns a row with end-to-end tokens/s (prefill included) and decode tokens/s
(``decode_rate``: the tokens after each answer's first over the time after it; the time to
the first token is the prompt's prefill, the same with and without drafting). llama.cpp's
first token is timed from ``Llama.generate``, the token generator ``create_completion``
runs (same greedy settings: top-k 1, no repeat penalty, stop at an end-of-generation
token); HF's from a streamer (``generate(streamer=...)``: its first ``put`` is the prompt,
the second the first new token, in assisted generation too).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any


def decode_rate(tokens: list[int], seconds: list[float], first: list[float],
                after_first: list[int] | None = None) -> dict[str, float]:
    """Row fields from per-answer token counts, total seconds and seconds to the first
    token: ``tok_s`` (end to end) and ``decode_tok_s`` (the tokens after the first,
    ``after_first`` or ``n - 1`` each, over ``sum(total - first)``)."""
    n, total = sum(tokens), sum(seconds)
    dn = sum(after_first) if after_first is not None else sum(max(t - 1, 0) for t in tokens)
    ds = sum(s - f for s, f in zip(seconds, first, strict=True))
    return {"tokens": n, "seconds": total, "tok_s": n / total, "decode_tokens": dn,
            "decode_seconds": ds, "decode_tok_s": dn / ds if ds > 0 else float("nan")}


def run_llamacpp(gguf: Path, prompts: list[list[int]], max_tokens: int,
                 lookup: int) -> dict[str, Any]:
    """llama.cpp, batch 1, greedy; ``lookup`` > 0 drafts that many tokens by prompt lookup
    (which needs ``logits_all``)."""
    import llama_cpp
    from llama_cpp.llama_speculative import LlamaPromptLookupDecoding

    draft = LlamaPromptLookupDecoding(num_pred_tokens=lookup) if lookup else None
    llm = llama_cpp.Llama(str(gguf), n_ctx=4096, n_threads=1, n_threads_batch=1,
                          draft_model=draft, verbose=False, logits_all=draft is not None)
    llm.create_completion(prompts[0], max_tokens=4, temperature=0.0)  # warm-up
    counts, seconds, first, outputs = [], [], [], []
    for p in prompts:
        llm.reset()
        out: list[int] = []
        t0 = time.perf_counter()
        t_first = None
        for tok in llm.generate(p, top_k=1, top_p=1.0, min_p=0.0, temp=0.0, repeat_penalty=1.0):
            if t_first is None:
                t_first = time.perf_counter() - t0
            if llama_cpp.llama_vocab_is_eog(llm._model.vocab, tok):
                break
            out.append(tok)
            if len(out) >= max_tokens:
                break
        seconds.append(time.perf_counter() - t0)
        first.append(t_first if t_first is not None else seconds[-1])
        counts.append(len(out))
        outputs.append(out)
    return {**decode_rate(counts, seconds, first), "outputs": outputs}


class _FirstToken:
    """A ``generate`` streamer that notes when the first new token arrives (its first
    ``put`` is the prompt)."""

    def __init__(self) -> None:
        self.puts, self.first = 0, None

    def put(self, value: Any) -> None:
        self.puts += 1
        if self.puts == 2 and self.first is None:
            self.first = time.perf_counter()

    def end(self) -> None:
        pass


def run_hf(gguf: Path, prompts: list[list[int]], max_tokens: int, draft: dict[str, Any],
           model: Any = None) -> tuple[dict[str, Any], Any]:
    """HF transformers ``generate``, batch 1, greedy; ``draft``: its drafting arguments
    (``hf_drafts``), none for plain decoding. Returns the row and the model (loaded once)."""
    import torch
    import transformers

    if model is None:
        model = transformers.AutoModelForCausalLM.from_pretrained(
            str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32).eval()
    counts, seconds, first, outputs = [], [], [], []
    with torch.inference_mode():
        for p in prompts:
            ids = torch.tensor([p])
            streamer = _FirstToken()
            t0 = time.perf_counter()
            out = model.generate(ids, max_new_tokens=max_tokens, do_sample=False,
                                 attention_mask=torch.ones_like(ids), streamer=streamer, **draft)
            seconds.append(time.perf_counter() - t0)
            first.append(streamer.first - t0 if streamer.first is not None else seconds[-1])
            outputs.append(out[0, ids.shape[1]:].tolist())
            counts.append(len(outputs[-1]))
    return {**decode_rate(counts, seconds, first), "outputs": outputs}, model


def hf_drafts(lookup: int, layer: int | None, exit_tokens: int) -> dict[str, dict[str, Any]]:
    """HF's configurations: none, prompt lookup of ``lookup`` tokens, and (with a layer)
    early exit at ``layer`` drafting ``exit_tokens`` per step (constant schedule: its
    default heuristic changes the length between calls)."""
    out: dict[str, dict[str, Any]] = {"none": {},
                                      f"prompt lookup {lookup}": {"prompt_lookup_num_tokens": lookup}}
    if layer is not None:
        out[f"early exit {layer} x{exit_tokens}"] = {
            "assistant_early_exit": layer, "num_assistant_tokens": exit_tokens,
            "num_assistant_tokens_schedule": "constant"}
    return out
