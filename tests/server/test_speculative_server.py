"""A server whose engine speculates (n-gram): greedy completions equal the engine's plain
ones, and /metrics counts drafted and accepted tokens and the mean accepted length."""

from __future__ import annotations

import re

import httpx
from conftest import live_server, tiny_llm

PROMPT = [5, 6, 7, 8, 9, 5, 6, 7, 8, 9, 5, 6]


def test_speculative_server_counts_drafts() -> None:
    plain = tiny_llm()
    body = {"prompt": PROMPT, "max_tokens": 12, "temperature": 0, "ignore_eos": True}
    with live_server(plain) as live, httpx.Client(base_url=live.url, timeout=30) as c:
        want = c.post("/v1/completions", json=body).json()["choices"][0]["text"]
        assert "spec_decode" not in c.get("/metrics").text
    spec = tiny_llm(speculative={"method": "ngram", "ngram_min": 1, "adaptive": False})
    with live_server(spec) as live, httpx.Client(base_url=live.url, timeout=30) as c:
        got = c.post("/v1/completions", json=body).json()["choices"][0]["text"]
        text = c.get("/metrics").text
    assert got == want

    def value(name: str) -> float:
        m = re.search(rf"^thinkstream_{name}{{[^}}]*}} (\S+)$", text, re.M)
        assert m is not None, name
        return float(m.group(1))

    drafted, accepted = value("spec_decode_num_draft_tokens_total"), value(
        "spec_decode_num_accepted_tokens_total")
    assert 0 < accepted <= drafted
    assert value("spec_decode_mean_accepted_length") == 1 + accepted / value(
        "spec_decode_num_drafts_total")
