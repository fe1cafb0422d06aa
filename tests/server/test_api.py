"""Endpoint shapes on the tiny model: prompt forms, n, echo + logprobs, SSE streams in
OpenAI's exact shape (parsed by the ``openai`` client), usage, metrics, the OpenAPI spec,
and a schemathesis run that must find no 5xx."""

from __future__ import annotations

import json
import shutil
import subprocess

import httpx
import openai
import pytest
from conftest import final_output, live_server, tiny_llm

from thinkstream.sampling_params import SamplingParams


@pytest.fixture(scope="module")
def client(tiny_server):
    with httpx.Client(base_url=tiny_server.url, timeout=30) as c:
        yield c


@pytest.fixture(scope="module")
def oai(tiny_server):
    return openai.OpenAI(base_url=tiny_server.url + "/v1", api_key="unused", max_retries=0)


def test_models(client, oai) -> None:
    data = client.get("/v1/models").json()
    assert data["object"] == "list" and [m["id"] for m in data["data"]] == ["tiny"]
    card = oai.models.retrieve("tiny")  # GET /v1/models/{id}, as OpenAI serves it
    assert (card.id, card.object, card.owned_by) == ("tiny", "model", "thinkstream")
    assert client.get("/v1/models/tiny").json() == data["data"][0]
    assert client.get("/v1/models/").json() == data
    with pytest.raises(openai.NotFoundError) as err:
        oai.models.retrieve("org/other")
    assert err.value.body["code"] == "model_not_found" and err.value.body["param"] == "model"


def test_unknown_route_reads_as_openai(client, oai) -> None:
    """A route the server lacks (embeddings here) is OpenAI's 404: "Invalid URL (...)", not a
    bare "Not Found" a client could take for an unknown model."""
    r = client.post("/v1/embeddings", json={"model": "tiny", "input": "hi"})
    assert r.status_code == 404
    assert r.json() == {"error": {"message": "Invalid URL (POST /v1/embeddings)",
                                  "type": "invalid_request_error", "param": None, "code": None}}
    with pytest.raises(openai.NotFoundError, match=r"Invalid URL \(POST /v1/embeddings\)"):
        oai.embeddings.create(model="tiny", input="hi")


@pytest.mark.parametrize("prompt", ["Hello there", ["Hello", "Paris is"], [5, 6, 7],
                                    [[5, 6], [7, 8, 9]]])
def test_prompt_forms(client, tiny_server, prompt) -> None:
    r = client.post("/v1/completions", json={"prompt": prompt, "max_tokens": 3, "n": 2,
                                             "temperature": 0.8, "seed": 3, "ignore_eos": True})
    assert r.status_code == 200, r.text
    data = r.json()
    num_prompts = 1 if isinstance(prompt, str) or isinstance(prompt[0], int) else len(prompt)
    assert sorted(c["index"] for c in data["choices"]) == list(range(2 * num_prompts))
    assert all(c["finish_reason"] == "length" for c in data["choices"])
    assert data["usage"]["completion_tokens"] == 3 * len(data["choices"])
    tiny_server.wait_idle()


def test_echo_logprobs_match_engine(client, tiny_server) -> None:
    ids = [10, 20, 30, 40, 50, 60]
    r = client.post("/v1/completions", json={"prompt": ids, "max_tokens": 1, "echo": True,
                                             "logprobs": 1, "temperature": 0})
    choice = r.json()["choices"][0]
    lps = choice["logprobs"]
    assert len(lps["token_logprobs"]) == len(ids) + 1 and lps["token_logprobs"][0] is None
    assert lps["top_logprobs"][0] is None
    out = final_output(tiny_server.llm, ids,
                       SamplingParams(max_tokens=1, temperature=0, prompt_logprobs=1))
    for i in range(1, len(ids)):
        assert lps["token_logprobs"][i] == pytest.approx(out.prompt_logprobs[i][ids[i]].logprob,
                                                         abs=1e-5)
    tiny_server.wait_idle()


def test_openai_client_on_tiny(oai, tiny_server) -> None:
    msgs = [{"role": "user", "content": "What is the capital of France?"}]
    plain = oai.chat.completions.create(model="tiny", messages=msgs, max_tokens=8, temperature=0)
    text = "".join(
        ch.choices[0].delta.content or ""
        for ch in oai.chat.completions.create(model="tiny", messages=msgs, max_tokens=8,
                                              temperature=0, stream=True)
        if ch.choices)
    assert text == plain.choices[0].message.content
    stream = oai.completions.create(model="tiny", prompt="The quick", max_tokens=5, temperature=0,
                                    stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    assert chunks[-1].usage.completion_tokens == 5 and chunks[-1].choices == []
    full = oai.completions.create(model="tiny", prompt="The quick", max_tokens=5, temperature=0)
    assert "".join(c.choices[0].text for c in chunks[:-1]) == full.choices[0].text
    lp = oai.chat.completions.create(model="tiny", messages=msgs, max_tokens=3, temperature=0,
                                     logprobs=True, top_logprobs=2)
    content = lp.choices[0].logprobs.content
    assert len(content) == lp.usage.completion_tokens and len(content[0].top_logprobs) == 2
    tiny_server.wait_idle()


def test_chat_stream_shape(client) -> None:
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, "n": 2,
            "stream": True, "stream_options": {"include_usage": True}, "ignore_eos": True}
    with client.stream("POST", "/v1/chat/completions", json=body) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        events = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    firsts = {}
    for c in chunks[:-1]:
        (choice,) = c["choices"]
        firsts.setdefault(choice["index"], choice["delta"])
    assert firsts == {0: {"role": "assistant", "content": ""}, 1: {"role": "assistant", "content": ""}}
    finals = [c["choices"][0] for c in chunks[:-1] if c["choices"][0]["finish_reason"]]
    assert sorted(f["index"] for f in finals) == [0, 1]
    assert all(f["finish_reason"] == "length" for f in finals)
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 8


def test_stop_and_seed(client) -> None:
    body = {"prompt": "The quick brown", "max_tokens": 8, "temperature": 1.0, "seed": 7}
    a = client.post("/v1/completions", json=body).json()["choices"][0]["text"]
    b = client.post("/v1/completions", json=body).json()["choices"][0]["text"]
    assert a == b
    greedy = client.post("/v1/completions", json={**body, "temperature": 0}).json()
    text = greedy["choices"][0]["text"]
    if len(text) > 2:
        stop = text[1:3]
        cut = client.post("/v1/completions", json={**body, "temperature": 0, "stop": [stop]}).json()
        assert cut["choices"][0]["text"] == text[: text.index(stop)]
        assert cut["choices"][0]["finish_reason"] == "stop"


def test_metrics_series(client) -> None:
    client.post("/v1/completions", json={"prompt": "hi", "max_tokens": 3})
    text = client.get("/metrics").text
    for name in ("thinkstream_time_to_first_token_seconds_bucket",
                 "thinkstream_inter_token_latency_seconds_bucket",
                 "thinkstream_e2e_request_latency_seconds_count",
                 "thinkstream_num_requests_running", "thinkstream_num_requests_waiting",
                 "thinkstream_kv_blocks_used", "thinkstream_kv_blocks_total",
                 "thinkstream_prefix_cache_hit_rate", "thinkstream_prompt_tokens_total",
                 "thinkstream_generation_tokens_total"):
        assert name in text, name


def _tokens_counted(client) -> tuple[float, float]:
    """``thinkstream_prompt_tokens_total`` and ``_generation_tokens_total`` now (parsed)."""
    from prometheus_client.parser import text_string_to_metric_families

    got = {s.name: s.value for fam in text_string_to_metric_families(client.get("/metrics").text)
           for s in fam.samples}
    return got["thinkstream_prompt_tokens_total"], got["thinkstream_generation_tokens_total"]


def test_token_counters_agree_with_usage(client, tiny_server) -> None:
    """Parallel paths' and think-while-reading notes' tokens are generated tokens, counted in
    usage as completion (reasoning) tokens; a session's answer counts its input as prompt
    tokens."""
    before = _tokens_counted(client)
    usage = client.post("/v1/chat/completions", json={
        "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3, "ignore_eos": True,
        "parallel": {"paths": 2, "path_tokens": 3}}).json()["usage"]
    sessions = []
    for thinking in (None, {"layout": "gap", "gap": 40, "note_tokens": 3, "pass_tokens": 2,
                            "depth": "D2"}):
        sid = client.post("/v1/sessions", json={"messages": [], "max_tokens": 2,
                                                "ignore_eos": True, "thinking": thinking}).json()["id"]
        client.post(f"/v1/sessions/{sid}/append", json={"text": "The fox ran. It hid.", "seq": 0})
        sessions.append(client.post(f"/v1/sessions/{sid}/close", json={"seq": 1}).json()["usage"])
    tiny_server.wait_idle()
    after = _tokens_counted(client)
    assert usage["completion_tokens"] == 9 and sessions[0]["completion_tokens"] == 2
    assert "completion_tokens_details" not in sessions[0]
    notes = sessions[1]["completion_tokens_details"]["reasoning_tokens"]  # think while reading
    assert notes > 0 and sessions[1]["completion_tokens"] == 2 + notes
    assert after[0] - before[0] == usage["prompt_tokens"] + sum(s["prompt_tokens"] for s in sessions)
    assert after[1] - before[1] == 9 + 2 + 2 + notes


def test_openapi_documents_the_api(client) -> None:
    spec = client.get("/openapi.json").json()
    for path in ("/v1/models", "/v1/completions", "/v1/chat/completions", "/health", "/metrics",
                 "/v1/requests/{request_id}/cancel", "/v1/responses", "/tokenize", "/detokenize",
                 "/tokenizer_info"):
        assert path in spec["paths"], path
    schemas = spec["components"]["schemas"]
    assert "prompt" in schemas["CompletionRequest"]["properties"]
    assert "messages" in schemas["ChatCompletionRequest"]["properties"]
    assert "tools" in schemas["ChatCompletionRequest"]["properties"]
    assert "input" in schemas["ResponsesRequest"]["properties"]
    assert "prompt" in schemas["TokenizeRequest"]["properties"]
    body = spec["paths"]["/v1/completions"]["post"]["requestBody"]
    assert body["content"]["application/json"]["schema"]["$ref"].endswith("CompletionRequest")


@pytest.fixture(scope="module")
def fuzz_server():
    """A tiny server with a small KV pool (64 tokens): fuzzed requests asking for huge
    ``max_tokens`` end at the pool's cap instead of generating thousands of tokens (the
    coverage phase's ~2,000 cases took 233 s with a 256-token pool, 25-80 s with this one:
    generation was the time, not the checks)."""
    llm = tiny_llm(num_blocks=16)
    with live_server(llm) as live:
        yield live
    llm.shutdown()


@pytest.mark.skipif(shutil.which("st") is None, reason="schemathesis not installed")
def test_schemathesis_finds_no_5xx(fuzz_server, tmp_path) -> None:
    proc = subprocess.run(
        ["st", "run", f"{fuzz_server.url}/openapi.json", "--checks", "not_a_server_error",
         "--max-examples", "8", "--seed", "1", "--request-timeout", "20", "--workers", "2",
         "--phases", "examples,coverage,fuzzing"],
        capture_output=True, text=True, timeout=360, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    fuzz_server.wait_idle()


def _latency_counts(client) -> tuple[float, float, float]:
    """Observations in the TTFT, inter-token and end-to-end histograms now (parsed)."""
    from prometheus_client.parser import text_string_to_metric_families

    got = {s.name: s.value for fam in text_string_to_metric_families(client.get("/metrics").text)
           for s in fam.samples}
    return tuple(got[f"thinkstream_{n}_count"] for n in (
        "time_to_first_token_seconds", "inter_token_latency_seconds", "e2e_request_latency_seconds"))


def test_session_answers_are_timed_from_the_close(client, tiny_server) -> None:
    """A session's answer is observed in the latency histograms as a request's is (TTFT from
    the close; it was left out: the streaming-input headline never reached /metrics); an
    aborted open session adds nothing."""
    before = _latency_counts(client)
    for stream in (False, True):
        sid = client.post("/v1/sessions", json={"prompt": "The fox", "max_tokens": 3,
                                                "ignore_eos": True}).json()["id"]
        r = client.post(f"/v1/sessions/{sid}/close", json={"stream": stream, "text": " ran"})
        assert r.status_code == 200, r.text
    sid = client.post("/v1/sessions", json={"prompt": "The fox", "max_tokens": 3}).json()["id"]
    assert client.delete(f"/v1/sessions/{sid}").status_code == 200
    tiny_server.wait_idle()
    after = _latency_counts(client)
    assert [b - a for a, b in zip(before, after, strict=True)] == [2, 4, 2]
