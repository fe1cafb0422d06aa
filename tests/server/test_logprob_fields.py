"""Log-probability fields in OpenAI's schema (issue 16, faults replayed from peers' bug
reports): streamed ``text_offset`` continues across chunks, and tokens that hold part of a
UTF-8 character (byte-level BPE splits of CJK and emoji) keep their own bytes."""

from __future__ import annotations

import json

import pytest
from conftest import tiny_llm, wait_pool_full
from fastapi.testclient import TestClient

from thinkstream.engine.request import CompletionOutput, Logprob, RequestOutput
from thinkstream.server.app import create_app
from thinkstream.server.config import ServerConfig
from thinkstream.server.formatting import ChatView, CompletionView

# "café 東京 🙂" in the tiny tokenizer: é, 東, 京 and 🙂 are one token per byte
PROMPT = "café 東京 🙂"
PROMPT_TOKENS = ["c", "a", "f", "bytes:\\xc3", "bytes:\\xa9", " ", "bytes:\\xe6", "bytes:\\x9d",
                 "bytes:\\xb1", "bytes:\\xe4", "bytes:\\xba", "bytes:\\xac", " ", "bytes:\\xf0",
                 "bytes:\\x9f", "bytes:\\x99", "bytes:\\x82"]
#                c  a  f  é     ' ' 東       京       ' ' 🙂
PROMPT_OFFSETS = [0, 1, 2, 3, 3, 4, 5, 5, 5, 6, 6, 6, 7, 8, 8, 8, 8]


@pytest.fixture(scope="module")
def client():
    llm = tiny_llm()
    with TestClient(create_app(llm, ServerConfig(served_model_name="tiny"))) as c:
        yield c
    wait_pool_full(llm)
    llm.shutdown()


def _stream(client: TestClient, body: dict) -> list[dict]:
    with client.stream("POST", "/v1/completions", json={**body, "stream": True}) as r:
        assert r.status_code == 200
        lines = [ln[6:] for ln in r.iter_lines() if ln.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    return [json.loads(ln) for ln in lines[:-1]]


def test_streamed_text_offset_counts_from_the_start_of_the_text(client: TestClient) -> None:
    """The report: each streamed chunk's ``text_offset`` restarted at 0."""
    body = {"prompt": "Hello", "max_tokens": 6, "logprobs": 1, "temperature": 0}
    whole = client.post("/v1/completions", json=body).json()["choices"][0]
    assert whole["text"] == "oooooo" and whole["logprobs"]["text_offset"] == [0, 1, 2, 3, 4, 5]
    chunks = [c["choices"][0] for c in _stream(client, body)]
    assert [c["logprobs"]["text_offset"] for c in chunks if c["logprobs"]["tokens"]] == \
        [[0], [1], [2], [3], [4], [5]]
    assert "".join(c["text"] for c in chunks) == whole["text"]


def test_echo_offsets_over_split_characters_streamed_or_not(client: TestClient) -> None:
    """Echoed prompt tokens count from 0, a split character's tokens share its offset, the
    output starts after the prompt text (9 characters); streamed chunks agree."""
    body = {"prompt": PROMPT, "max_tokens": 3, "echo": True, "logprobs": 1, "temperature": 0}
    whole = client.post("/v1/completions", json=body).json()["choices"][0]
    lp = whole["logprobs"]
    assert whole["text"] == PROMPT + "\ufffd" * 3  # the model repeats the lone byte 0x82
    assert lp["tokens"] == PROMPT_TOKENS + ["bytes:\\x82"] * 3
    assert lp["text_offset"] == PROMPT_OFFSETS + [9, 10, 11]
    assert lp["top_logprobs"][4] == {"bytes:\\xc3": lp["top_logprobs"][4]["bytes:\\xc3"],
                                     "bytes:\\xa9": lp["token_logprobs"][4]}
    merged: dict[str, list] = {"tokens": [], "text_offset": [], "token_logprobs": []}
    for chunk in _stream(client, body):
        for key in merged:
            merged[key] += chunk["choices"][0]["logprobs"][key]
    assert merged == {k: lp[k] for k in merged}


def test_chat_top_logprobs_keep_a_partial_tokens_bytes(client: TestClient) -> None:
    """A top alternative that is the lone byte 0x9a: ``token`` is OpenAI's escaped form and
    ``bytes`` the byte itself, never the bytes of U+FFFD."""
    r = client.post("/v1/chat/completions", json={
        "messages": [{"role": "user", "content": "東京"}], "max_tokens": 2, "logprobs": True,
        "top_logprobs": 2, "temperature": 0})
    content = r.json()["choices"][0]["logprobs"]["content"]
    assert [c["token"] for c in content] == ["\n", "\n"]
    assert content[1]["bytes"] == [10]
    assert content[1]["top_logprobs"][1]["token"] == "\\x9a"
    assert content[1]["top_logprobs"][1]["bytes"] == [154]


def _output(ids: list[int], text: str) -> RequestOutput:
    lps = [{t: Logprob(-0.5, 1), ids[0]: Logprob(-1.0, 2)} if t != ids[0] else
           {t: Logprob(-0.5, 1)} for t in ids]
    o = CompletionOutput(0, text, ids, lps, "length", new_text=text, new_token_ids=ids)
    return RequestOutput("r", None, [1], None, [o], True)


def test_chat_fields_of_split_characters(tiny_tok) -> None:
    """Each byte token of 東 and 🙂: ``token`` escaped, ``bytes`` its own byte; the bytes of
    consecutive tokens concatenate to the text's UTF-8."""
    text = "東🙂!"
    ids = tiny_tok.encode(text, add_special_tokens=False)
    body = ChatView("c", "tiny", tiny_tok, 1, 2, 1).response([_output(ids, text)])
    content = body["choices"][0]["logprobs"]["content"]
    assert [c["token"] for c in content] == ["\\xe6", "\\x9d", "\\xb1", "\\xf0", "\\x9f", "\\x99",
                                             "\\x82", "!"]
    assert [c["bytes"] for c in content] == [[0xE6], [0x9D], [0xB1], [0xF0], [0x9F], [0x99],
                                             [0x82], [33]]
    assert bytes(b for c in content for b in c["bytes"]) == text.encode("utf-8")
    assert content[2]["top_logprobs"] == [{"token": "\\xb1", "logprob": -0.5, "bytes": [0xB1]},
                                          {"token": "\\xe6", "logprob": -1.0, "bytes": [0xE6]}]


def test_completion_offsets_skip_special_tokens_the_text_skips(tiny_tok) -> None:
    """An end-of-turn token inside the output (ignore_eos) is not in the text, so it takes
    no characters; with ``skip_special_tokens=False`` it is, and it does."""
    ids = tiny_tok.encode("ab<|im_end|>c", add_special_tokens=False)
    assert tiny_tok.is_special(ids[2])
    for skip, text, offsets in ((True, "abc", [0, 1, 2, 2]), (False, "ab<|im_end|>c", [0, 1, 2, 12])):
        view = CompletionView("c", "tiny", tiny_tok, ["x"], [[1]], False, 0, 1, skip)
        lp = view.response([_output(ids, text)])["choices"][0]["logprobs"]
        assert (lp["tokens"], lp["text_offset"]) == (["a", "b", "<|im_end|>", "c"], offsets)


def test_echoed_prompt_offsets_skip_a_special_token_the_prompt_text_lacks(tiny_tok) -> None:
    """A BOS the tokenizer put before the prompt (Gemma's ``<bos>``) is in the tokens but not
    in the echoed text: it takes no characters, and the prompt's own tokens count from 0
    (they counted from 5, past the output's first offset). Special-token text the client
    wrote into the prompt is in the text and counts."""
    im_end = tiny_tok.encode("<|im_end|>", add_special_tokens=False)
    out = tiny_tok.encode("c", add_special_tokens=False)
    for prompt, prompt_ids, offsets in (
            ("ab", im_end + tiny_tok.encode("ab", add_special_tokens=False), [0, 0, 1, 2]),
            ("a<|im_end|>b", tiny_tok.encode("a<|im_end|>b", add_special_tokens=False),
             [0, 1, 11, 12])):
        view = CompletionView("c", "tiny", tiny_tok, [prompt], [prompt_ids], True, 0, 1, True)
        choice = view.response([_output(out, "c")])["choices"][0]
        assert choice["text"] == prompt + "c"
        assert choice["logprobs"]["text_offset"] == offsets


def test_responses_logprobs_with_include_as_chat_gives_them(client: TestClient) -> None:
    """``include: ["message.output_text.logprobs"]`` fills ``output_text.logprobs`` with the
    items chat returns for the same conversation (it was always []); streamed, the deltas'
    logprobs concatenate to the ``.done`` event's; ``top_logprobs`` alone returns none, as
    OpenAI answers."""
    base = {"model": "tiny", "input": PROMPT, "max_output_tokens": 6, "temperature": 0,
            "ignore_eos": True, "top_logprobs": 2}
    chat = client.post("/v1/chat/completions", json={
        "model": "tiny", "messages": [{"role": "user", "content": PROMPT}], "max_tokens": 6,
        "temperature": 0, "ignore_eos": True, "logprobs": True, "top_logprobs": 2}).json()
    want = chat["choices"][0]["logprobs"]["content"]
    assert len(want) == 6 and all(len(e["top_logprobs"]) == 2 for e in want)
    body = {**base, "include": ["message.output_text.logprobs"]}
    part = client.post("/v1/responses", json=body).json()["output"][0]["content"][0]
    assert part["text"] == chat["choices"][0]["message"]["content"]
    assert _split(part["logprobs"])[0] == _split(want)[0]  # tokens, bytes: exact
    assert _split(part["logprobs"])[1] == pytest.approx(_split(want)[1], abs=1e-4)  # cache hit
    want = part["logprobs"]
    assert client.post("/v1/responses", json=base).json()["output"][0]["content"][0][
        "logprobs"] == []
    with client.stream("POST", "/v1/responses", json={**body, "stream": True}) as r:
        events = [json.loads(ln[6:]) for ln in r.iter_lines() if ln.startswith("data: ")]
    deltas = [e["logprobs"] for e in events if e["type"] == "response.output_text.delta"]
    done = next(e for e in events if e["type"] == "response.output_text.done")
    assert [x for d in deltas for x in d] == done["logprobs"] == want
    assert events[-1]["response"]["output"][0]["content"][0]["logprobs"] == want


def _split(items: list[dict]) -> tuple[list, list[float]]:
    """Logprob items -> (their tokens and bytes, their logprobs), top alternatives included."""
    keys = [(e["token"], e["bytes"], [(t["token"], t["bytes"]) for t in e["top_logprobs"]])
            for e in items]
    return keys, [x for e in items for x in [e["logprob"]] + [t["logprob"] for t in e["top_logprobs"]]]
