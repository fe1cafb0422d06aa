"""Weight streaming on the tiny model, written to disk as a Hugging Face safetensors
checkpoint: windows of 1 and 2 layers give exactly the loaded model's logits and tokens,
each step reads every layer once (the window wraps into the next step), and a
tensor-parallel pair streams its slices with the same result."""

from __future__ import annotations

import pytest
import torch
from helpers.tiny import tiny_checkpoint
from safetensors.torch import save_file

from thinkstream import LLM, SamplingParams
from thinkstream.distributed.streaming import LayerStream
from thinkstream.loading import LoadedCheckpoint
from thinkstream.loading.names import _HF_GLOBAL, _HF_LAYER

GREEDY = SamplingParams(temperature=0, max_tokens=6, ignore_eos=True)
PROMPTS = ["The quick brown fox", "Paris is the capital of France"]
CKPT = tiny_checkpoint("llama", 0, num_layers=4)
ENGINE = dict(dtype="float32", num_blocks=64, block_size=4, num_threads=1)


def _hf_name(canonical: str) -> str:
    to_hf = {v: k for k, v in _HF_LAYER.items()} | {v: k for k, v in _HF_GLOBAL.items()}
    stem, kind = canonical.rsplit(".", 1)
    if stem.startswith("layers."):
        _, i, part = stem.split(".", 2)
        return f"model.layers.{i}.{to_hf[part]}.{kind}"
    return f"{to_hf[stem]}.{kind}"


@pytest.fixture(scope="module")
def on_disk(tmp_path_factory) -> LoadedCheckpoint:
    """The tiny checkpoint as a safetensors file, with no tensor in memory."""
    ckpt = CKPT
    path = tmp_path_factory.mktemp("tiny-hf")
    save_file({_hf_name(k): v.contiguous() for k, v in ckpt.tensors.items()},
              str(path / "model.safetensors"))
    return LoadedCheckpoint(ckpt.config, {}, ckpt.tokenizer, path)


@pytest.fixture(scope="module")
def loaded() -> list[list[int]]:
    llm = LLM(checkpoint=CKPT, **ENGINE)
    return [list(o.outputs[0].token_ids) for o in llm.generate(PROMPTS, GREEDY)]


@pytest.mark.parametrize("window", [1, 2])
def test_streamed_tokens_equal_loaded(on_disk, loaded, window: int) -> None:
    llm = LLM(checkpoint=on_disk, max_weight_memory_mb=1, weight_window=window, **ENGINE)
    layers = llm.engine.model.layers
    assert isinstance(layers, LayerStream) and layers.window == window
    outs = llm.generate(PROMPTS, GREEDY)
    assert [list(o.outputs[0].token_ids) for o in outs] == loaded
    steps = 6  # one prefill step of both prompts, then 5 decode steps
    n = on_disk.config.num_layers
    assert layers.loads == steps * n + window  # every layer once a step, and the next window
    resident = [p for p in llm.engine.model.layers._pending.values() if p.done()]
    assert len(resident) <= window
    llm.engine.check_integrity()


def test_streamed_logits_equal_loaded(on_disk) -> None:
    full = LLM(checkpoint=CKPT, **ENGINE).engine
    streamed = LLM(checkpoint=on_disk, max_weight_memory_mb=1, weight_window=1, **ENGINE).engine
    ids = torch.tensor(full.tokenizer.encode(PROMPTS[1]))
    pos = torch.arange(len(ids))
    from thinkstream.attention.metadata import SeqSlice, build_attention_metadata

    logits = []
    for engine in (full, streamed):
        runner = engine.runner
        meta = build_attention_metadata([SeqSlice([0, 1, 2, 3, 4, 5, 6, 7], 0, len(ids))], 4,
                                        runner.kv_caches, None, "cpu", runner.attention)
        with torch.inference_mode():
            logits.append(engine.model.compute_logits(engine.model(ids, pos, meta)))
    assert torch.equal(logits[0], logits[1])


def test_streamed_with_a_bfloat16_kv_cache_equals_loaded(on_disk) -> None:
    """``kv_cache_dtype="bfloat16"`` with weight streaming: the streamed runner's caches are
    bfloat16 and its tokens the loaded model's with the same cache."""
    outs = []
    for ckpt, options in ((CKPT, {}), (on_disk, {"max_weight_memory_mb": 1, "weight_window": 1})):
        llm = LLM(checkpoint=ckpt, kv_cache_dtype="bfloat16", **options, **ENGINE)
        assert llm.engine.runner.kv_caches[0][0].dtype == torch.bfloat16
        outs.append([list(o.outputs[0].token_ids) for o in llm.generate(PROMPTS, GREEDY)])
    assert outs[0] == outs[1]


def test_tensor_parallel_ranks_stream_their_slices(on_disk, loaded) -> None:
    llm = LLM(checkpoint=on_disk, tensor_parallel_size=2, max_weight_memory_mb=1,
              weight_window=1, **ENGINE)
    try:
        assert isinstance(llm.engine.model.layers, LayerStream)
        outs = llm.generate(PROMPTS, GREEDY)
        assert [list(o.outputs[0].token_ids) for o in outs] == loaded
    finally:
        llm.engine.close()
