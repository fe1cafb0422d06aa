"""Every kind of bad input gets a 400 (413 for a huge body) with an OpenAI error body that
names the parameter, leaks no path, and takes no KV block; a valid request still works."""

from __future__ import annotations

import json

import httpx
import pytest

COMPLETION = {"model": "tiny", "prompt": "Hello", "max_tokens": 4}
CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
RESPONSE = {"model": "tiny", "input": "hi", "max_output_tokens": 4}
NAN = float("nan")


def _with(base: dict, **changes) -> dict:
    body = dict(base)
    for k, v in changes.items():
        if v is _DROP:
            body.pop(k, None)
        else:
            body[k] = v
    return body


_DROP = object()

# (endpoint, body, expected param)
CASES = [
    ("completions", _with(COMPLETION, prompt=""), "prompt"),
    ("completions", _with(COMPLETION, prompt=[]), "prompt"),
    ("completions", _with(COMPLETION, prompt=_DROP), "prompt"),
    ("completions", _with(COMPLETION, prompt=5), "prompt"),
    ("completions", _with(COMPLETION, prompt=[1, "a"]), "prompt"),
    ("completions", _with(COMPLETION, prompt=[1, 2, 100000]), "prompt"),
    ("completions", _with(COMPLETION, prompt=[1, -2, 3]), "prompt"),
    ("completions", _with(COMPLETION, prompt=[[1, 2], [-1]]), "prompt"),
    ("chat", _with(CHAT, messages=[]), "messages"),
    ("chat", _with(CHAT, messages=_DROP), "messages"),
    ("chat", _with(CHAT, messages=[{"role": "wizard", "content": "x"}]), "messages[0].role"),
    ("chat", _with(CHAT, messages=[{"role": "user", "content": 3}]), "messages[0].content"),
    ("chat", _with(CHAT, messages="hello"), "messages"),
    ("chat", _with(CHAT, messages=[{"role": "user"}]), "messages[0]"),
    ("chat", _with(CHAT, messages=[{"role": "system", "content": "be brief"},
                                   {"role": "assistant"}]), "messages[1]"),
    # OpenAI rejects these two: a tool result answering no call, and no content parts
    ("chat", _with(CHAT, messages=[{"role": "user", "content": "hi"},
                                   {"role": "tool", "content": "22 C"}]),
     "messages[1].tool_call_id"),
    ("chat", _with(CHAT, messages=[{"role": "user", "content": []}]), "messages[0].content"),
    ("completions", _with(COMPLETION, max_tokens="5"), "max_tokens"),
    ("completions", _with(COMPLETION, max_tokens=1.5), "max_tokens"),
    ("completions", _with(COMPLETION, n=True), "n"),
    ("completions", _with(COMPLETION, stream="yes"), "stream"),
    ("completions", _with(COMPLETION, temperature=-0.5), "temperature"),
    ("completions", _with(COMPLETION, temperature=NAN), "temperature"),
    ("chat", _with(CHAT, temperature=NAN), "temperature"),
    ("completions", _with(COMPLETION, top_p=0.0), "top_p"),
    ("completions", _with(COMPLETION, top_p=1.5), "top_p"),
    ("completions", _with(COMPLETION, top_k=-2), "top_k"),
    ("completions", _with(COMPLETION, min_p=-0.1), "min_p"),
    ("completions", _with(COMPLETION, min_p=1.1), "min_p"),
    ("completions", _with(COMPLETION, presence_penalty=3.0), "presence_penalty"),
    ("completions", _with(COMPLETION, frequency_penalty=-3.0), "frequency_penalty"),
    ("completions", _with(COMPLETION, repetition_penalty=0.0), "repetition_penalty"),
    ("completions", _with(COMPLETION, max_tokens=0), "max_tokens"),
    ("chat", _with(CHAT, max_tokens=0), "max_tokens"),
    ("chat", _with(CHAT, max_completion_tokens=-1), "max_completion_tokens"),
    ("chat", _with(CHAT, max_completion_tokens=10**6), "max_completion_tokens"),
    # the Responses API's own names, not those of the chat request it runs as
    ("responses", _with(RESPONSE, max_output_tokens=0), "max_output_tokens"),
    ("responses", _with(RESPONSE, max_output_tokens=10**6), "max_output_tokens"),
    ("responses", _with(RESPONSE, input=[]), "input"),
    ("responses", _with(RESPONSE, input="word " * 700), "input"),
    ("completions", _with(COMPLETION, n=0), "n"),
    ("completions", _with(COMPLETION, n=1000), "n"),
    ("chat", _with(CHAT, n=1000), "n"),
    ("completions", _with(COMPLETION, stop=["a"] * 100), "stop"),
    ("completions", _with(COMPLETION, stop="x" * 10000), "stop"),
    ("completions", _with(COMPLETION, stop=[""]), "stop"),
    ("completions", _with(COMPLETION, stop=5), "stop"),
    ("completions", _with(COMPLETION, logprobs=1000), "logprobs"),
    ("completions", _with(COMPLETION, logprobs=-1), "logprobs"),
    ("chat", _with(CHAT, logprobs=True, top_logprobs=1000), "top_logprobs"),
    ("chat", _with(CHAT, top_logprobs=2), "top_logprobs"),
    ("completions", _with(COMPLETION, max_tokens=10**6), "max_tokens"),
    ("completions", _with(COMPLETION, prompt=list(range(300)) * 2), "prompt"),
    ("chat", _with(CHAT, max_tokens=10**6), "max_tokens"),
    ("completions", _with(COMPLETION, seed=2**70), "seed"),
    ("completions", _with(COMPLETION, min_tokens=10), "min_tokens"),
    ("completions", _with(COMPLETION, stream_options={"include_usage": "x"}),
     "stream_options.include_usage"),
    ("completions", _with(COMPLETION, suffix="x"), "suffix"),
    # without stream: true, as OpenAI and vLLM answer
    ("completions", _with(COMPLETION, stream_options={"include_usage": True}), "stream_options"),
    ("chat", _with(CHAT, stream=False, stream_options={"include_usage": True}), "stream_options"),
]
URL = {"completions": "/v1/completions", "chat": "/v1/chat/completions",
       "responses": "/v1/responses"}


def check_error(r: httpx.Response, status: int, param: str | None) -> dict:
    assert r.status_code == status, r.text
    assert len(r.content) < 32 * 1024
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["param"] == param, err
    assert isinstance(err["message"], str) and err["message"]
    for leak in ("/work", "site-packages", ".py", "Traceback", "/home", "/tmp"):
        assert leak not in err["message"], err["message"]
    return err


@pytest.fixture(scope="module")
def client(tiny_server):
    with httpx.Client(base_url=tiny_server.url, timeout=30) as c:
        yield c


@pytest.mark.parametrize(("endpoint", "body", "param"), CASES,
                         ids=[f"{i}-{c[0]}-{c[2]}" for i, c in enumerate(CASES)])
def test_bad_json_fields(client, tiny_server, endpoint, body, param) -> None:
    r = client.post(URL[endpoint], content=json.dumps(body), headers={"content-type": "application/json"})
    err = check_error(r, 400, param)
    assert err["type"] == "invalid_request_error"
    assert param.split("[")[0].split(".")[0] in err["message"] or param in err["message"]


RAW = [
    (b"{", None),
    (b"", None),
    (b"not json at all", None),
    (b"[1, 2]", None),
    (b'"a string"', None),
    (b"null", None),
    (b"\xff\xfe\x00{}", None),
    (b'{"prompt": "caf\xe9"}', None),  # latin-1 byte: invalid UTF-8
    (b'{"model": "tiny", "prompt": "\\ud800 lone"}', "prompt"),
    (b'{"model": "tiny", "prompt": "ok", "stop": ["\\udfff"]}', "stop"),
    (b'{"model": "tiny", "prompt": "ok", "temperature": NaN}', "temperature"),
    (b'{"model": "tiny", "prompt": "ok", "top_p": Infinity}', "top_p"),
    (b"[" * 5000 + b"]" * 5000, None),
]


@pytest.mark.parametrize(("raw", "param"), RAW, ids=range(len(RAW)))
@pytest.mark.parametrize("endpoint", ["completions", "chat"])
def test_bad_raw_bodies(client, endpoint, raw, param) -> None:
    if endpoint == "chat" and param is not None:
        raw = raw.replace(b'"prompt": "ok"', b'"messages": [{"role": "user", "content": "x"}]')
        raw = raw.replace(b'"prompt": "\\ud800 lone"',
                          b'"messages": [{"role": "user", "content": "\\ud800"}]')
        param = "messages[0].content" if b"ud800" in raw else param
    r = client.post(URL[endpoint], content=raw, headers={"content-type": "application/json"})
    check_error(r, 400, param)


@pytest.mark.parametrize(("endpoint", "body", "param"), [
    ("completions", _with(COMPLETION, prompt=[5] * 4096), "prompt"),
    ("chat", _with(CHAT, max_tokens=10**6), "max_tokens"),
    ("responses", _with(RESPONSE, input="hi " * 4096), "input"),
    ("responses", _with(RESPONSE, max_output_tokens=10**6), "max_output_tokens"),
])
def test_context_errors_read_as_openai(client, tiny_server, endpoint, body, param) -> None:
    """The sentence OpenAI and vLLM write, which LiteLLM maps to ContextWindowExceededError;
    "prompt is too long" for a prompt over it, which LangChain maps to ContextOverflowError."""
    err = check_error(client.post(URL[endpoint], json=body), 400, param)
    limit = tiny_server.engine.max_model_len
    assert err["code"] == "context_length_exceeded" and err["message"].startswith(param)
    assert f"This model's maximum context length is {limit} tokens" in err["message"]
    assert ("prompt is too long" in err["message"]) == (param in ("prompt", "input"))


@pytest.mark.parametrize("endpoint", ["completions", "chat"])
def test_valid_json_nested_too_deeply_is_not_called_invalid(client, endpoint) -> None:
    """A body that is valid JSON but deeper than the parser goes (a tool schema of 800
    levels) was "not valid JSON", sending its author to check a body a JSON validator
    accepts; pydantic's own depth limit already said "nested too deeply"."""
    deep = "[" * 5000 + "]" * 5000
    body = f'{{"model": "tiny", "prompt": {deep}, "messages": {deep}}}'
    err = check_error(client.post(URL[endpoint], content=body,
                                  headers={"content-type": "application/json"}), 400, None)
    assert (err["message"], err["code"]) == ("the request body is nested too deeply",
                                             "invalid_body")


def test_body_too_large(client, tiny_server) -> None:
    limit = tiny_server.state.config.max_body_bytes
    big = json.dumps({"model": "tiny", "prompt": "a" * (limit + 10)}).encode()
    r = client.post("/v1/completions", content=big, headers={"content-type": "application/json"})
    check_error(r, 413, None)

    def chunks():  # no Content-Length: the limit holds for a chunked body too
        for _ in range(limit // 65536 + 2):
            yield b" " * 65536

    r = client.post("/v1/completions", content=chunks(), headers={"content-type": "application/json"})
    check_error(r, 413, None)


def test_pool_full_and_valid_request_after(client, tiny_server) -> None:
    tiny_server.wait_idle()
    r = client.post("/v1/completions", json=COMPLETION)
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["finish_reason"] in ("stop", "length")
    r = client.post("/v1/chat/completions", json=CHAT)
    assert r.status_code == 200, r.text
    tiny_server.wait_idle()


def test_a_large_body_is_decoded_off_the_event_loop(client, tiny_server, monkeypatch) -> None:
    """A few MB of messages took ~0.6 s to validate on the event loop, stalling every other
    stream and /health; past ``OFF_LOOP_BYTES`` the body is decoded in a worker thread (and
    its errors are the same 400s)."""
    import threading

    from thinkstream.server import openai_routes

    threads: list[str] = []
    decode = openai_routes.decode_body

    def spy(raw, model):
        threads.append(threading.current_thread().name)
        return decode(raw, model)

    monkeypatch.setattr(openai_routes, "decode_body", spy)
    small = client.post("/v1/chat/completions", json=CHAT)
    filler = [{"role": "user", "content": "x" * 60}, {"role": "assistant", "content": "ok"}]
    big = _with(CHAT, messages=filler * 600 + CHAT["messages"], max_tokens=1)
    assert len(json.dumps(big)) > openai_routes.OFF_LOOP_BYTES
    bad = client.post("/v1/chat/completions", json=_with(big, temperature=-1))
    assert small.status_code == 200
    check_error(bad, 400, "temperature")
    loop = tiny_server.thread.name
    assert threads[0] == loop and threads[1] != loop, threads
