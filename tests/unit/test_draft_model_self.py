"""A target as its own draft model, on the tiny model: under greedy decoding every draft
token is the target's own next token, so a fixed length is accepted at rate 1.0 (any slip
in the draft's KV, positions or catch-up over accepted tokens would show as a rejection)
and the output is the one without speculation. The adaptive length drafts (almost)
nothing here by design: a draft costing a target step never pays (E(k) <= 1 + k tokens
for 1 + k steps), so it only probes."""

from __future__ import annotations

from helpers.runs import drain
from helpers.tiny import tiny_checkpoint

from thinkstream.config import EngineConfig
from thinkstream.engine.llm_engine import LLMEngine
from thinkstream.sampling_params import SamplingParams
from thinkstream.speculative.adaptive import best_length
from thinkstream.speculative.config import SpeculativeConfig

PROMPTS = [[5, 6, 7, 8, 9], [100, 200, 300, 12]]
GREEDY = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)


def generate(speculative: SpeculativeConfig | None) -> tuple[list[list[int]], LLMEngine]:
    ckpt = tiny_checkpoint()
    engine = LLMEngine(config=EngineConfig(block_size=4, num_blocks=128, max_num_seqs=8,
                                           dtype="float32", speculative=speculative),
                       checkpoint=ckpt)
    ids = [engine.add_request(f"r{i}", p, GREEDY) for i, p in enumerate(PROMPTS)]
    done = drain(engine)
    return [done[i] for i in ids], engine


def test_a_target_drafting_for_itself_is_always_accepted() -> None:
    want, _ = generate(None)
    got, engine = generate(SpeculativeConfig(method="draft_model", draft_model=tiny_checkpoint(),
                                             num_speculative_tokens=4, adaptive=False))
    st = engine.speculative.stats
    assert got == want
    assert st.num_accepted_tokens == st.num_draft_tokens >= 4 * len(PROMPTS)
    # why adaptive waits: at the draft's cost of one step per token, even sure drafts lose
    assert best_length(1.0, 1.0, 4) == 0 and best_length(1.0, 0.5, 4) == 4
