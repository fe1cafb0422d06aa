"""Driving an engine in tests: requests that arrive while others decode."""

from __future__ import annotations

from collections.abc import Callable

import torch

from thinkstream.engine.llm_engine import LLMEngine
from thinkstream.llm import LLM
from thinkstream.sampling_params import SamplingParams


def drain(engine: LLMEngine, before_step: Callable[[int], None] | None = None) -> dict[str, list[int]]:
    """Step ``engine`` until no request is left (``before_step(i)`` before step i), checking
    integrity after every step and a full pool at the end. Finished token ids by request id."""
    done, steps = {}, 0
    while engine.has_unfinished_requests():
        if before_step is not None:
            before_step(steps)
        for out in engine.step():
            if out.finished:
                done[out.request_id] = out.outputs[0].token_ids
        engine.check_integrity()
        steps += 1
    assert engine.kv.num_free_blocks == engine.kv.num_blocks
    return done


def run_staggered(engine: LLMEngine, first: list[list[int]], later: list[list[int]],
                  params: SamplingParams, late: int = 3) -> list[list[int]]:
    """``first`` now, ``later`` after ``late`` steps (so one step mixes prefill and decode);
    checks integrity every step and a full pool at the end. Token ids in prompt order."""
    prompts = first + later
    for i, p in enumerate(first):
        engine.add_request(f"r{i}", p, params)

    def arrive(step: int) -> None:
        if step == late:
            for i, p in enumerate(later, len(first)):
                engine.add_request(f"r{i}", p, params)

    done = drain(engine, arrive)
    return [done[f"r{i}"] for i in range(len(prompts))]


def engine_logits(llm: LLM, ids: list[int], last: bool = False) -> torch.Tensor:
    """Logits (len(ids), vocab) of ``ids`` as one prompt through ``llm``'s model and KV pool
    (blocks taken and given back), without the scheduler; ``last``: the last row's only
    (the LM head on one row: its small-batch path)."""
    from thinkstream.attention.metadata import SeqSlice, build_attention_metadata

    eng = llm.engine
    assert eng.kv.allocate("probe", len(ids))
    try:
        meta = build_attention_metadata([SeqSlice(eng.kv.block_table("probe"), 0, len(ids))],
                                        eng.kv.block_size, eng.runner.kv_caches,
                                        eng.model_config.sliding_window)
        with torch.inference_mode():
            h = eng.model(torch.tensor(ids), torch.arange(len(ids)), meta)
            return eng.model.compute_logits(h[-1:] if last else h)
    finally:
        eng.kv.free("probe")
