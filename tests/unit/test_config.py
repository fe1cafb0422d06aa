"""EngineConfig refuses bad values when it is made, before any model loads, with a
ValueError naming the field (the CLI prints it as ``thinkstream: error: ...``)."""

from __future__ import annotations

import re

import pytest

from thinkstream.config import EngineConfig, context_len


@pytest.mark.parametrize("threads", [0, -2, 1.5, "2"])
def test_num_threads_below_one_or_not_an_integer_is_refused(threads: object) -> None:
    with pytest.raises(ValueError, match="num_threads"):
        EngineConfig(num_threads=threads)


@pytest.mark.parametrize("threads", [None, 1, 3])
def test_num_threads_none_or_positive_is_kept(threads: int | None) -> None:
    assert EngineConfig(num_threads=threads).num_threads == threads


def test_quantization_none_spelled_out() -> None:
    """"none" (the CLI's spelling) is None; anything else unknown is refused naming the field."""
    assert EngineConfig(quantization="none").quantization is None
    with pytest.raises(ValueError, match="quantization must be"):
        EngineConfig(quantization="q4")


def test_max_model_len_past_the_model_is_refused_unless_opted_in() -> None:
    """As vLLM: a max_model_len over the model's context is a ValueError naming both, not a
    silent cap; THINKSTREAM_ALLOW_LONG_MAX_MODEL_LEN=1 takes it as asked."""
    assert context_len(None, 512, {}) == 512
    assert context_len(512, 512, {}) == 512 and context_len(100, 512, {}) == 100
    with pytest.raises(ValueError) as err:
        context_len(1024, 512, {})
    assert str(err.value).startswith("max_model_len: the requested 1024 is greater than the "
                                     "model's maximum context of 512 tokens")
    assert "THINKSTREAM_ALLOW_LONG_MAX_MODEL_LEN=1" in str(err.value)
    for opt_in in ("1", "true", "TRUE"):
        assert context_len(1024, 512, {"THINKSTREAM_ALLOW_LONG_MAX_MODEL_LEN": opt_in}) == 1024
    with pytest.raises(ValueError):
        context_len(1024, 512, {"THINKSTREAM_ALLOW_LONG_MAX_MODEL_LEN": "0"})


def test_llm_and_cli_refuse_a_max_model_len_past_the_model(monkeypatch, capsys) -> None:
    """The tiny model's context is 512: ``LLM(max_model_len=513)`` raises, the CLI exits 2
    with the message; opted in through the environment, the engine takes 1024."""
    from helpers.tiny import tiny_checkpoint

    import thinkstream.llm
    from thinkstream import cli

    ckpt = tiny_checkpoint()
    real = thinkstream.llm.LLM
    monkeypatch.delenv("THINKSTREAM_ALLOW_LONG_MAX_MODEL_LEN", raising=False)
    with pytest.raises(ValueError, match="the requested 513 is greater than"):
        real(checkpoint=ckpt, max_model_len=513, num_blocks=8, block_size=4)
    monkeypatch.setattr(thinkstream.llm, "LLM", lambda model, **kw: real(checkpoint=ckpt, **kw))
    assert cli.main(["run", "Hi", "--max-model-len", "1024", "--kv-cache-memory-mb", "1"]) == 2
    assert capsys.readouterr().err.startswith(
        "thinkstream: error: max_model_len: the requested 1024 is greater than the model's "
        "maximum context of 512 tokens")
    monkeypatch.setenv("THINKSTREAM_ALLOW_LONG_MAX_MODEL_LEN", "1")
    llm = real(checkpoint=ckpt, max_model_len=1024, num_blocks=512, block_size=4)
    assert (llm.engine.context_len, llm.engine.max_model_len) == (1024, 1024)


@pytest.mark.parametrize(("device", "message"), [
    ("tpu", "device 'tpu': not a device (cpu, cuda or cuda:N)"),
    ("mps", "device 'mps': thinkstream runs on cpu or cuda"),
    ("cuda", "device 'cuda': CUDA is not available to this torch"),
])
def test_a_device_this_process_cannot_use_is_refused_before_loading(
        monkeypatch, capsys, device: str, message: str) -> None:
    """``--device cuda`` on a CPU wheel raised torch's AssertionError (a traceback) after
    the weights loaded; ``--device tpu`` a RuntimeError listing every torch backend."""
    import torch

    import thinkstream.engine.llm_engine as engine_module
    from thinkstream import cli
    from thinkstream.llm import LLM

    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("CUDA is available here")

    def no_load(*args, **kwargs):
        raise AssertionError("the model must not load for a bad device")

    monkeypatch.setattr(engine_module, "load_checkpoint", no_load)
    with pytest.raises(ValueError, match=re.escape(message)):
        LLM(device=device)
    assert cli.main(["run", "Hi", "--device", device]) == 2
    assert capsys.readouterr().err.startswith(f"thinkstream: error: {message}")
