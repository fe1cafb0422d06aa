"""The web playground at ``/``: its files, and a real browser (Playwright driving the system
Chromium, ``helpers.browser``) using it against a live server on the tiny model: streaming
input typed key by key, edits, Enter, the whole-prompt comparison, a wrong API key, an idle
session that starts afresh, keyboard-only chat, reasoning, parallel paths, the metrics panel,
4xx and a lost server shown as messages."""

from __future__ import annotations

import json
import re
import time
from importlib import resources

import httpx
import pytest
from conftest import TINY_ENGINE, live_server, slow_down, tiny_llm, wait_pool_full
from helpers.browser import launch_chromium
from helpers.scripted import script
from helpers.tiny import tiny_checkpoint
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from thinkstream.async_llm import AsyncLLM
from thinkstream.config import EngineConfig
from thinkstream.engine.llm_engine import LLMEngine
from thinkstream.server.config import ServerConfig
from thinkstream.server.session_hub import SessionLimits

SYSTEM = "Be brief."
MAX_TOKENS = 8


# ------------------------------------------------------------------ files, no browser
def test_page_and_files_need_no_key_and_nothing_else_opens() -> None:
    llm = tiny_llm()
    with live_server(llm, ServerConfig(served_model_name="tiny", api_keys=("sk-k",))) as live:
        page = httpx.get(live.url + "/")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert '<script type="module" src="/playground/app.js"></script>' in page.text
        assert "default-src 'self'" in page.headers["content-security-policy"]
        for name in ("app.js", "api.js", "stream.js"):  # modules: served as JavaScript
            js = httpx.get(f"{live.url}/playground/{name}")
            assert js.status_code == 200
            assert js.headers["content-type"].startswith("text/javascript")
        css = httpx.get(live.url + "/playground/style.css")
        assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")
        for path in ("/playground/", "/playground/x.js", "/index.html", "/v1/models"):
            assert httpx.get(live.url + path).status_code == 401, path
        assert httpx.post(live.url + "/", json={}).status_code == 401
    llm.shutdown()


def test_files_load_nothing_from_elsewhere() -> None:
    static = resources.files("thinkstream.server") / "static"
    for name in ("index.html", "app.js", "api.js", "stream.js", "style.css"):
        text = (static / name).read_text()
        assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}/", text, re.I), name
        assert "@import" not in text and "<script>" not in text, name  # CSP: no inline script


def test_same_origin_websocket_allowed_cross_origin_refused(tiny_server) -> None:
    ws_url = tiny_server.url.replace("http", "ws") + "/v1/sessions/ws"
    with connect(ws_url, origin=tiny_server.url) as ws:  # the page's own origin
        ws.send(json.dumps({"type": "open", "prompt": "hi", "max_tokens": 2}))
        assert json.loads(ws.recv())["type"] == "opened"
    with pytest.raises(InvalidStatus) as refused:
        connect(ws_url, origin="https://evil.example")
    assert refused.value.response.status_code == 403
    wait_pool_full(tiny_server.llm)


# ------------------------------------------------------------------ browser helpers
@pytest.fixture(scope="module")
def browser():
    yield from launch_chromium()


@pytest.fixture(autouse=True)
def _close_pages(request):
    """After each browser test its pages close, which drops their WebSockets and so aborts
    their sessions: a test that fails midway leaves nothing open for the next one."""
    yield
    if "browser" in request.fixturenames:
        for context in request.getfixturevalue("browser").contexts:
            context.close()


def open_page(browser, url: str, ready: bool = True):
    page = browser.new_context(bypass_csp=True).new_page()  # lets wait_for_function eval
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.errors = errors
    page.goto(url + "/")
    if ready:
        page.wait_for_function("document.querySelector('#server-state').textContent"
                               ".startsWith('ready')", timeout=10_000)
    page.fill("#system", SYSTEM)
    page.fill("#max-tokens", str(MAX_TOKENS))
    return page


def messages(text: str) -> list[dict]:
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": text}]


def greedy_answer(url: str, text: str, key: str | None = None) -> str:
    """The same question as one chat completion (what the page's answer must equal)."""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    r = httpx.post(url + "/v1/chat/completions", headers=headers, timeout=30, json={
        "messages": messages(text), "max_tokens": MAX_TOKENS, "temperature": 0, "top_p": 1})
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]["message"]["content"]


def tokens_of(url: str, text: str, key: str | None = None) -> int:
    """Input tokens a fresh session holds for ``text`` (opened over HTTP, its input set by
    one update, which has no size limit; then deleted)."""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    sid = httpx.post(url + "/v1/sessions", headers=headers,
                     json={"messages": [{"role": "system", "content": SYSTEM}],
                           "max_tokens": 1}).json()["id"]
    r = httpx.put(f"{url}/v1/sessions/{sid}/input", headers=headers, timeout=30,
                  json={"text": text, "seq": 0})
    assert r.status_code == 200, r.text
    received = session_info(url, sid, key)["tokens_received"]
    httpx.delete(f"{url}/v1/sessions/{sid}", headers=headers)
    return received


def session_info(url: str, sid: str, key: str | None = None) -> dict:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.get(f"{url}/v1/sessions/{sid}", headers=headers).json()


def wait_caught_up(page, tokens: int) -> dict:
    """Until the page shows ``tokens`` received and all but the held-back last one computed
    (the input is still open); returns the numbers shown."""
    page.wait_for_function(
        "([n]) => +document.querySelector('#st-received').textContent === n && "
        "+document.querySelector('#st-computed').textContent === n - 1 && "
        "document.querySelector('#st-state').dataset.synced === '1'", arg=[tokens],
        timeout=30_000)
    return {"sid": page.get_attribute("#st-state", "data-session"),
            "received": int(page.inner_text("#st-received")),
            "computed": int(page.inner_text("#st-computed"))}


def press_enter_and_read(page) -> str:
    page.keyboard.press("Enter")
    page.wait_for_function("document.querySelector('#st-state').textContent === 'answered'",
                           timeout=30_000)
    assert float(page.get_attribute("#t-stream", "data-ms")) > 0
    return page.eval_on_selector("#stream-answer", "e => e.textContent")


# ------------------------------------------------------------------ browser tests
def test_streaming_input_typed_key_by_key(browser, tiny_server, tmp_path) -> None:
    url = tiny_server.url
    page = open_page(browser, url)
    text = "The meeting moved from Thursday to Friday at noon. When is the meeting?"
    page.click("#stream-input")
    page.keyboard.type(text)
    shown = wait_caught_up(page, tokens_of(url, text))
    info = session_info(url, shown["sid"])
    assert info["state"] == "open"  # computed before Enter, as the page says
    assert (info["tokens_received"], info["tokens_computed"]) == (shown["received"],
                                                                  shown["received"] - 1)
    page.screenshot(path=str(tmp_path / "typed.png"))
    answer = press_enter_and_read(page)
    assert answer == greedy_answer(url, text) and answer
    assert page.inner_text("#st-at-enter") == f"{shown['computed']} of {shown['received']}"
    assert session_info(url, shown["sid"])["state"] == "finished"
    page.click("#compare")
    page.wait_for_selector("#t-whole[data-ms]", timeout=30_000)
    page.wait_for_function("!document.querySelector('#compare').disabled")  # all streamed
    assert page.eval_on_selector("#compare-answer", "e => e.textContent") == answer
    assert "the streamed time" in page.inner_text("#t-ratio")
    page.screenshot(path=str(tmp_path / "answered.png"), full_page=True)
    assert page.errors == []
    tiny_server.wait_idle()


def test_edits_update_the_open_session(browser, tiny_server, tmp_path) -> None:
    url = tiny_server.url
    page = open_page(browser, url)
    page.click("#stream-input")
    page.keyboard.type("Alice has 3 apples and Bob has 5 pears. Who has pears?")
    first = wait_caught_up(page, tokens_of(url, "Alice has 3 apples and Bob has 5 pears. "
                                                "Who has pears?"))
    seq_typed = session_info(url, first["sid"])["next_seq"]
    page.keyboard.press("Control+Home")
    for _ in range(len("Alice has ")):
        page.keyboard.press("ArrowRight")
    page.keyboard.press("Delete")  # "3" -> "seventeen": an edit before the end
    page.keyboard.type("seventeen")
    page.keyboard.press("Control+End")
    for _ in range(len("pears?")):
        page.keyboard.press("Backspace")  # a deletion at the end
    page.keyboard.type("apples?")
    edited = "Alice has seventeen apples and Bob has 5 pears. Who has apples?"
    assert page.input_value("#stream-input") == edited
    second = wait_caught_up(page, tokens_of(url, edited))
    assert second["sid"] == first["sid"] and second["received"] != first["received"]
    # the edits went to the same session as numbered updates (how many depends on how fast
    # the keys came: updates are coalesced, at most ~33 a second)
    assert session_info(url, second["sid"])["next_seq"] > seq_typed
    page.screenshot(path=str(tmp_path / "edited.png"))
    assert press_enter_and_read(page) == greedy_answer(url, edited)
    assert page.errors == []
    tiny_server.wait_idle()


def test_a_paste_longer_than_a_chunk_goes_in_pieces(browser, tmp_path) -> None:
    """18,000 pasted characters (the server takes at most 16,384 in one chunk): an opening
    prompt and appends of at most 8,192 characters, an emoji at a cut kept whole; the session
    holds the whole text and answers as the whole request does."""
    cfg = EngineConfig(**{**TINY_ENGINE, "num_blocks": 1536, "max_num_batched_tokens": 1024})
    llm = AsyncLLM(LLMEngine(config=cfg, checkpoint=tiny_checkpoint(max_position_embeddings=8192)))
    doc = "The quick brown fox jumps over the lazy dog. " * 400
    text = doc[:8191] + "\U0001f642" + doc[8191:] + "What jumps?"  # 🙂 astride 8,192 (UTF-16)
    sent: list[dict] = []
    with live_server(llm) as live:
        page = open_page(browser, live.url)
        page.on("websocket", lambda ws: ws.on("framesent", lambda f: sent.append(json.loads(f))))
        page.click("#stream-input")
        page.keyboard.insert_text(text)
        wait_caught_up(page, tokens_of(live.url, text))
        pieces = [m.get("prompt", m.get("text")) for m in sent if m["type"] in ("open", "append")]
        assert "".join(pieces) == text and len(pieces) == 3
        assert max(map(len, pieces)) <= 8192 and pieces[1].startswith("\U0001f642")
        assert page.inner_text("#messages") == ""
        assert press_enter_and_read(page) == greedy_answer(live.url, text)
        assert page.errors == []
        live.wait_idle()
    llm.shutdown()


def test_input_beyond_the_context_is_an_error_not_a_wait(browser, tiny_server) -> None:
    """More than the context holds (and than one chunk): the server's limit is said once
    however often it is hit, and the time to the first character says it failed."""
    page = open_page(browser, tiny_server.url)
    page.click("#stream-input")
    page.keyboard.insert_text("The quick brown fox jumps over the lazy dog. " * 400)
    page.wait_for_function("document.querySelector('#st-state').textContent === 'error'",
                           timeout=30_000)
    page.keyboard.press("Enter")  # the same text again: refused again
    page.wait_for_function("document.querySelector('#t-stream').textContent === 'failed'",
                           timeout=30_000)
    shown = page.eval_on_selector_all("#messages .msg.error", "ps => ps.map(p => p.dataset.text)")
    assert len(shown) == 1 and "session_tokens_exceeded" in shown[0], shown
    assert not page.is_disabled("#stream-send")
    assert page.errors == []
    wait_pool_full(tiny_server.llm)


def test_new_session_before_the_first_character_stops_the_answer(browser, tmp_path) -> None:
    llm = tiny_llm()
    slow_down(llm, 0.3)  # the answer's first token comes after a few slow steps
    with live_server(llm) as live:
        page = open_page(browser, live.url)
        page.click("#stream-input")
        page.keyboard.type("Hi")
        page.keyboard.press("Enter")
        page.wait_for_function("document.querySelector('#st-state').textContent === 'answering'")
        assert page.inner_text("#t-stream") == "…"
        page.click("#stream-reset")
        assert page.inner_text("#t-stream") == "stopped"  # not waiting for what will not come
        assert page.inner_text("#st-state") == "none" and not page.is_disabled("#stream-send")
        wait_pool_full(llm)  # the dropped connection aborted the session
        assert page.errors == []
    llm.shutdown()


def test_wrong_api_key_is_shown_then_the_right_one_kept(browser, tmp_path) -> None:
    llm = tiny_llm()
    with live_server(llm, ServerConfig(served_model_name="tiny", api_keys=("sk-right",))) as live:
        page = open_page(browser, live.url, ready=False)
        page.wait_for_selector("#messages .msg.error")
        assert page.inner_text("#server-state") == "needs an API key"
        assert "HTTP 401: missing or invalid API key" in page.inner_text("#messages")
        page.fill("#api-key", "sk-cl\u00e9\U0001f642")  # no header can carry it: refused
        page.press("#api-key", "Enter")
        page.wait_for_selector("text=printable ASCII without spaces: not saved")
        assert page.evaluate("localStorage.length") == 0
        page.fill("#api-key", "sk-wrong")
        page.press("#api-key", "Enter")
        page.click("#stream-input")
        page.keyboard.type("Hello")
        page.wait_for_function("document.querySelector('#st-state').textContent === 'error'")
        assert "missing or invalid API key (invalid_api_key)" in page.inner_text("#messages")
        page.screenshot(path=str(tmp_path / "wrong-key.png"))
        page.fill("#api-key", "sk-right")
        page.press("#api-key", "Enter")
        page.wait_for_function("document.querySelector('#server-state').textContent"
                               ".startsWith('ready')")
        said = page.eval_on_selector_all("#messages .msg", "ps => ps.map(p => p.dataset.text)")
        assert said == ["API key saved in this browser."]  # the errors about the old key gone
        page.click("#stream-input")
        page.keyboard.type(" there?")
        wait_caught_up(page, tokens_of(live.url, "Hello there?", "sk-right"))
        assert press_enter_and_read(page) == greedy_answer(live.url, "Hello there?", "sk-right")
        page.reload()
        assert page.input_value("#api-key") == "sk-right"  # kept in local storage
        page.wait_for_function("document.querySelector('#server-state').textContent"
                               ".startsWith('ready')")
        assert page.errors == []
        live.wait_idle()
    llm.shutdown()


def test_idle_session_starts_afresh(browser, tmp_path) -> None:
    llm = tiny_llm()
    with live_server(llm, session_limits=SessionLimits(idle_timeout_s=0.3)) as live:
        page = open_page(browser, live.url)
        page.click("#stream-input")
        page.keyboard.type("First part of the text.")
        first = wait_caught_up(page, tokens_of(live.url, "First part of the text."))
        deadline = time.monotonic() + 10
        while session_info(live.url, first["sid"])["state"] == "open":
            assert time.monotonic() < deadline, "the idle session was not closed"
            time.sleep(0.05)
        page.wait_for_function("document.querySelector('#st-state').textContent === 'ended'",
                               timeout=5_000)  # seen by the page's look at it, not left 'open'
        assert "The session ended (idle_timeout)" in page.inner_text("#messages")
        page.keyboard.type(" And more?")
        page.wait_for_selector("text=a new one starts with your text")
        text = "First part of the text. And more?"
        second = wait_caught_up(page, tokens_of(live.url, text))
        assert second["sid"] != first["sid"]
        assert press_enter_and_read(page) == greedy_answer(live.url, text)
        page.screenshot(path=str(tmp_path / "restarted.png"))
        assert page.errors == []
        live.wait_idle()
    llm.shutdown()


def test_keyboard_only_chat_errors_and_lost_server(browser, tmp_path) -> None:
    llm = tiny_llm()
    with live_server(llm) as live:
        page = open_page(browser, live.url)
        page.fill("#max-tokens", str(MAX_TOKENS))
        page.evaluate("document.activeElement.blur()")
        for _ in range(12):  # from the top of the page, Tab until the mode tabs
            page.keyboard.press("Tab")
            if page.evaluate("document.activeElement.id") == "tab-stream":
                break
        page.keyboard.press("ArrowRight")
        assert page.get_attribute("#tab-chat", "aria-selected") == "true"
        assert page.is_visible("#panel-chat") and not page.is_visible("#panel-stream")
        page.keyboard.press("Tab")
        assert page.evaluate("document.activeElement.id") == "chat-input"
        page.keyboard.type("Where is Paris?")
        page.keyboard.press("Enter")
        page.wait_for_selector("#chat-log .turn.assistant .answer")
        page.wait_for_function("!document.querySelector('#chat-send').disabled")
        answer = page.eval_on_selector("#chat-log .turn.assistant .answer", "e => e.textContent")
        assert answer == greedy_answer(live.url, "Where is Paris?")
        page.fill("#top-p", "5")  # a 400 naming the field, shown as a message
        page.focus("#chat-input")
        page.keyboard.type("Again?")
        page.keyboard.press("Enter")
        page.wait_for_selector("#messages .msg.error")
        assert "HTTP 400" in page.inner_text("#messages")
        assert "top_p" in page.inner_text("#messages")
        page.fill("#top-p", "1")
        page.route("**/v1/chat/completions", lambda route: route.fulfill(
            status=502, content_type="text/html", body="<h1>502 Bad Gateway</h1>"))  # a proxy
        page.focus("#chat-input")
        page.keyboard.type("Via a proxy?")
        page.keyboard.press("Enter")
        page.wait_for_selector("text=HTTP 502: Bad Gateway")
        page.unroute("**/v1/chat/completions")
        page.screenshot(path=str(tmp_path / "chat.png"), full_page=True)
    llm.shutdown()  # the server is gone: a send is a message, the page stays usable
    page.focus("#chat-input")
    page.keyboard.type("Still there?")
    page.keyboard.press("Enter")
    page.wait_for_selector("text=The connection to the server was lost")
    page.wait_for_function("!document.querySelector('#chat-send').disabled")
    page.wait_for_function("document.querySelector('#server-state').textContent === "
                           "'unreachable'", timeout=10_000)  # the next scrape fails: not 'ready'
    assert page.inner_text("#m-running") == "offline" and page.inner_text("#m-kv") == "–"
    page.click("#tab-stream")  # streaming input with the server gone: said, not frozen
    page.click("#stream-input")
    page.keyboard.type("Anyone?")
    page.wait_for_selector("text=connection was lost")
    assert page.inner_text("#st-state") == "disconnected"
    assert page.errors == []


def _metric(text: str, name: str) -> float:
    return sum(float(line.split()[-1]) for line in text.splitlines()
               if line.startswith(name + "{") or line.startswith(name + " "))


def test_metrics_panel_reads_the_servers_metrics(browser, tmp_path) -> None:
    llm = tiny_llm()
    with live_server(llm) as live:
        page = open_page(browser, live.url)
        page.wait_for_function("document.querySelector('#m-running').textContent === '0'")
        page.wait_for_timeout(300)  # the page's first scrape is in
        before = httpx.get(live.url + "/metrics").text
        greedy_answer(live.url, "Hello")
        after = httpx.get(live.url + "/metrics").text
        name = "thinkstream_time_to_first_token_seconds"
        ttft = 1000 * (_metric(after, name + "_sum") - _metric(before, name + "_sum"))
        assert _metric(after, name + "_count") - _metric(before, name + "_count") == 1
        hit = _metric(after, "thinkstream_prefix_cache_hit_rate")
        kv = _metric(after, "thinkstream_kv_cache_usage_ratio")
        want = {"m-ttft": f"{ttft:.0f} ms", "m-running": "0", "m-waiting": "0",
                "m-hit": f"{100 * hit:.1f} %", "m-kv": f"{100 * kv:.1f} %"}
        # A scrape taken during the request shows it running: wait for one after it.
        page.wait_for_function("(want) => Object.entries(want).every(([id, v]) => "
                               "document.getElementById(id).textContent === v)", arg=want,
                               timeout=10_000)
        assert page.errors == []
    llm.shutdown()


def test_think_while_reading_notes_appear_while_typing(browser, tiny_server, tmp_path) -> None:
    page = open_page(browser, tiny_server.url)
    page.check("#think")
    page.fill("#note-tokens", "12")  # the tiny tokenizer's note frame is longer than SmolLM2's
    page.click("#stream-input")
    page.keyboard.type("Tom has 3 apples. He buys 4 more. ")
    page.wait_for_function("document.querySelector('#stream-notes').textContent.length > 0",
                           timeout=30_000)
    assert page.inner_text("#st-state") == "open"  # notes before the input ends
    assert page.is_visible("#notes-box")
    page.keyboard.type("How many apples?")
    page.keyboard.press("Enter")
    page.wait_for_function("document.querySelector('#st-state').textContent === 'answered'",
                           timeout=30_000)
    page.screenshot(path=str(tmp_path / "notes.png"), full_page=True)
    assert page.errors == []
    tiny_server.wait_idle()


def test_model_without_chat_template_streams_a_plain_prompt(browser, tmp_path) -> None:
    llm = tiny_llm()
    tok = llm.engine.tokenizer
    template, tok.chat_template = tok.chat_template, None  # as a base model (Gemma 3 270M)
    try:
        _plain_prompt_session(browser, llm)
    finally:
        tok.chat_template = template  # the tiny checkpoint's tokenizer is shared
        llm.shutdown()


def _plain_prompt_session(browser, llm) -> None:
    with live_server(llm) as live:
        page = open_page(browser, live.url)
        page.click("#stream-input")
        text = "Once upon a time"
        page.keyboard.type(text)
        page.wait_for_selector("text=no chat template")
        opened = httpx.post(live.url + "/v1/sessions", json={"prompt": text}).json()
        httpx.delete(f"{live.url}/v1/sessions/{opened['id']}")
        wait_caught_up(page, opened["tokens_received"])
        answer = press_enter_and_read(page)
        r = httpx.post(live.url + "/v1/completions", json={
            "prompt": text, "max_tokens": MAX_TOKENS, "temperature": 0, "top_p": 1})
        assert answer == r.json()["choices"][0]["text"]
        page.click("#compare")
        page.wait_for_selector("#t-whole[data-ms]")
        page.wait_for_function("!document.querySelector('#compare').disabled")
        assert page.eval_on_selector("#compare-answer", "e => e.textContent") == answer
        assert page.errors == []
        live.wait_idle()


def test_chat_shows_reasoning_apart_from_the_answer(browser, tmp_path) -> None:
    llm = tiny_llm()
    script(llm, lambda prompt: "<think>The user asks about Paris.</think>Paris is in France.")
    cfg = ServerConfig(served_model_name="tiny", reasoning_parser="qwen3")
    with live_server(llm, cfg) as live:
        page = open_page(browser, live.url)
        page.fill("#max-tokens", "64")
        page.click("#tab-chat")
        page.fill("#chat-input", "Where is Paris?")
        page.press("#chat-input", "Enter")
        page.wait_for_function("!document.querySelector('#chat-send').disabled")
        turn = "#chat-log .turn.assistant"
        assert page.is_visible(f"{turn} details"), (page.inner_text("#chat-log"),
                                                    page.inner_text("#messages"))
        assert page.inner_text(f"{turn} .reasoning") == "The user asks about Paris."
        assert page.inner_text(f"{turn} .answer") == "Paris is in France."
        page.screenshot(path=str(tmp_path / "reasoning.png"))
        for field, value in (("#temperature", "0.5"), ("#top-p", "0.9"), ("#seed", "7"),
                             ("#stop", "France\nnever")):
            page.fill(field, value)
        with page.expect_request("**/v1/chat/completions") as sent:
            page.fill("#chat-input", "And Rome?")
            page.press("#chat-input", "Enter")
        body = sent.value.post_data_json
        assert {k: body[k] for k in ("temperature", "top_p", "max_tokens", "seed", "stop",
                                     "stream", "model")} == {
            "temperature": 0.5, "top_p": 0.9, "max_tokens": 64, "seed": 7,
            "stop": ["France", "never"], "stream": True, "model": "tiny"}
        assert body["messages"] == [
            {"role": "system", "content": SYSTEM}, {"role": "user", "content": "Where is Paris?"},
            {"role": "assistant", "content": "Paris is in France."},
            {"role": "user", "content": "And Rome?"}]
        page.wait_for_function("!document.querySelector('#chat-send').disabled")
        assert page.inner_text(f"{turn} >> nth=1 >> .answer") == "Paris is in "  # cut at the stop
        assert page.errors == []
        live.wait_idle()
    llm.shutdown()


def test_parallel_paths_side_by_side_then_the_summary(browser, tiny_server, tmp_path) -> None:
    page = open_page(browser, tiny_server.url)
    page.fill("#seed", "3")
    page.click("#tab-parallel")
    page.fill("#par-paths", "3")
    page.fill("#par-tokens", "4")
    page.fill("#par-temp", "1")
    page.fill("#par-input", "What is the capital of France?")
    page.press("#par-input", "Enter")
    page.wait_for_function("!document.querySelector('#par-send').disabled")
    shown = page.eval_on_selector_all("#par-paths-out .path pre", "ps => ps.map(p => p.textContent)")
    summary = page.eval_on_selector("#par-summary", "e => e.textContent")
    whole = httpx.post(tiny_server.url + "/v1/chat/completions", timeout=60, json={
        "messages": messages("What is the capital of France?"), "max_tokens": MAX_TOKENS,
        "temperature": 0, "top_p": 1, "seed": 3,
        "parallel": {"paths": 3, "path_tokens": 4, "merge": "summary", "temperature": 1}}).json()
    message = whole["choices"][0]["message"]
    assert shown == message["paths"] and all(shown)  # each path in its own column
    assert summary == message["content"]
    boxes = [page.locator("#par-paths-out .path").nth(i).bounding_box() for i in range(3)]
    assert boxes[0]["y"] == boxes[1]["y"] == boxes[2]["y"]  # side by side
    assert boxes[0]["x"] < boxes[1]["x"] < boxes[2]["x"]
    page.screenshot(path=str(tmp_path / "parallel.png"), full_page=True)
    assert page.errors == []
    tiny_server.wait_idle()
