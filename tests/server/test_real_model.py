"""Integration: the real default model behind a live server on 127.0.0.1, driven by the
official ``openai`` client and by ``lm-eval`` (``local-completions``) on a local task."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import final_output

from thinkstream.engine.llm_engine import LLMEngine
from thinkstream.sampling_params import SamplingParams

pytestmark = pytest.mark.integration
NAME = "smollm2"
DATA = Path(__file__).parent / "data"
MSGS = [{"role": "user", "content": "What is the capital of France?"}]


def test_chat_plain_and_streamed_agree(oai, real) -> None:
    plain = oai.chat.completions.create(model=NAME, messages=MSGS, max_tokens=12, temperature=0)
    text = plain.choices[0].message.content
    assert text and plain.choices[0].finish_reason in ("stop", "length")
    streamed = ""
    usage = None
    for chunk in oai.chat.completions.create(model=NAME, messages=MSGS, max_tokens=12,
                                             temperature=0, stream=True,
                                             stream_options={"include_usage": True}):
        if chunk.choices:
            streamed += chunk.choices[0].delta.content or ""
        if chunk.usage:
            usage = chunk.usage
    assert streamed == text
    ids = real.engine.tokenizer.apply_chat_template(MSGS, tokenize=True)
    assert usage.prompt_tokens == plain.usage.prompt_tokens == len(ids)
    assert usage.completion_tokens == plain.usage.completion_tokens
    real.wait_idle()


def test_completions_echo_logprobs_n_stop_seed(oai, real) -> None:
    out = oai.completions.create(model=NAME, prompt="The capital of France is", max_tokens=1,
                                 echo=True, logprobs=1, temperature=0)
    lp = out.choices[0].logprobs
    n_prompt = len(real.engine.tokenizer.encode("The capital of France is"))
    assert out.usage.prompt_tokens == n_prompt and out.usage.completion_tokens == 1
    assert len(lp.token_logprobs) == n_prompt + 1 and lp.token_logprobs[0] is None
    assert out.choices[0].text.startswith("The capital of France is")

    two = oai.completions.create(model=NAME, prompt="Once upon a time", max_tokens=6, n=2,
                                 temperature=1.0, seed=11)
    assert sorted(c.index for c in two.choices) == [0, 1]
    again = oai.completions.create(model=NAME, prompt="Once upon a time", max_tokens=6, n=2,
                                   temperature=1.0, seed=11)
    assert [c.text for c in two.choices] == [c.text for c in again.choices]
    tok = real.engine.tokenizer
    produced = sum(len(tok.encode(c.text)) for c in two.choices)
    assert two.usage.completion_tokens == 12 or abs(two.usage.completion_tokens - produced) <= 2

    greedy = oai.completions.create(model=NAME, prompt="1, 2, 3, 4,", max_tokens=8, temperature=0)
    text = greedy.choices[0].text
    stop = text.strip()[:2] if len(text.strip()) >= 2 else None
    if stop:
        cut = oai.completions.create(model=NAME, prompt="1, 2, 3, 4,", max_tokens=8,
                                     temperature=0, stop=[stop])
        assert cut.choices[0].text == text[: text.index(stop)]
        assert cut.choices[0].finish_reason == "stop"
    real.wait_idle()


def _hf_tokenizer_dir(engine: LLMEngine, path: Path) -> Path:
    """The engine's tokenizer as a local HF tokenizer directory (lm-eval counts tokens)."""
    path.mkdir(parents=True, exist_ok=True)
    engine.tokenizer.backend.save(str(path / "tokenizer.json"))
    special = engine.tokenizer.special_tokens
    (path / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": engine.max_model_len,
        **{k: v for k, v in special.items() if k in ("bos_token", "eos_token", "unk_token",
                                                      "pad_token")}}))
    return path


def _own_loglikelihood(real, context: str, continuation: str) -> float:
    tok = real.engine.tokenizer
    whole = tok.encode(context + continuation, add_special_tokens=False)
    ctx = tok.encode(context, add_special_tokens=False)
    ids = ctx + whole[len(ctx):]

    plp = final_output(real.llm, ids, SamplingParams(max_tokens=1, temperature=0,
                                                     prompt_logprobs=1)).prompt_logprobs
    return sum(e[t].logprob for e, t in zip(plp[len(ctx):], ids[len(ctx):], strict=True))


@pytest.mark.slow
@pytest.mark.parametrize("tokenized", [True, False])
def test_lm_eval_loglikelihoods_match_engine(real, tmp_path, monkeypatch, tokenized) -> None:
    lm_eval = pytest.importorskip("lm_eval")
    from lm_eval.tasks import TaskManager

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    task_dir = tmp_path / "tasks"
    task_dir.mkdir()
    yaml = (DATA / "tiny_mc.yaml").read_text().replace(
        "test: tiny_mc.jsonl", f"test: {DATA / 'tiny_mc.jsonl'}")
    (task_dir / "tiny_mc.yaml").write_text(yaml)
    tokdir = _hf_tokenizer_dir(real.engine, tmp_path / "tok")
    results = lm_eval.simple_evaluate(
        model="local-completions",
        model_args={"base_url": f"{real.url}/v1/completions", "model": NAME,
                    "tokenizer": str(tokdir), "tokenizer_backend": "huggingface",
                    "tokenized_requests": tokenized, "num_concurrent": 1, "max_retries": 1},
        tasks=["thinkstream_tiny_mc"],  # lm-eval's own thousands of tasks left unindexed (~10 s)
        task_manager=TaskManager(include_path=str(task_dir), include_defaults=False),
        log_samples=True, limit=4,
    )
    samples = results["samples"]["thinkstream_tiny_mc"]
    assert len(samples) == 4
    checked = 0
    for sample in samples:
        for (context, continuation), resp in zip(sample["arguments"], sample["resps"], strict=True):
            ll = resp[0][0]
            assert ll == pytest.approx(_own_loglikelihood(real, context, continuation), abs=1e-3)
            checked += 1
    assert checked == 12
    assert 0.0 <= results["results"]["thinkstream_tiny_mc"]["acc,none"] <= 1.0
    real.wait_idle()
