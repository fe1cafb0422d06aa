"""Integration: the faults of issue 16 that were reported on the real default model, replayed
with their exact inputs against a live server (the tiny-model tests cover each kind)."""

from __future__ import annotations

import httpx
import pytest

pytestmark = pytest.mark.integration
NAME = "smollm2"


def test_min_tokens_holds_back_a_stop_string(real) -> None:
    """Reported: this stopped after 2 tokens (", Paris" matched "Par")."""
    body = {"model": NAME, "prompt": "The capital city of France", "max_tokens": 12,
            "min_tokens": 8, "stop": ["Par"], "temperature": 0}
    r = httpx.post(real.url + "/v1/completions", json=body, timeout=120)
    choice = r.json()["choices"][0]
    assert (choice["text"], choice["finish_reason"], choice["stop_reason"]) == \
        (", Paris, which has a population of approximately 8.", "length", None)
    assert r.json()["usage"]["completion_tokens"] == 12
    free = httpx.post(real.url + "/v1/completions", json={**body, "min_tokens": 0}, timeout=120)
    assert (free.json()["choices"][0]["text"], free.json()["choices"][0]["stop_reason"]) == \
        (", ", "Par")


def test_split_characters_in_echoed_logprobs(real) -> None:
    """SmolLM2 splits 東 over three tokens and 京 over two: each keeps its own bytes, and
    offsets count characters of the text."""
    r = httpx.post(real.url + "/v1/completions", json={
        "model": NAME, "prompt": "Hi 東京", "max_tokens": 1, "echo": True, "logprobs": 0,
        "temperature": 0},
        timeout=120)
    lp = r.json()["choices"][0]["logprobs"]
    assert lp["tokens"][:6] == ["Hi", "bytes: \\xe6", "bytes:\\x9d", "bytes:\\xb1", "bytes:\\xe4\\xba",
                            "bytes:\\xac"]
    assert lp["text_offset"] == [0, 2, 3, 3, 4, 4, 5]  # " " ends at 3; the output after "Hi 東京"
