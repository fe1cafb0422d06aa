"""A bfloat16 KV cache on the real default model (SmolLM2-135M, float32, GGUF-native where
the kernels build): README's question gets the same greedy answer as with the float32
cache, and prompt log-probabilities stay within the bound measured on Zen 4 (max |logit
difference| 0.20 on README's chat prompt, 0.14 on a 40-token text; prompt log-probs 0.098 /
0.028; README "KV cache dtype"; with AVX512_BF16's dot products in the fused kernel, q and
the probabilities rounded too: 0.29 / 0.13, log-probs 0.067 / 0.025)."""

from __future__ import annotations

import pytest
import torch
from helpers.runs import engine_logits

from thinkstream import LLM, SamplingParams

pytestmark = pytest.mark.integration
CHAT = [{"role": "user", "content": "What is the capital of France?"}]
TEXT = ("The history of streaming inference begins with the observation that input rarely "
        "arrives all at once. Speech is transcribed word by word, documents are retrieved one "
        "passage at a time, and users type their questions over several seconds.")


@pytest.fixture(scope="module")
def pair(refs) -> dict[str, LLM]:
    ck = refs.checkpoint(None)
    return {kv: LLM(checkpoint=ck, dtype="float32", kv_cache_dtype=kv, max_num_seqs=4)
            for kv in ("float32", "bfloat16")}


def test_readme_answer_unchanged(pair) -> None:
    params = SamplingParams(temperature=0, max_tokens=32)
    texts = {kv: llm.chat(CHAT, params)[0].outputs[0].text for kv, llm in pair.items()}
    assert texts["bfloat16"] == texts["float32"] == "The capital of France is Paris."
    assert pair["bfloat16"].engine.runner.kv_caches[0][0].dtype.itemsize == 2


def test_prompt_logprobs_within_the_measured_bound(pair) -> None:
    tok = pair["float32"].tokenizer
    for ids in (tok.encode_chat(CHAT), tok.encode(TEXT, add_special_tokens=True)[:40]):
        a, b = (engine_logits(pair[kv], ids) for kv in ("float32", "bfloat16"))
        target = torch.tensor(ids[1:])[:, None]  # (T-1, 1): each next prompt token
        la, lb = (x.log_softmax(-1)[:-1].gather(1, target) for x in (a, b))
        assert 1e-3 < (a - b).abs().max().item() < 0.5  # rounded, but not far
        assert (la - lb).abs().max().item() < 0.15
        assert (a.argmax(-1) == b.argmax(-1)).all()

