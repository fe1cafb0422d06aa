"""The twenty schemas of ``helpers.schemas`` on the tiny random model: every output, greedy
and sampled hot (n > 1, seeded), parses and validates with ``jsonschema`` and ends with
"stop". Random weights cannot help: validity comes from the mask alone."""

from __future__ import annotations

import json

import jsonschema
import pytest
from helpers.schemas import MAX_TOKENS, SCHEMAS
from helpers.tiny import tiny_checkpoint

from thinkstream.config import EngineConfig
from thinkstream.engine.llm_engine import LLMEngine
from thinkstream.sampling_params import SamplingParams, StructuredOutputsParams


@pytest.fixture(scope="module")
def outputs() -> dict[str, list]:
    engine = LLMEngine(config=EngineConfig(block_size=16, num_blocks=2048, max_num_seqs=64,
                                           max_num_batched_tokens=1024),
                       checkpoint=tiny_checkpoint(max_position_embeddings=1024))
    for name, schema in SCHEMAS.items():
        so = StructuredOutputsParams(json=schema)
        engine.add_request(f"{name}/greedy", f"Write {name} as JSON:",
                           SamplingParams(temperature=0, max_tokens=MAX_TOKENS,
                                          structured_outputs=so))
        engine.add_request(f"{name}/hot", f"Write {name} as JSON:",
                           SamplingParams(temperature=8.0, n=2, seed=len(name),
                                          max_tokens=MAX_TOKENS, structured_outputs=so))
    done: dict[str, list] = {}
    while engine.has_unfinished_requests():
        for out in engine.step():
            if out.finished:
                name = out.request_id.split("/")[0]
                done.setdefault(name, []).extend(out.outputs)
    engine.check_integrity()
    assert engine.structured.num_matchers == 0
    return done


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_every_output_parses_and_validates(outputs, name) -> None:
    assert len(outputs[name]) == 3
    for out in outputs[name]:
        assert out.finish_reason == "stop", out.text
        jsonschema.validate(json.loads(out.text), SCHEMAS[name])
