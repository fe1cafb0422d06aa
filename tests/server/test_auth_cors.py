"""API key (constant-time, no bypass by trailing slash or OPTIONS, never logged) and CORS
(denied unless the origin is listed); client request ids are cut short and log-safe."""

from __future__ import annotations

import logging

import httpx
import pytest
from conftest import live_server, tiny_llm

from thinkstream.server.config import ServerConfig

KEY = "sk-test-0123456789"
ALLOWED = "https://app.example.com"


@pytest.fixture(scope="module")
def secured():
    llm = tiny_llm()
    cfg = ServerConfig(served_model_name="tiny", api_keys=(KEY,), allowed_origins=(ALLOWED,))
    with live_server(llm, cfg) as live:
        yield live
    llm.shutdown()


ROUTES = [("GET", "/v1/models"), ("GET", "/v1/models/"), ("POST", "/v1/completions"),
          ("POST", "/v1/completions/"), ("POST", "/v1/chat/completions"), ("GET", "/metrics/"),
          ("POST", "/metrics"), ("POST", "/v1/responses"), ("POST", "/tokenize"),
          ("POST", "/detokenize"), ("GET", "/tokenizer_info"),
          ("GET", "/openapi.json"), ("GET", "/docs"), ("POST", "/v1/requests/x/cancel"),
          ("OPTIONS", "/v1/models"), ("OPTIONS", "/v1/completions"), ("GET", "//v1/models"),
          ("POST", "/health"), ("GET", "/nope"), ("HEAD", "/v1/models")]


@pytest.mark.parametrize(("method", "path"), ROUTES)
@pytest.mark.parametrize("auth", [None, "Bearer wrong", "Bearer " + KEY[:-1], "Basic " + KEY,
                                  KEY, "Bearer " + KEY + "x"])
def test_401_without_the_right_key(secured, method, path, auth) -> None:
    headers = {"Authorization": auth} if auth else {}
    r = httpx.request(method, secured.url + path, headers=headers, json={"prompt": "x"})
    assert r.status_code == 401
    if method != "HEAD":
        assert r.json()["error"]["type"] == "authentication_error"


def test_right_key_and_open_health(secured, caplog) -> None:
    with caplog.at_level(logging.DEBUG):
        assert httpx.get(secured.url + "/health").status_code == 200
        good = {"Authorization": f"Bearer {KEY}"}
        assert httpx.get(secured.url + "/v1/models", headers=good).status_code == 200
        assert httpx.get(secured.url + "/v1/models", headers={"X-API-Key": KEY}).status_code == 200
        r = httpx.post(secured.url + "/v1/completions", headers=good,
                       json={"prompt": "hi", "max_tokens": 2})
        assert r.status_code == 200
    assert KEY not in caplog.text


def test_cors_denied_unless_listed(secured) -> None:
    pre = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization"}
    r = httpx.options(secured.url + "/v1/completions", headers={**pre, "Origin": "https://evil.example"})
    assert r.status_code == 400 and "access-control-allow-origin" not in r.headers
    r = httpx.options(secured.url + "/v1/completions", headers={**pre, "Origin": ALLOWED})
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == ALLOWED
    good = {"Authorization": f"Bearer {KEY}"}
    r = httpx.get(secured.url + "/v1/models", headers={**good, "Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in r.headers
    r = httpx.get(secured.url + "/v1/models", headers={**good, "Origin": ALLOWED})
    assert r.headers["access-control-allow-origin"] == ALLOWED


def test_cors_denied_by_default(tiny_server) -> None:
    r = httpx.options(tiny_server.url + "/v1/models", headers={
        "Origin": "https://app.example.com", "Access-Control-Request-Method": "GET"})
    assert r.status_code == 400 and "access-control-allow-origin" not in r.headers


def test_request_ids_are_sanitised(tiny_server) -> None:
    rid = "evil\nid\r\x1b[31m" + "a" * 1000
    r = httpx.post(tiny_server.url + "/v1/completions",
                   json={"prompt": "hi", "max_tokens": 1, "request_id": rid})
    assert r.status_code == 200
    got = r.json()["id"]
    assert got == r.headers["x-request-id"]
    assert len(got) <= tiny_server.state.config.max_request_id_len
    assert got.startswith("evil_id___31m") and all(ch.isalnum() or ch in "._:-" for ch in got)
    r = httpx.post(tiny_server.url + "/v1/completions", json={"prompt": "hi", "max_tokens": 1},
                   headers={"X-Request-Id": 'my-id.1 "quoted" %s' % ("b" * 500)})
    assert r.json()["id"].startswith("my-id.1__quoted__bbb") and len(r.json()["id"]) == 128
