"""``LLM`` takes its inputs as vLLM's does: vLLM's prompt dicts and one ``SamplingParams``
per prompt (a dict prompt was read as the list of its keys, a list of params raised
``AttributeError``); ``chat``'s template arguments; ``stream`` with parallel paths; ``n``
capped."""

from __future__ import annotations

import pytest
from helpers.tiny import tiny_checkpoint

from thinkstream.engine.llm_engine import RequestError
from thinkstream.engine.request import CompletionOutput, Logprob
from thinkstream.llm import LLM
from thinkstream.loading.chat_template import NoChatTemplateError
from thinkstream.sampling_params import ParamError, SamplingParams

GREEDY = SamplingParams(temperature=0, max_tokens=4)


@pytest.fixture(scope="module")
def llm() -> LLM:
    return LLM(checkpoint=tiny_checkpoint(), dtype="float32", num_blocks=64, block_size=4)


def tokens(outs) -> list[list[int]]:
    return [o.outputs[0].token_ids for o in outs]


def test_vllm_prompt_dicts_are_their_prompts(llm: LLM) -> None:
    text, ids = "The quick brown fox", [5, 6, 7, 8]
    want = tokens(llm.generate([text, ids], GREEDY))
    assert tokens(llm.generate([{"prompt": text}, {"prompt_token_ids": ids}], GREEDY)) == want
    assert tokens(llm.generate({"prompt": text}, GREEDY)) == want[:1]
    assert [o.outputs[0].token_ids for o in llm.stream({"prompt_token_ids": ids}, GREEDY)][-1] \
        == want[1]
    with pytest.raises(ParamError, match="'multi_modal_data', 'prompt'") as err:
        llm.generate({"prompt": text, "multi_modal_data": {}}, GREEDY)
    assert err.value.param == "prompt"
    assert llm.engine.kv.num_free_blocks == llm.engine.kv.num_blocks


def test_one_sampling_params_per_prompt(llm: LLM) -> None:
    prompts = ["The quick brown fox", "Paris is the capital"]
    short, long = SamplingParams(temperature=0, max_tokens=2), SamplingParams(temperature=0,
                                                                             max_tokens=5)
    outs = llm.generate(prompts, [short, long])
    assert tokens(outs) == tokens(llm.generate(prompts[:1], short)) + tokens(
        llm.generate(prompts[1:], long))
    assert [len(t) for t in tokens(outs)] == [2, 5]
    for bad in ([short], [short, long, short], [short, "x"]):
        with pytest.raises(ParamError) as err:
            llm.generate(prompts, bad)
        assert err.value.param == "sampling_params"
    llm.engine.check_integrity()
    assert llm.engine.kv.num_free_blocks == llm.engine.kv.num_blocks


def test_a_prompt_that_is_neither_text_nor_ids_is_a_request_error(llm: LLM) -> None:
    """``generate(None)`` / ``stream(5)`` raised a bare ``TypeError`` ('NoneType' object is
    not iterable); now the typed error naming ``prompt``, and the engine serves on."""
    for bad in (None, 5, 2.5):
        with pytest.raises(RequestError, match=f"prompt: text .* not {type(bad).__name__}") as err:
            llm.generate(bad, GREEDY)
        assert err.value.param == "prompt"
        with pytest.raises(RequestError, match="prompt: text"):
            llm.stream(bad, GREEDY)
    assert len(tokens(llm.generate("Paris", GREEDY))[0]) == 4
    assert llm.engine.kv.num_free_blocks == llm.engine.kv.num_blocks


def test_chat_continues_the_final_message_as_vllm_does(llm: LLM) -> None:
    """``chat(..., add_generation_prompt=False, continue_final_message=True)`` (vLLM's
    assistant prefill) raised ``TypeError: got multiple values for 'add_generation_prompt'``:
    the flag was fixed to True, so prefill was impossible from Python."""
    convo = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "The cap"}]
    out = llm.chat(convo, GREEDY, add_generation_prompt=False, continue_final_message=True)[0]
    assert llm.tokenizer.decode(out.prompt_token_ids, skip_special_tokens=False).endswith(
        "<|im_start|>assistant\nThe cap")
    plain = llm.chat(convo[:1], GREEDY, add_generation_prompt=False)[0]
    assert llm.tokenizer.decode(plain.prompt_token_ids, skip_special_tokens=False).endswith(
        "hi<|im_end|>\n")


TEMPLATE = ("{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
            "{% if add_generation_prompt %}[assistant]{{ suffix }}{% endif %}")


def test_chat_template_renders_in_place_of_the_models(llm: LLM) -> None:
    """vLLM's ``chat(chat_template=..., chat_template_kwargs=...)``: the template was passed
    to the model's template as a variable named ``chat_template`` (ChatML rendered anyway)
    and ``chat_template_kwargs`` as one named so; a template that does not compile or that
    rejects the messages is a ``ParamError`` naming the input at fault."""
    convo = [{"role": "user", "content": "hi"}]
    out = llm.chat(convo, GREEDY, chat_template=TEMPLATE, chat_template_kwargs={"suffix": ":"})
    want = llm.tokenizer.encode("[user] hi\n[assistant]:", add_special_tokens=False)
    assert out[0].prompt_token_ids == want
    assert out[0].outputs[0].token_ids == tokens(llm.generate([want], GREEDY))[0]
    assert llm.chat_prompt(convo, chat_template=TEMPLATE, suffix=":") == want
    assert llm.chat(convo, GREEDY, tools=[{"type": "function", "function": {"name": "f"}}],
                    chat_template="{{ tools[0].function.name }}")[0].prompt_token_ids \
        == llm.tokenizer.encode("f", add_special_tokens=False)
    for bad, param, text in (
            ("{% for %}", "chat_template", "chat_template does not compile (line 1: "),
            ("{{ raise_exception('no system turn') }}", "messages",
             "messages the chat template rejected them (TemplateError: no system turn)")):
        with pytest.raises(ParamError) as err:
            llm.chat(convo, GREEDY, chat_template=bad)
        assert err.value.param == param and str(err.value).startswith(text), str(err.value)
    with pytest.raises(ParamError) as err:
        llm.chat(convo, GREEDY, chat_template_kwargs={"add_generation_prompt": False})
    assert err.value.param == "chat_template_kwargs"
    prefill = [*convo, {"role": "assistant", "content": "The cap"}]  # as vLLM merges them
    assert llm.chat(prefill, GREEDY, add_generation_prompt=False, chat_template_kwargs={
        "continue_final_message": True})[0].prompt_token_ids == llm.chat_prompt(
            prefill, False, continue_final_message=True)
    plain = llm.tokenizer.chat_template
    llm.tokenizer.chat_template = None  # a base model: its own template is none
    try:
        assert llm.chat_prompt(convo, chat_template=TEMPLATE) == llm.tokenizer.encode(
            "[user] hi\n[assistant]", add_special_tokens=False)
        with pytest.raises(NoChatTemplateError):
            llm.chat_prompt(convo)
    finally:
        llm.tokenizer.chat_template = plain
    assert llm.engine.kv.num_free_blocks == llm.engine.kv.num_blocks


def test_stream_takes_parallel_paths_as_generate_does(llm: LLM) -> None:
    """``stream(..., parallel=...)`` was a ``TypeError``: its last output is ``generate``'s,
    the paths' deltas (``new_paths``) add up to its ``paths``; closing it early frees all."""
    params = SamplingParams(temperature=0.8, seed=3, max_tokens=4, ignore_eos=True)
    par = {"paths": 2, "path_tokens": 3, "merge": "summary"}
    want = llm.generate("The quick brown fox", params, parallel=par)[0].outputs[0]
    outs = list(llm.stream("The quick brown fox", params, parallel=par))
    got = outs[-1].outputs[0]
    assert (got.text, got.token_ids, got.paths) == (want.text, want.token_ids, want.paths)
    assert len(got.paths) == 2 and "".join(o.outputs[0].new_text for o in outs) == got.text
    for i, path in enumerate(got.paths):
        assert "".join(t for o in outs for k, t in o.outputs[0].new_paths if k == i) == path
    it = llm.stream("The quick brown fox", params, parallel=par)
    next(it)
    it.close()
    with pytest.raises(ParamError) as err:
        llm.stream([], params, parallel=par)
    assert str(err.value) == "prompt must not be empty"
    with pytest.raises(ParamError) as err:
        llm.stream("The quick", SamplingParams(n=2), parallel=par)
    assert err.value.param == "n"
    llm.engine.check_integrity()
    assert llm.engine.kv.num_free_blocks == llm.engine.kv.num_blocks


def test_n_is_capped_and_an_n_past_the_pool_finishes(llm: LLM) -> None:
    """A huge ``n`` made its sequences one by one before anything ran (``n=10**9``: minutes,
    then out of memory); now a ``ParamError`` naming ``n`` past ``EngineConfig.max_n``. An
    ``n`` above ``max_num_seqs`` whose sequences never fit the pool together still ends."""
    with pytest.raises(ParamError) as err:
        llm.generate("The quick", SamplingParams(n=10**9))
    assert (err.value.param, str(err.value)) == (
        "n", "n must be <= 1024 (EngineConfig.max_n), got 1000000000")
    small = LLM(checkpoint=tiny_checkpoint(), dtype="float32", num_blocks=6, block_size=4,
                max_num_seqs=4, max_n=9)
    for call in (lambda p: small.generate("The quick", p), lambda p: small.stream("x", p),
                 lambda p: small.open_session("x", sampling_params=p)):
        with pytest.raises(ParamError, match="n must be <= 9 "):
            call(SamplingParams(n=10))
    out = small.generate([5, 6, 7, 8, 9], SamplingParams(n=9, max_tokens=6, ignore_eos=True,
                                                         seed=0))[0]
    assert [len(o.token_ids) for o in out.outputs] == [6] * 9
    small.engine.check_integrity()
    assert small.engine.kv.num_free_blocks == small.engine.kv.num_blocks


def test_vllm_names_cumulative_logprob_and_get_tokenizer(llm: LLM) -> None:
    """vLLM's ``CompletionOutput.cumulative_logprob`` (None without ``logprobs``) and
    ``LLM.get_tokenizer()`` were ``AttributeError``s."""
    scored = SamplingParams(temperature=0, max_tokens=4, logprobs=1, ignore_eos=True)
    for out in (llm.generate("The quick brown fox", scored)[0],
                [*llm.stream("The quick brown fox", scored)][-1]):
        o = out.outputs[0]
        assert len(o.token_ids) == 4  # the tiny model is sure of its tokens: a sum of zeros
        assert o.cumulative_logprob == sum(e[t].logprob for t, e in zip(o.token_ids, o.logprobs,
                                                                        strict=True))
    two = CompletionOutput(0, "ab", [7, 9], [{7: Logprob(-0.5, 1, "a"), 3: Logprob(-1.5, 2, "c")},
                                            {9: Logprob(-0.25, 2, "b")}], "length")
    assert two.cumulative_logprob == -0.75
    assert llm.generate("The quick brown fox", GREEDY)[0].outputs[0].cumulative_logprob is None
    assert llm.get_tokenizer() is llm.tokenizer
