"""Integration: the playground in a real browser on the default model (SmolLM2-135M): a
~1,000-token document streamed into a session while it is "typed" answers sooner after the
key press than the same question sent whole at the end, as the page displays it."""

from __future__ import annotations

import pytest
from helpers.browser import launch_chromium

from thinkstream.bench.playground import QUESTION, drive
from thinkstream.bench.streaming import document

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def browser():
    yield from launch_chromium()


def test_streamed_first_character_before_the_whole_prompt(browser, real, tmp_path) -> None:
    doc = "".join(document(real.llm.tokenizer, 1000, seed=7)[:-1])
    page = browser.new_context(bypass_csp=True).new_page()
    page.goto(real.url + "/")
    page.wait_for_function("document.querySelector('#server-state').textContent"
                           ".startsWith('ready')")
    page.fill("#max-tokens", "8")
    m = drive(page, doc, QUESTION)
    page.screenshot(path=str(tmp_path / "real.png"), full_page=True)
    assert m.received >= 1000 and m.computed == m.received - 1  # all but one before Enter
    assert m.answer and m.answer == m.whole_answer  # greedy: the same answer either way
    # the page shows the time to whole ms; stream_ms is its data-ms (one decimal, so 172.5
    # may show as 173): the same measurement, not a copy of the text
    shown, unit = page.inner_text("#t-stream").split()
    assert unit == "ms" and abs(float(shown) - m.stream_ms) <= 0.55, (shown, m.stream_ms)
    assert m.stream_ms < m.whole_ms, (m.stream_ms, m.whole_ms)
    real.wait_idle()
