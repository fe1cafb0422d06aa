"""Quantized paths keep the model's behaviour: int8 and int4 greedy outputs match float32
for the first 16 tokens of the parity prompts up to the reference's first near tie (all but
at most two prompts exactly), and perplexity on a fixed text rises by
under 1%. (Quantization changes only the linear layers; the residual stream stays float32.)"""

from __future__ import annotations

import math

import pytest
from helpers.prompts import PARITY_PROMPTS

from thinkstream import LLM, SamplingParams

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PROMPTS = PARITY_PROMPTS
TEXT = (
    "The Eiffel Tower is a wrought-iron lattice tower on the Champ de Mars in Paris, France. "
    "It is named after the engineer Gustave Eiffel, whose company designed and built the tower "
    "from 1887 to 1889. Locally nicknamed the Iron Lady, it was constructed as the centrepiece "
    "of the 1889 World's Fair, and to crown the centennial anniversary of the French Revolution."
)


NEAR_TIE = 0.1  # nats between the reference's top two log-probabilities


def _margin(top: dict) -> float:
    first, second = sorted((e.logprob for e in top.values()), reverse=True)[:2]
    return first - second


def _perplexity(llm: LLM) -> float:
    out = llm.generate([TEXT], SamplingParams(temperature=0, max_tokens=1, prompt_logprobs=0))[0]
    lps = [e[t].logprob for e, t in zip(out.prompt_logprobs[1:], out.prompt_token_ids[1:],
                                        strict=True)]
    return math.exp(-sum(lps) / len(lps))


@pytest.fixture(scope="module")
def engines(refs):
    ck = refs.checkpoint(None)
    return {q: LLM(checkpoint=ck, dtype="float32", quantization=q) for q in (None, "int8", "int4")}


PARAMS = SamplingParams(temperature=0, max_tokens=16, ignore_eos=True, logprobs=2)


@pytest.fixture(scope="module")
def reference(engines):
    """float32's outputs and perplexity, computed once for both kinds."""
    ref = engines[None]
    prompts = [ref.chat_prompt([{"role": "user", "content": p}]) for p in PROMPTS]
    return prompts, [o.outputs[0] for o in ref.generate(prompts, PARAMS)], _perplexity(ref)


@pytest.mark.parametrize("kind", ["int8", "int4"])
def test_quantized_greedy_and_perplexity(engines, reference, kind: str) -> None:
    llm = engines[kind]
    prompts, want, base = reference
    got = [o.outputs[0].token_ids for o in llm.generate(prompts, PARAMS)]
    for w, g in zip(want, got, strict=True):
        # exact up to the reference's first near tie (top-2 within NEAR_TIE nats): there int8 /
        # int4 rounding may pick the runner-up (prompt 4 of SmolLM2 has one at token 2: 0.087)
        n = next((i for i, lp in enumerate(w.logprobs)
                  if _margin(lp) < NEAR_TIE), len(w.token_ids))
        assert g[:n] == w.token_ids[:n], (n, g, w.token_ids)
    assert sum(g == w.token_ids for w, g in zip(want, got, strict=True)) >= len(got) - 2
    quant = _perplexity(llm)
    assert quant / base < 1.01, (kind, base, quant)
