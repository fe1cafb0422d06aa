"""Parallel reasoning paths over HTTP (``parallel`` on chat completions), on the tiny model:
the setting validated (400 naming the field), the summary as ``content`` with the paths as
``reasoning_content`` and ``paths``, streamed path deltas tagged with their path index
before the summary, ``usage`` counting every path's tokens, and the pool full afterwards."""

from __future__ import annotations

import json

import httpx
import pytest
from conftest import tiny_server  # noqa: F401 - the module's server

CHAT = {"messages": [{"role": "user", "content": "What is the capital of France?"}],
        "max_tokens": 5, "temperature": 1.0, "seed": 3}


def post(server, body: dict) -> httpx.Response:
    return httpx.post(server.url + "/v1/chat/completions", json=body, timeout=120)


@pytest.mark.parametrize(("parallel", "field"), [
    ({"paths": 0}, "parallel.paths"), ({"paths": 17}, "parallel.paths"),
    ({"paths": 2, "merge": "best"}, "parallel.merge"),
    ({"paths": 2, "layout": "zigzag"}, "parallel.layout"),
    ({"paths": 2, "path_tokens": 0}, "parallel.path_tokens"),
    ({"paths": 2, "wings": 3}, "parallel.wings"),
    ({"paths": "2"}, "parallel.paths"), ({"paths": True}, "parallel.paths"),
    ({"paths": 2, "path_tokens": 4.5}, "parallel.path_tokens"),
    ({"paths": 2, "path_prompts": "abc"}, "parallel.path_prompts"),
    ({"paths": 2, "path_prompts": ["a", 3]}, "parallel.path_prompts"),
    ({"paths": 2, "merge": 3}, "parallel.merge"),
    ({"paths": 2, "temperature": "hot"}, "parallel.temperature"),
])
def test_a_bad_parallel_setting_is_a_400_naming_the_field(tiny_server, parallel,  # noqa: F811
                                                          field) -> None:
    r = post(tiny_server, {**CHAT, "parallel": parallel})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == field
    r = post(tiny_server, {**CHAT, "n": 2, "parallel": {"paths": 2}})
    assert r.status_code == 400 and r.json()["error"]["param"] == "n"
    tiny_server.wait_idle()


def test_summary_is_the_content_and_usage_counts_every_path(tiny_server) -> None:  # noqa: F811
    body = {**CHAT, "parallel": {"paths": 3, "path_tokens": 4, "merge": "summary"}}
    r = post(tiny_server, body)
    assert r.status_code == 200, r.text
    got = r.json()
    msg = got["choices"][0]["message"]
    assert len(msg["paths"]) == 3
    assert msg["reasoning_content"].startswith("Path 1:")
    usage = got["usage"]
    assert usage["completion_tokens_details"]["reasoning_tokens"] == 12  # 3 paths x 4, no EOS
    assert usage["completion_tokens"] == 12 + 5
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    tiny_server.wait_idle()


def test_streamed_paths_are_tagged_then_the_summary(tiny_server) -> None:  # noqa: F811
    body = {**CHAT, "stream": True, "stream_options": {"include_usage": True},
            "parallel": {"paths": 3, "path_tokens": 4}}
    with httpx.stream("POST", tiny_server.url + "/v1/chat/completions", json=body,
                      timeout=120) as r:
        assert r.status_code == 200
        events = [json.loads(line[6:]) for line in r.iter_lines()
                  if line.startswith("data: ") and line != "data: [DONE]"]
    deltas = [c["choices"][0]["delta"] for c in events if c["choices"]]
    tagged = [d for d in deltas if "path" in d]
    assert {d["path"] for d in tagged} == {0, 1, 2}
    content = [i for i, d in enumerate(deltas) if d.get("content")]
    assert content and max(i for i, d in enumerate(deltas) if "path" in d) < content[0]
    streamed = {p: "".join(d["reasoning_content"] for d in tagged if d["path"] == p)
                for p in range(3)}
    plain = post(tiny_server, {**CHAT, "parallel": {"paths": 3, "path_tokens": 4}}).json()
    assert [streamed[p] for p in range(3)] == plain["choices"][0]["message"]["paths"]
    assert "".join(d.get("content", "") for d in deltas) == \
        plain["choices"][0]["message"]["content"]
    assert events[-1]["usage"]["completion_tokens_details"]["reasoning_tokens"] == 12
    tiny_server.wait_idle()


def test_vote_answers_with_the_majority(tiny_server) -> None:  # noqa: F811
    r = post(tiny_server, {**CHAT, "parallel": {"paths": 3, "path_tokens": 4, "merge": "vote"}})
    assert r.status_code == 200, r.text
    msg = r.json()["choices"][0]["message"]
    from thinkstream.parallel.paths import extract_answer, majority

    assert msg["content"] == majority([extract_answer(p) for p in msg["paths"]])
    tiny_server.wait_idle()


@pytest.mark.parametrize("stream", [False, True])
def test_paths_that_could_never_all_run_are_a_400(tiny_server, stream) -> None:  # noqa: F811
    """The paths stay resident until the summary: more of them than the engine's 16 slots
    (with the request's own sequence), or budgets over the KV pool, would wait forever; a
    summary past the model's context is refused as prompt + max_tokens over it is."""
    for parallel, field in [({"paths": 16, "path_tokens": 2}, "parallel.paths"),
                            ({"paths": 2, "path_tokens": 30000}, "parallel.path_tokens"),
                            # fits the pool, but the summary after both would sit past
                            # the tiny model's 512 positions
                            ({"paths": 2, "path_tokens": 300, "layout": "sequential"},
                             "parallel.path_tokens")]:
        r = post(tiny_server, {**CHAT, "stream": stream, "parallel": parallel})
        assert r.status_code == 400, r.text
        assert r.json()["error"]["param"] == field
    tiny_server.wait_idle()


def test_completions_take_parallel_as_chat_does(tiny_server) -> None:  # noqa: F811
    """``parallel`` on /v1/completions: the same settings checked, the same paths as the
    chat route's for the same prompt ids (a plain prompt of the chat's rendered ids), the
    summary as the text, and usage counting every path; streamed path deltas are tagged."""
    ids = tiny_server.engine.tokenizer.encode_chat(CHAT["messages"], True)
    body = {"prompt": ids, "max_tokens": 5, "temperature": 1.0, "seed": 3,
            "parallel": {"paths": 3, "path_tokens": 4}}
    url = tiny_server.url + "/v1/completions"
    bad = httpx.post(url, json={**body, "parallel": {"paths": 0}}, timeout=120)
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "parallel.paths"
    never = httpx.post(url, json={**body, "parallel": {"paths": 16, "path_tokens": 2}}, timeout=120)
    assert never.status_code == 400 and never.json()["error"]["param"] == "parallel.paths"
    scoring = httpx.post(url, json={**body, "max_tokens": 0, "echo": True}, timeout=120)
    assert scoring.status_code == 400 and scoring.json()["error"]["param"] == "parallel"
    got = httpx.post(url, json=body, timeout=120).json()
    chat = post(tiny_server, {**CHAT, "parallel": body["parallel"]}).json()
    choice, msg = got["choices"][0], chat["choices"][0]["message"]
    assert choice["paths"] == msg["paths"] and len(choice["paths"]) == 3
    assert choice["reasoning_content"] == msg["reasoning_content"]
    assert choice["text"] == msg["content"]
    assert got["usage"]["completion_tokens_details"]["reasoning_tokens"] == 12
    assert got["usage"]["completion_tokens"] == chat["usage"]["completion_tokens"]
    with httpx.stream("POST", url, json={**body, "stream": True}, timeout=120) as r:
        events = [json.loads(line[6:]) for line in r.iter_lines()
                  if line.startswith("data: ") and line != "data: [DONE]"]
    choices = [c["choices"][0] for c in events if c["choices"]]
    streamed = {p: "".join(c["reasoning_content"] for c in choices if c.get("path") == p)
                for p in range(3)}
    assert [streamed[p] for p in range(3)] == choice["paths"]
    assert "".join(c["text"] for c in choices) == choice["text"]
    tiny_server.wait_idle()


def test_an_echoed_one_token_prompt_has_one_entry(tiny_server) -> None:  # noqa: F811
    """An echoed one-token prompt with a summary has one entry (None) before the summary's
    tokens, as a plain request's echo does."""
    url = tiny_server.url + "/v1/completions"
    echo = httpx.post(url, json={"prompt": [5], "max_tokens": 3, "temperature": 0, "echo": True,
                                 "logprobs": 1, "parallel": {"paths": 2, "path_tokens": 3}},
                      timeout=120)
    assert echo.status_code == 200, echo.text
    lps = echo.json()["choices"][0]["logprobs"]
    assert len(lps["tokens"]) == 1 + 3 and lps["token_logprobs"][0] is None
    assert all(isinstance(x, float) for x in lps["token_logprobs"][1:])
    tiny_server.wait_idle()


def test_a_vote_has_its_answers_logprobs(tiny_server) -> None:  # noqa: F811
    """A vote with ``logprobs`` carries its answer's tokens' logprobs (the winning path's),
    on chat and completions alike."""
    vote = {"paths": 3, "path_tokens": 10, "merge": "vote"}
    chat = post(tiny_server, {**CHAT, "temperature": 6.0, "seed": 4, "logprobs": True,
                              "top_logprobs": 2, "parallel": vote}).json()
    content = chat["choices"][0]["logprobs"]["content"]
    assert chat["choices"][0]["message"]["content"] and content
    assert all(len(c["top_logprobs"]) == 2 and c["logprob"] <= 0 for c in content)
    ids = tiny_server.engine.tokenizer.encode_chat(CHAT["messages"], True)
    url = tiny_server.url + "/v1/completions"
    body = {"prompt": ids, "max_tokens": 4, "temperature": 6.0, "seed": 4, "logprobs": 2,
            "parallel": vote}
    got = httpx.post(url, json=body, timeout=120).json()["choices"][0]
    assert got["text"] == chat["choices"][0]["message"]["content"]
    assert got["logprobs"]["token_logprobs"] == [c["logprob"] for c in content]  # same path
    tiny_server.wait_idle()


def test_a_vote_or_no_merge_under_structured_outputs_is_a_400(tiny_server) -> None:  # noqa: F811
    """Only a summary is sampled under a constraint: a vote answers with the unconstrained
    paths' text (it came back as prose under ``json_object``), ``none`` with nothing; both
    are refused naming ``parallel.merge``, a summary keeps the constraint."""
    for merge, constraint in [("vote", {"response_format": {"type": "json_object"}}),
                              ("none", {"structured_outputs": {"choice": ["yes", "no"]}})]:
        r = post(tiny_server, {**CHAT, **constraint,
                               "parallel": {"paths": 2, "path_tokens": 3, "merge": merge}})
        assert r.status_code == 400, r.text
        assert r.json()["error"]["param"] == "parallel.merge"
    r = post(tiny_server, {**CHAT, "structured_outputs": {"choice": ["yes", "no"]},
                           "parallel": {"paths": 2, "path_tokens": 3}})
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] in ("yes", "no")
    tiny_server.wait_idle()


def test_parallel_on_a_session_or_the_responses_api_is_a_400(tiny_server) -> None:  # noqa: F811
    """Sessions and the Responses API run no paths: ``parallel`` there was ignored (a plain
    answer came back); it is a 400 naming it, over HTTP and the WebSocket alike."""
    from websockets.sync.client import connect

    para = {"paths": 2, "path_tokens": 3}
    for path, body in [("/v1/sessions", {"prompt": "hi", "max_tokens": 2}),
                       ("/v1/responses", {"input": "hi", "max_output_tokens": 2})]:
        r = httpx.post(tiny_server.url + path, json={**body, "parallel": para}, timeout=60)
        assert r.status_code == 400, r.text
        assert (r.json()["error"]["param"], r.json()["error"]["code"]) == ("parallel", "unsupported")
    with connect(tiny_server.url.replace("http", "ws") + "/v1/sessions/ws") as ws:
        ws.send(json.dumps({"type": "open", "prompt": "hi", "max_tokens": 2, "parallel": para}))
        msg = json.loads(ws.recv(timeout=30))
        assert msg["type"] == "error" and msg["error"]["param"] == "parallel", msg
    tiny_server.wait_idle()
