"""Driving an engine in tests: requests that arrive while others decode."""

from __future__ import annotations

from thinkstream.engine.llm_engine import LLMEngine
from thinkstream.sampling_params import SamplingParams


def run_staggered(engine: LLMEngine, first: list[list[int]], later: list[list[int]],
                  params: SamplingParams, late: int = 3) -> list[list[int]]:
    """``first`` now, ``later`` after ``late`` steps (so one step mixes prefill and decode);
    checks integrity every step and a full pool at the end. Token ids in prompt order."""
    prompts = first + later
    for i, p in enumerate(first):
        engine.add_request(f"r{i}", p, params)
    done, steps = {}, 0
    while engine.has_unfinished_requests():
        if steps == late:
            for i, p in enumerate(later, len(first)):
                engine.add_request(f"r{i}", p, params)
        for out in engine.step():
            if out.finished:
                done[out.request_id] = out.outputs[0].token_ids
        engine.check_integrity()
        steps += 1
    assert engine.kv.num_free_blocks == engine.kv.num_blocks
    return [done[f"r{i}"] for i in range(len(prompts))]
