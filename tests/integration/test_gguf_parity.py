"""The GGUF-native path on the real models: the blocks as stored (SmolLM2: Q4_1 + a Q8_0
head; Gemma 3: Q5_0 / Q8_0 / Q4_K / Q6_K) give the dequantized float32 model's logits
within 1e-3, on the kernel for every row (the prompt forced through it) and in decode
(the native decoder stack, models/fused_decode.py).
(test_parity.py compares the default float32 engine, GGUF-native where the kernels build,
with transformers.)"""

from __future__ import annotations

import pytest
from helpers.runs import engine_logits

from thinkstream import LLM, SamplingParams
from thinkstream.kernels.gguf import load_gguf_kernels
from thinkstream.models.gguf_linear import GGUFLinear

pytestmark = [pytest.mark.integration, pytest.mark.slow,
              pytest.mark.skipif(load_gguf_kernels() is None, reason="no native kernels here")]

TEXT = ("The history of streaming inference begins with the observation that input rarely "
        "arrives all at once. Speech is transcribed word by word, documents are retrieved one "
        "passage at a time, and users type their questions over several seconds.")


@pytest.fixture(scope="module", params=["smollm2", "gemma3"])
def twins(request, refs):
    ck = refs.checkpoint(None if request.param == "smollm2" else "gemma3-270m")
    dense = LLM(checkpoint=ck, dtype="float32", quantization=None, max_num_seqs=4)
    native = LLM(checkpoint=ck, dtype="float32", quantization="gguf", max_num_seqs=4)
    return request.param, dense, native


def test_every_prompt_row_on_the_kernel_matches_float32(twins) -> None:
    name, dense, native = twins
    model = native.engine.model
    linears = [m for m in model.modules() if isinstance(m, GGUFLinear)]
    assert len(linears) == 4 * model.cfg.num_layers + 1  # every linear and the head
    ids = native.tokenizer.encode(TEXT, add_special_tokens=True)[:40]
    for m in linears:
        m.max_rows = len(ids)
    model.lm_head.native_max_rows = len(ids)
    try:
        got = engine_logits(native, ids)
    finally:
        for m in linears:
            m.max_rows = 8
        model.lm_head.native_max_rows = 8
    want = engine_logits(dense, ids)
    assert (got - want).abs().max().item() < 1e-3, name


def test_decode_on_the_kernel_matches_float32(twins) -> None:
    name, dense, native = twins
    params = SamplingParams(temperature=0, max_tokens=6, ignore_eos=True, logprobs=2)
    prompts = [native.tokenizer.encode(TEXT[:90], add_special_tokens=True), [1, 2, 3, 4]]
    assert native.engine.model.fused is not None  # decode runs the native decoder stack
    a, b = dense.generate(prompts, params), native.generate(prompts, params)
    for x, y in zip(a, b, strict=True):
        assert x.outputs[0].token_ids == y.outputs[0].token_ids, name
        for px, py in zip(x.outputs[0].logprobs, y.outputs[0].logprobs, strict=True):
            assert px.keys() == py.keys()
            assert max(abs(px[t].logprob - py[t].logprob) for t in px) < 1e-3
    assert native.engine.check_integrity() is None
