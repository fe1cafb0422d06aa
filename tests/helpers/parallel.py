"""Running one parallel-paths request on an engine, to the end, for the parallel tests."""

from __future__ import annotations

from thinkstream.config import EngineConfig
from thinkstream.engine.llm_engine import LLMEngine
from thinkstream.parallel.config import ParallelConfig
from thinkstream.parallel.paths import start_paths
from thinkstream.sampling_params import SamplingParams

PROMPT = [5, 17, 33, 8, 91, 40, 12]
GREEDY = SamplingParams(temperature=0, max_tokens=5, logprobs=8, ignore_eos=True)


def run_paths(ckpt, cfg: ParallelConfig, params: SamplingParams = GREEDY, prompt=PROMPT,
              num_blocks: int = 64, others: int = 0, **engine_options):
    """Run one parallel-paths request to the end (beside ``others`` plain requests, added
    first), checking integrity after every step."""
    engine = LLMEngine(checkpoint=ckpt, config=EngineConfig(
        num_blocks=num_blocks, block_size=4, **engine_options))
    for i in range(others):
        engine.add_request(f"other{i}", list(range(50 + i, 70 + i)),
                           SamplingParams(max_tokens=12, seed=i, ignore_eos=True))
    state = engine.make_request("r", prompt, params, input_closed=False)
    engine.add(state)
    paths = start_paths(engine, state, cfg)
    final = None
    for _ in range(500):
        for out in engine.step():
            final = out if out.finished and out.request_id == "r" else final
        engine.check_integrity()
        if final is not None and not engine.has_unfinished_requests():
            break
    assert final is not None
    assert engine.kv.num_free_blocks == engine.kv.num_blocks
    return final, paths, engine
