"""What vLLM users expect beyond the OpenAI basics, one test per item: logit_bias (validated;
-100 bans a token, +100 forces one), assistant prefill (continue_final_message), /tokenize
/detokenize /tokenizer_info (and lm-eval's remote tokenizer on them), explicit nulls,
max_tokens=0 with echo, text-only content parts, unknown models, /metrics without a key,
--no-tool-prompt, cache_salt."""

from __future__ import annotations

import argparse
import json
from types import SimpleNamespace

import httpx
import pytest
from conftest import live_server, tiny_llm

from thinkstream.server.config import ServerConfig

KEY = "sk-extras-0123"
AUTH = {"Authorization": f"Bearer {KEY}"}
PROMPT = "The quick brown fox"


@pytest.fixture(scope="module")
def server():
    llm = tiny_llm()
    with live_server(llm, ServerConfig(served_model_name="tiny", api_keys=(KEY,),
                                       tool_prompt=False)) as live:
        yield live
    llm.shutdown()


def post(server, path: str, body: dict) -> httpx.Response:
    return httpx.post(server.url + path, json=body, headers=AUTH, timeout=60)


def error(r: httpx.Response, status: int) -> dict:
    assert r.status_code == status, r.text
    return r.json()["error"]


def test_logit_bias_is_validated(server) -> None:
    base = {"prompt": PROMPT, "max_tokens": 2}
    err = error(post(server, "/v1/completions", {**base, "logit_bias": {"abc": 1}}), 400)
    assert err == {"message": "logit_bias: 'abc' is not a token id of this model (0 to 319)",
                   "type": "invalid_request_error", "param": "logit_bias",
                   "code": "invalid_value"}
    err = error(post(server, "/v1/completions", {**base, "logit_bias": {"320": 1}}), 400)
    assert err["param"] == "logit_bias" and "'320'" in err["message"]
    for key in ("\u00b2", "\u0661\u0662", "+5", "5.0"):  # str.isdigit() holds for "²" (was a 500)
        err = error(post(server, "/v1/completions", {**base, "logit_bias": {key: 1}}), 400)
        assert err["param"] == "logit_bias" and repr(key) in err["message"], key
    assert post(server, "/v1/completions", {**base, "logit_bias": {" 5 ": 1}}).status_code == 200
    err = error(post(server, "/v1/chat/completions", {
        "messages": [{"role": "user", "content": "hi"}], "logit_bias": {"5": -101}}), 400)
    assert err["message"] == "logit_bias biases must be in [-100, 100], got -101.0 for token 5"


def test_logit_bias_minus_100_bans_a_token(server) -> None:
    """Exact: the greedy pick with its best token banned is the runner-up (log-probabilities
    are the model's, before the bias, so both runs report the same top two)."""
    greedy = {"prompt": PROMPT, "max_tokens": 8, "temperature": 0, "logprobs": 2}
    first = post(server, "/v1/completions", greedy).json()["choices"][0]["logprobs"]
    best, runner_up = list(first["top_logprobs"][0])
    assert first["tokens"][0] == best
    top = server.engine.tokenizer.encode(best, add_special_tokens=False)
    assert len(top) == 1
    banned = post(server, "/v1/completions", {**greedy, "logit_bias": {str(top[0]): -100}})
    lp = banned.json()["choices"][0]["logprobs"]
    assert lp["tokens"][0] == runner_up and list(lp["top_logprobs"][0]) == [best, runner_up]
    forced = post(server, "/v1/completions", {**greedy, "logit_bias": {"7": 100}}).json()
    assert set(forced["choices"][0]["logprobs"]["tokens"]) == {
        server.engine.tokenizer.decode([7])}


def test_continue_final_message_prefills_the_assistant(server) -> None:
    messages = [{"role": "user", "content": "Name a colour."},
                {"role": "assistant", "content": "The colour is"}]
    tok = post(server, "/tokenize", {"messages": messages, "add_generation_prompt": False,
                                     "continue_final_message": True}).json()
    text = server.engine.tokenizer.decode(tok["tokens"])
    assert text == ("<|im_start|>user\nName a colour.<|im_end|>\n"
                    "<|im_start|>assistant\nThe colour is")
    r = post(server, "/v1/chat/completions", {"messages": messages, "max_tokens": 3,
                                              "add_generation_prompt": False,
                                              "continue_final_message": True})
    assert r.status_code == 200 and r.json()["usage"]["prompt_tokens"] == tok["count"]
    err = error(post(server, "/v1/chat/completions", {"messages": messages,
                                                      "continue_final_message": True}), 400)
    assert err["message"] == "continue_final_message: needs add_generation_prompt=false"


def test_tokenize_detokenize_tokenizer_info(server) -> None:
    tokenizer = server.engine.tokenizer
    ids = tokenizer.encode(PROMPT)
    r = post(server, "/tokenize", {"prompt": PROMPT, "return_token_strs": True})
    assert r.json() == {"count": len(ids), "max_model_len": server.engine.max_model_len,
                        "tokens": ids, "token_strs": tokenizer.convert_ids_to_tokens(ids)}
    assert post(server, "/detokenize", {"tokens": ids}).json() == {"prompt": PROMPT}
    chat = post(server, "/tokenize", {"messages": [{"role": "user", "content": "hi"}]}).json()
    assert chat["tokens"] == tokenizer.encode_chat([{"role": "user", "content": "hi"}], True)
    info = httpx.get(server.url + "/tokenizer_info", headers=AUTH).json()
    assert (info["eos_token"], info["eos_token_ids"], info["vocab_size"]) == ("<|im_end|>", [2], 320)
    assert info["chat_template"] == tokenizer.chat_template
    err = error(post(server, "/detokenize", {"tokens": [1, 99999]}), 400)
    assert err["message"] == "tokens: 99999 is not a token id of this model (0 to 319)"
    err = error(post(server, "/tokenize", {"prompt": "a", "messages": []}), 400)
    assert err["message"] == "prompt or messages: give exactly one"
    err = error(post(server, "/tokenize", {"messages": []}), 400)  # as chat completions
    assert (err["message"], err["param"]) == ("messages: must not be empty", "messages")


def test_lm_eval_remote_tokenizer_needs_no_local_copy(server) -> None:
    utils = pytest.importorskip("lm_eval.utils")
    base = server.url + "/v1/completions"
    assert utils.check_remote_tokenizer_support(base, auth_token=KEY)
    remote = utils.RemoteTokenizer(base, auth_token=KEY)
    assert remote.encode(PROMPT) == server.engine.tokenizer.encode(PROMPT, add_special_tokens=False)
    assert remote.decode(remote.encode(PROMPT)) == PROMPT
    assert remote.eos_token_id == 2


def test_explicit_null_means_the_default(server) -> None:
    nulls = {"n": None, "stream": None, "logprobs": None, "echo": None, "stop": None,
             "temperature": None, "top_p": None, "seed": None, "stream_options": None,
             "min_tokens": None, "ignore_eos": None, "skip_special_tokens": None,
             "include_stop_str_in_output": None, "presence_penalty": None, "user": None,
             "frequency_penalty": None, "logit_bias": None, "best_of": None, "suffix": None}
    body = {"prompt": PROMPT, "max_tokens": 4, "temperature": 0}
    plain = post(server, "/v1/completions", body).json()
    with_nulls = post(server, "/v1/completions", {**nulls, **body}).json()
    assert with_nulls["choices"] == plain["choices"]
    chat = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, "temperature": 0}
    chat_nulls = {"n": None, "stream": None, "logprobs": None, "top_logprobs": None,
                  "stop": None, "tools": None, "tool_choice": None, "parallel_tool_calls": None,
                  "max_completion_tokens": None, "add_generation_prompt": None,
                  "continue_final_message": None, "response_format": None}
    a = post(server, "/v1/chat/completions", chat).json()
    b = post(server, "/v1/chat/completions", {**chat_nulls, **chat}).json()
    assert a["choices"] == b["choices"]


def test_max_tokens_zero_with_echo_scores_the_prompt(server) -> None:
    body = {"prompt": PROMPT, "max_tokens": 0, "echo": True, "logprobs": 1}
    r = post(server, "/v1/completions", body).json()
    choice = r["choices"][0]
    n = len(server.engine.tokenizer.encode(PROMPT))
    assert choice["text"] == PROMPT and choice["finish_reason"] == "length"
    assert len(choice["logprobs"]["tokens"]) == n and choice["logprobs"]["token_logprobs"][0] is None
    assert r["usage"] == {"prompt_tokens": n, "completion_tokens": 0, "total_tokens": n,
                          "prompt_tokens_details": {"cached_tokens": 0}}
    with httpx.stream("POST", server.url + "/v1/completions", headers=AUTH, timeout=60,
                      json={**body, "stream": True}) as s:
        lines = [line for line in s.iter_lines() if line.startswith("data: {")]
    chunks = [json.loads(line[6:])["choices"][0] for line in lines]
    assert "".join(c["text"] for c in chunks) == PROMPT
    assert chunks[-1]["finish_reason"] == "length"
    err = error(post(server, "/v1/completions", {"prompt": PROMPT, "max_tokens": 0}), 400)
    assert err["message"] == "max_tokens: 0 is only allowed with echo=true (prompt scoring)"


@pytest.mark.parametrize("part", [{"type": "image_url", "image_url": {"url": "http://x/a.png"}},
                                  {"type": "input_audio", "input_audio": {"data": "AA==",
                                                                          "format": "wav"}}])
def test_content_part_the_model_cannot_take(server, part) -> None:
    r = post(server, "/v1/chat/completions", {"messages": [{"role": "user", "content": [
        {"type": "text", "text": "What is this?"}, part]}]})
    err = error(r, 400)
    assert err["message"] == (f"messages[0].content[1]: content parts of type {part['type']!r} "
                              "are not supported: this model takes text only")
    assert err["param"] == "messages[0].content"


def test_unknown_model_is_404_model_not_found(server) -> None:
    for path, body in (("/v1/completions", {"prompt": "x"}),
                       ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}]}),
                       ("/v1/responses", {"input": "x"})):
        r = post(server, path, {**body, "model": "gpt-9"})
        assert r.status_code == 404
        assert r.json() == {"error": {
            "message": "The model 'gpt-9' does not exist; this server serves 'tiny'",
            "type": "invalid_request_error", "param": "model", "code": "model_not_found"}}


def test_metrics_open_unless_required() -> None:
    for require, status in ((False, 200), (True, 401)):
        llm = tiny_llm()
        cfg = ServerConfig(served_model_name="tiny", api_keys=(KEY,), metrics_require_key=require)
        with live_server(llm, cfg) as live:
            r = httpx.get(live.url + "/metrics")
            assert r.status_code == status
            if status == 200:
                assert "thinkstream_engine_healthy" in r.text
            assert httpx.get(live.url + "/metrics", headers=AUTH).status_code == 200
            assert httpx.get(live.url + "/v1/models").status_code == 401
        llm.shutdown()


def test_no_tool_prompt_refuses_tools_for_a_template_without_them(server) -> None:
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    r = post(server, "/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}],
                                              "tools": tools})
    assert error(r, 400) == {
        "message": "tools: this model's chat template has no tool support and the server runs "
                   "with --no-tool-prompt", "type": "invalid_request_error", "param": "tools",
        "code": "tools_unsupported"}
    r = post(server, "/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}],
                                              "tools": tools, "tool_choice": "none",
                                              "max_tokens": 2})
    assert r.status_code == 200


def test_chat_template_kwargs_cannot_override_the_request(server) -> None:
    r = post(server, "/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}],
                                              "chat_template_kwargs": {"tools": []}})
    assert error(r, 400)["message"] == ("chat_template_kwargs: 'tools' is set by the request's "
                                        "own fields")


def test_cache_salt_separates_prefix_caches(server) -> None:
    kv = server.engine.kv
    body = {"messages": [{"role": "user", "content": "salted prompt " * 8}], "max_tokens": 1}

    def run(salt: str) -> int:
        before = kv.prefix_hits
        r = httpx.post(server.url + "/v1/chat/completions", headers=AUTH,
                       json={**body, "cache_salt": salt})
        assert r.status_code == 200, r.text
        return kv.prefix_hits - before

    assert run("a") == 0
    assert run("b") == 0  # same prompt, another salt: nothing shared
    assert run("a") >= 16  # the first request's blocks

    def respond(salt: str) -> int:  # the Responses API honours it too (same prompt tokens)
        before = kv.prefix_hits
        r = httpx.post(server.url + "/v1/responses", headers=AUTH, json={
            "input": body["messages"][0]["content"], "max_output_tokens": 1, "cache_salt": salt})
        assert r.status_code == 200, r.text
        return kv.prefix_hits - before

    assert respond("c") == 0
    assert respond("a") >= 16

    def session(salt: str) -> int:  # and a session open
        before = kv.prefix_hits
        sid = httpx.post(server.url + "/v1/sessions", headers=AUTH, json={
            "messages": [], "prompt": body["messages"][0]["content"], "max_tokens": 1,
            "cache_salt": salt}).json()["id"]
        assert httpx.post(f"{server.url}/v1/sessions/{sid}/close", headers=AUTH).status_code == 200
        return kv.prefix_hits - before

    assert session("e") == 0
    assert session("a") >= 16
    server.wait_idle()


def test_usage_reports_prefix_cache_hits(server) -> None:
    """usage.prompt_tokens_details.cached_tokens: the prompt tokens served from the prefix
    cache, as OpenAI reports them: 0 the first time, the full blocks the second time, in
    plain and streamed answers, chat and completions."""
    bs = server.engine.kv.block_size
    prompt = " ".join(f"word{i}" for i in range(40))  # unlike the other tests' prompts
    n = len(server.engine.tokenizer.encode(prompt))
    hit = (n - 1) // bs * bs  # full blocks before the last prompt token
    assert hit >= bs
    body = {"prompt": prompt, "max_tokens": 2, "temperature": 0}
    first = post(server, "/v1/completions", body).json()["usage"]
    assert first["prompt_tokens_details"] == {"cached_tokens": 0}
    again = post(server, "/v1/completions", body).json()["usage"]
    assert again["prompt_tokens"] == n and again["prompt_tokens_details"] == {"cached_tokens": hit}
    with httpx.stream("POST", server.url + "/v1/completions", headers=AUTH, timeout=60,
                      json={**body, "stream": True,
                            "stream_options": {"include_usage": True}}) as s:
        lines = [json.loads(line[6:]) for line in s.iter_lines() if line.startswith("data: {")]
    assert lines[-1]["usage"]["prompt_tokens_details"] == {"cached_tokens": hit}
    chat = {"messages": [{"role": "user", "content": prompt}], "max_tokens": 2, "temperature": 0}
    post(server, "/v1/chat/completions", chat)
    usage = post(server, "/v1/chat/completions", chat).json()["usage"]
    assert usage["prompt_tokens_details"]["cached_tokens"] == (usage["prompt_tokens"] - 1) // bs * bs
    with httpx.stream("POST", server.url + "/v1/chat/completions", headers=AUTH, timeout=60,
                      json={**chat, "stream": True,
                            "stream_options": {"include_usage": True}}) as s:
        lines = [json.loads(line[6:]) for line in s.iter_lines() if line.startswith("data: {")]
    assert lines[-1]["usage"] == usage


def test_truncate_prompt_tokens_keeps_the_prompts_last_tokens(server) -> None:
    """vLLM's ``truncate_prompt_tokens`` was ignored: the whole prompt was computed (or a
    prompt past the context refused) where vLLM reads its last k tokens."""
    ids = list(range(5, 45))
    base = {"max_tokens": 4, "temperature": 0, "logprobs": 1}
    cut = post(server, "/v1/completions", {"prompt": ids, **base, "truncate_prompt_tokens": 6,
                                           "echo": True}).json()
    tail = post(server, "/v1/completions", {"prompt": ids[-6:], **base, "echo": True}).json()
    assert cut["usage"]["prompt_tokens"] == 6
    assert cut["choices"][0]["text"] == tail["choices"][0]["text"]
    assert cut["choices"][0]["logprobs"]["token_logprobs"][6:] == pytest.approx(
        tail["choices"][0]["logprobs"]["token_logprobs"][6:], abs=1e-5)
    whole = post(server, "/v1/completions", {"prompt": ids, **base, "truncate_prompt_tokens": 99})
    assert whole.json()["usage"]["prompt_tokens"] == len(ids)
    chat = post(server, "/v1/chat/completions", {
        "messages": [{"role": "user", "content": "The quick brown fox"}], "max_tokens": 2,
        "truncate_prompt_tokens": 3}).json()
    assert chat["usage"]["prompt_tokens"] == 3
    for bad in (0, -2):
        body = error(post(server, "/v1/completions", {"prompt": ids, **base,
                                                       "truncate_prompt_tokens": bad}), 400)
        assert body["param"] == "truncate_prompt_tokens"
    head = post(server, "/v1/completions", {"prompt": ids, **base, "truncate_prompt_tokens": 6,
                                            "truncation_side": "right", "echo": True}).json()
    first = post(server, "/v1/completions", {"prompt": ids[:6], **base, "echo": True}).json()
    assert head["choices"][0]["text"] == first["choices"][0]["text"]  # vLLM's "right": first k
    assert head["usage"]["prompt_tokens"] == 6


# ------------------------------------------------ vLLM's output options (server.vllm_fields)
CHAT_HI = {"messages": [{"role": "user", "content": "Name a colour."}], "max_tokens": 4,
           "temperature": 0}


def events(r: httpx.Response) -> list[dict]:
    assert r.status_code == 200, r.text
    lines = [line[6:] for line in r.text.splitlines() if line.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    return [json.loads(line) for line in lines[:-1]]


def test_prompt_logprobs_on_chat_match_completions_and_echo(server) -> None:
    """Chat's top-level prompt_logprobs, completions' per-choice ones and the echoed prompt's
    logprobs are the same engine numbers: one entry per prompt token, None first, the
    prompt token plus the top k keyed by id."""
    chat = post(server, "/v1/chat/completions", {**CHAT_HI, "prompt_logprobs": 2}).json()
    ids = post(server, "/tokenize", {"messages": CHAT_HI["messages"]}).json()["tokens"]
    plp = chat["prompt_logprobs"]
    assert len(plp) == len(ids) == chat["usage"]["prompt_tokens"] and plp[0] is None
    for tid, entry in zip(ids[1:], plp[1:], strict=True):
        ranks = {e["rank"] for e in entry.values()}
        assert ranks == {1, 2, entry[str(tid)]["rank"]} and len(entry) == len(ranks)
        assert entry[str(tid)]["decoded_token"] == server.engine.tokenizer.decode([tid])
    cmpl = post(server, "/v1/completions", {"prompt": ids, "max_tokens": 1, "n": 2,
                                            "prompt_logprobs": 2, "echo": True,
                                            "logprobs": 1}).json()
    assert [c["prompt_logprobs"] for c in cmpl["choices"]] == [plp, plp]
    echoed = cmpl["choices"][0]["logprobs"]["token_logprobs"][:len(ids)]
    assert echoed == [None] + [e[str(t)]["logprob"] for t, e in zip(ids[1:], plp[1:], strict=True)]
    assert "prompt_logprobs" not in post(server, "/v1/chat/completions", CHAT_HI).json()
    for path, body in (("/v1/chat/completions", CHAT_HI), ("/v1/completions", {"prompt": "x"})):
        err = error(post(server, path, {**body, "prompt_logprobs": 1, "stream": True}), 400)
        assert (err["param"], err["message"]) == (
            "prompt_logprobs", "prompt_logprobs: not available when stream is true")
        assert error(post(server, path, {**body, "prompt_logprobs": 21}), 400)["param"] \
            == "prompt_logprobs"
        events(post(server, path, {**body, "prompt_logprobs": 0, "stream": True}))  # vLLM's rule
    server.wait_idle()


def test_chat_echo_puts_the_last_message_before_the_answer(server) -> None:
    """vLLM's rule: echoed when the last message's role is the response's (assistant
    prefill), streamed as one chunk after the role; a user turn is not echoed."""
    prefill = {"messages": [*CHAT_HI["messages"], {"role": "assistant", "content": "It is"}],
               "max_tokens": 4, "temperature": 0, "add_generation_prompt": False,
               "continue_final_message": True}
    plain = post(server, "/v1/chat/completions", prefill).json()["choices"][0]["message"]
    echoed = post(server, "/v1/chat/completions", {**prefill, "echo": True}).json()
    assert echoed["choices"][0]["message"]["content"] == "It is" + plain["content"]
    chunks = events(post(server, "/v1/chat/completions", {**prefill, "echo": True,
                                                          "stream": True}))
    assert chunks[1]["choices"][0]["delta"] == {"content": "It is"}
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == "It is" + plain["content"]
    user_last = post(server, "/v1/chat/completions", {**CHAT_HI, "echo": True}).json()
    assert user_last["choices"] == post(server, "/v1/chat/completions", CHAT_HI).json()["choices"]
    # vLLM's echo also asks for prompt_logprobs (top_logprobs of them, 0 unset): the prompt
    # token's own entry at each position
    plp = user_last["prompt_logprobs"]
    assert len(plp) == user_last["usage"]["prompt_tokens"] and plp[0] is None
    assert all(len(entry) == 1 for entry in plp[1:])



def test_chat_answer_role_is_the_continued_messages(server) -> None:
    """vLLM's rule (``get_chat_request_role``): without ``add_generation_prompt`` the answer
    continues the last message, so it has that message's role (was always "assistant"),
    in the message and in the streamed role delta."""
    for last, cont in (("assistant", True), ("user", True), ("user", False)):
        body = {"messages": [*CHAT_HI["messages"][:1] * (last == "assistant"),
                             {"role": last, "content": "It is"}],
                "max_tokens": 2, "add_generation_prompt": False,
                "continue_final_message": cont}
        message = post(server, "/v1/chat/completions", body).json()["choices"][0]["message"]
        assert message["role"] == last
        chunks = events(post(server, "/v1/chat/completions", {**body, "stream": True}))
        assert chunks[0]["choices"][0]["delta"] == {"role": last, "content": ""}
    message = post(server, "/v1/chat/completions", CHAT_HI).json()["choices"][0]["message"]
    assert message["role"] == "assistant"

def test_return_tokens_as_token_ids_names_logprob_tokens_by_id(server) -> None:
    body = {"prompt": PROMPT, "max_tokens": 3, "temperature": 0, "logprobs": 2}
    plain = post(server, "/v1/completions", body).json()["choices"][0]
    by_id = post(server, "/v1/completions", {**body, "return_tokens_as_token_ids": True}
                 ).json()["choices"][0]
    decode = server.engine.tokenizer.decode
    assert by_id["text"] == plain["text"]
    assert [decode([int(t.removeprefix("token_id:"))]) for t in by_id["logprobs"]["tokens"]] \
        == plain["logprobs"]["tokens"]
    assert [len(top) for top in by_id["logprobs"]["top_logprobs"]] \
        == [len(top) for top in plain["logprobs"]["top_logprobs"]]
    assert all(k.startswith("token_id:") for top in by_id["logprobs"]["top_logprobs"] for k in top)
    chat = {**CHAT_HI, "logprobs": True, "top_logprobs": 1, "return_tokens_as_token_ids": True}
    for content in (post(server, "/v1/chat/completions", chat).json()["choices"][0]["logprobs"]
                    ["content"]):
        tid = int(content["token"].removeprefix("token_id:"))
        assert content["bytes"] == list(server.engine.tokenizer.token_bytes(tid))  # real bytes
        assert content["top_logprobs"][0]["token"].startswith("token_id:")


def test_return_tokens_as_token_ids_server_flag() -> None:
    from thinkstream.server.cli import add_server_args, server_config
    from thinkstream.server.openai_routes import output_options
    from thinkstream.server.protocol import CompletionRequest

    parser = argparse.ArgumentParser()
    add_server_args(parser)
    parser.add_argument("--model", default=None)
    cfg = server_config(parser.parse_args(["--return-tokens-as-token-ids"]))
    assert cfg.return_tokens_as_token_ids and not server_config(parser.parse_args([])) \
        .return_tokens_as_token_ids
    state = SimpleNamespace(config=cfg)
    for field, expected in ((None, True), (False, False), (True, True)):
        body = CompletionRequest(prompt="x", return_tokens_as_token_ids=field)
        assert output_options(state, body, False)["tokens_as_ids"] is expected


def test_continuous_usage_stats_put_usage_on_every_chunk(server) -> None:
    """With include_usage: each chunk's usage counts its choice's tokens so far (the role
    chunk 0), then the final usage chunk sums them; without include_usage, none."""
    opts = {"stream": True, "stream_options": {"include_usage": True,
                                               "continuous_usage_stats": True}}
    for path, body in (("/v1/chat/completions", {**CHAT_HI, "n": 2, "temperature": 1.0,
                                                  "seed": 3}),
                       ("/v1/completions", {"prompt": [PROMPT, "Hi"], "max_tokens": 4})):
        chunks = events(post(server, path, {**body, **opts}))
        *steps, last = chunks
        assert last["choices"] == [] and all("usage" in c for c in steps)
        seen: dict[int, int] = {}
        for c in steps:
            idx, usage = c["choices"][0]["index"], c["usage"]
            assert usage["completion_tokens"] >= seen.get(idx, 0)
            assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
            seen[idx] = usage["completion_tokens"]
        assert sum(seen.values()) == last["usage"]["completion_tokens"] and len(seen) == 2
        if path == "/v1/chat/completions":
            assert steps[0]["usage"]["completion_tokens"] == 0
        quiet = events(post(server, path, {**body, "stream": True, "stream_options": {
            "continuous_usage_stats": True}}))
        assert not any("usage" in c for c in quiet)


@pytest.mark.parametrize(("path", "field", "value"), [
    ("/v1/chat/completions", "use_beam_search", True),
    ("/v1/completions", "bad_words", ["fox"]),
    ("/v1/chat/completions", "allowed_token_ids", [5, 6]),
    ("/v1/completions", "priority", 1),
    ("/v1/chat/completions", "chat_template", "{{ messages }}"),
    ("/v1/chat/completions", "add_special_tokens", True),
    ("/v1/completions", "add_special_tokens", False),
    ("/v1/responses", "bad_words", ["fox"]),
    ("/v1/responses", "prompt_logprobs", 1),
    ("/v1/sessions", "logits_processors", ["my.module:Processor"]),
    ("/v1/completions", "watermarking", True),
    ("/v1/chat/completions", "thinking_token_budget", 64),
    ("/v1/completions", "structured_outputs.whitespace_pattern", r"[ ]?"),
    ("/v1/responses", "stream_options.continuous_usage_stats", True),
    ("/v1/chat/completions", "structured_outputs.disable_additional_properties", True),
])
def test_fields_the_engine_cannot_honour_are_400s(server, path, field, value) -> None:
    body = {"/v1/chat/completions": {"messages": CHAT_HI["messages"]},
            "/v1/completions": {"prompt": PROMPT},
            "/v1/responses": {"input": "hi", "max_output_tokens": 1},
            "/v1/sessions": {"prompt": PROMPT}}[path]
    def sent(v) -> dict:
        outer, _, inner = field.rpartition(".")
        if outer == "stream_options":
            return {"stream": True, outer: {"include_usage": True, inner: v}}
        return {outer: {"json_object": True, inner: v}} if outer else {field: v}

    err = error(post(server, path, {**body, "max_tokens": 1, **sent(value)}), 400)
    assert (err["param"], err["code"]) == (field, "unsupported")
    if path != "/v1/sessions":  # an open session would stay open
        default = {"use_beam_search": False, "bad_words": [], "allowed_token_ids": None,
                   "priority": 0, "chat_template": None, "prompt_logprobs": None,
                   "add_special_tokens": path == "/v1/completions", "watermarking": False,
                   "thinking_token_budget": -1, "structured_outputs.whitespace_pattern": None,
                   "stream_options.continuous_usage_stats": False,
                   "structured_outputs.disable_additional_properties": False}[field]
        r = post(server, path, {**body, "max_tokens": 1, **sent(default)})
        assert r.status_code == 200, r.text
    server.wait_idle()


def test_reasoning_effort_reaches_the_chat_template() -> None:
    """As vLLM renders it: ``reasoning_effort`` and ``enable_thinking`` (effort != "none")
    go to the template, unless chat_template_kwargs sets them."""
    from thinkstream.server.prompts import render_chat
    from thinkstream.server.protocol import ChatCompletionRequest

    seen: list[dict] = []

    class Template:
        chat_template = "{{ messages }}"

        def encode_chat(self, messages, add_generation_prompt, **kwargs):
            seen.append(kwargs)
            return [1]

    msgs = [{"role": "user", "content": "hi"}]
    for body in ({"reasoning_effort": "none"}, {"reasoning_effort": "high"},
                 {"reasoning_effort": "low", "chat_template_kwargs": {"enable_thinking": True}},
                 {}):
        render_chat(Template(), ChatCompletionRequest(messages=msgs, **body))
    assert [{k: v for k, v in kw.items() if k != "allow_special_tokens_in_content"}
            for kw in seen] == [
        {"reasoning_effort": "none", "enable_thinking": False},
        {"reasoning_effort": "high", "enable_thinking": True},
        {"enable_thinking": True, "reasoning_effort": "low"}, {}]


def test_return_token_ids_streamed_or_not(server) -> None:
    """vLLM's return_token_ids: the prompt's ids and each choice's output ids; streamed, the
    chunks' ids concatenate to the whole answer's."""
    greedy = {"max_tokens": 5, "temperature": 0, "return_token_ids": True}
    prompts = [PROMPT, "Hi"]
    whole = post(server, "/v1/completions", {"prompt": prompts, **greedy}).json()
    encode = server.engine.tokenizer.encode
    assert [c["prompt_token_ids"] for c in whole["choices"]] == [encode(p) for p in prompts]
    assert sum(len(c["token_ids"]) for c in whole["choices"]) == whole["usage"]["completion_tokens"]
    streamed: dict[int, list[int]] = {}
    for chunk in events(post(server, "/v1/completions", {"prompt": prompts, **greedy,
                                                         "stream": True})):
        choice = chunk["choices"][0]
        if choice["index"] not in streamed:
            assert choice["prompt_token_ids"] == encode(prompts[choice["index"]])
        streamed.setdefault(choice["index"], []).extend(choice["token_ids"])
    assert streamed == {c["index"]: c["token_ids"] for c in whole["choices"]}
    chat = post(server, "/v1/chat/completions", {**CHAT_HI, **greedy}).json()
    ids = post(server, "/tokenize", {"messages": CHAT_HI["messages"]}).json()["tokens"]
    assert chat["prompt_token_ids"] == ids
    chunks = events(post(server, "/v1/chat/completions", {**CHAT_HI, **greedy, "stream": True}))
    assert chunks[0]["prompt_token_ids"] == ids
    assert [t for c in chunks[1:] for t in c["choices"][0]["token_ids"]] \
        == chat["choices"][0]["token_ids"] and len(chat["choices"][0]["token_ids"]) == 5


def test_continuous_usage_stats_on_a_session_close_is_a_400(server) -> None:
    sid = post(server, "/v1/sessions", {"prompt": PROMPT, "max_tokens": 2}).json()["id"]
    err = error(post(server, f"/v1/sessions/{sid}/close", {"stream": True, "stream_options": {
        "include_usage": True, "continuous_usage_stats": True}}), 400)
    assert (err["param"], err["code"]) == ("stream_options.continuous_usage_stats", "unsupported")
    assert post(server, f"/v1/sessions/{sid}/close", {}).status_code == 200
    server.wait_idle()
