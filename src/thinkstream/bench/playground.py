"""The playground measured in a real browser (docs/benchmarks.md, "Playground").

A headless Chromium (Playwright, the system ``chromium``) opens ``/`` of a live server on
the default model, pastes a document of about ``--doc-tokens`` tokens into the
streaming-input box sentence by sentence (each paste is an ``input`` event, as when a user
pastes or types fast), types the question key by key, waits until the page shows every
token but the held-back last one computed, presses Enter, then clicks the comparison (the
same question as one chat completion, its own ``cache_salt``: nothing cached). Per session:

- **browser, streamed**: key press -> first answer character in the page (``#t-stream``);
- **engine, streamed**: the close reaching ``AsyncLLM.close_session`` -> the first answer
  text leaving the engine, for that same session (the server's own time to first token);
- **browser, whole**: click -> first character of the comparison (``#t-whole``);
- **engine, whole**: the server's TTFT histogram for that request (``/metrics``).

    python -m thinkstream.bench.playground [--reps 3] [--doc-tokens 1000] [--threads 1]
        [--dtype float32] [--quantization int4] [--json docs/results/playground.json] [--screenshot docs/playground.png]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import socket
import statistics
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass

QUESTION = "In one sentence, what is this document about?"
# The page shows every edit acknowledged and all input tokens but the held-back last one
# computed (``#st-state[data-synced]``: the numbers come from after the last edit).
CAUGHT_UP = ("() => { const r = +document.querySelector('#st-received').textContent;"
             " const c = +document.querySelector('#st-computed').textContent;"
             " return r > 0 && c === r - 1 &&"
             " document.querySelector('#st-state').dataset.synced === '1'; }")


@dataclass(frozen=True)
class Measured:
    """What the page showed for one session (milliseconds) and its two answers."""

    stream_ms: float  # key press -> first answer character, streamed session
    whole_ms: float  # click -> first answer character, the same question sent whole
    received: int  # input tokens the session held at Enter
    computed: int  # of which computed before Enter
    answer: str
    whole_answer: str


def chromium_path() -> str | None:
    """``$THINKSTREAM_CHROMIUM`` or the first Chromium on ``PATH``."""
    return os.environ.get("THINKSTREAM_CHROMIUM") or next(
        (p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p),
        None)


def sentences(text: str) -> list[str]:
    """``text`` cut after each ". " (the pieces concatenate to ``text``)."""
    parts = text.split(". ")
    return [p + ". " for p in parts[:-1]] + ([parts[-1]] if parts[-1] else [])


def drive(page, document: str, question: str, timeout_ms: float = 120_000) -> Measured:
    """Paste ``document`` sentence by sentence, type ``question`` key by key, wait until the
    page shows all but the last input token computed, press Enter, then run the comparison.
    ``page``: a Playwright page on the playground, ready, with the settings filled in."""
    page.click("#stream-input")
    for piece in sentences(document):
        page.keyboard.insert_text(piece)
        page.wait_for_timeout(20)
    page.keyboard.type(question)
    page.wait_for_function(CAUGHT_UP, timeout=timeout_ms)
    received = int(page.inner_text("#st-received"))
    computed = int(page.inner_text("#st-computed"))
    page.keyboard.press("Enter")
    page.wait_for_function("document.querySelector('#st-state').textContent === 'answered'",
                           timeout=timeout_ms)
    page.click("#compare")
    page.wait_for_selector("#t-whole[data-ms]", timeout=timeout_ms)
    page.wait_for_function("!document.querySelector('#compare').disabled", timeout=timeout_ms)
    text = lambda sel: page.eval_on_selector(sel, "e => e.textContent")  # noqa: E731
    return Measured(float(page.get_attribute("#t-stream", "data-ms")),
                    float(page.get_attribute("#t-whole", "data-ms")), received, computed,
                    text("#stream-answer"), text("#compare-answer"))


class CloseTimer:
    """Wraps ``AsyncLLM.close_session`` of one engine: the time from each close to the first
    answer text the engine emits (seconds, in close order)."""

    def __init__(self, llm) -> None:
        self.ttft: list[float] = []
        inner = llm.close_session

        async def close_session(*args, **kwargs):
            t0 = time.perf_counter()
            stream = await inner(*args, **kwargs)

            async def timed():
                first = True
                async for out in stream:
                    if first and out.outputs and out.outputs[0].text:
                        first = False
                        self.ttft.append(time.perf_counter() - t0)
                    yield out

            return timed()

        llm.close_session = close_session


def machine() -> dict:
    """The CPU class (model, instruction sets, torch's capability) and the cores this
    process may use."""
    import torch

    from thinkstream.bench.report import machine as bench_machine

    return {**bench_machine(), "capability": torch.backends.cpu.get_cpu_capability()}


def ttft_histogram(url: str) -> tuple[float, float]:
    """(sum s, count) of the server's time-to-first-token histogram."""
    import httpx

    values = {"sum": 0.0, "count": 0.0}
    for line in httpx.get(url + "/metrics").text.splitlines():
        for key in values:
            if line.startswith(f"thinkstream_time_to_first_token_seconds_{key}"):
                values[key] += float(line.split()[-1])
    return values["sum"], values["count"]


@contextlib.contextmanager
def serving(llm, config) -> Iterator[str]:
    """``create_app`` behind uvicorn in a thread on a free port of 127.0.0.1; yields the URL."""
    from thinkstream.server.app import create_app
    from thinkstream.server.lifecycle import DrainingServer, uvicorn_config

    app = create_app(llm, config)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = DrainingServer(uvicorn_config(app, config, log_level="warning"), app.state.server,
                            config.shutdown_timeout)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--doc-tokens", type=int, default=1000)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--quantization", default=None, choices=["int8", "int4"])
    p.add_argument("--max-tokens", type=int, default=16)
    p.add_argument("--json", default=None)
    p.add_argument("--screenshot", default=None, help="PNG of the page after the first session")
    args = p.parse_args()

    import torch
    from playwright.sync_api import sync_playwright

    from thinkstream.async_llm import AsyncLLM
    from thinkstream.bench.streaming import document
    from thinkstream.config import EngineConfig
    from thinkstream.engine.llm_engine import LLMEngine
    from thinkstream.server.config import ServerConfig

    torch.set_num_threads(args.threads)
    cfg = EngineConfig(max_model_len=4096, num_threads=args.threads, dtype=args.dtype,
                       quantization=args.quantization)
    llm = AsyncLLM(LLMEngine(config=cfg))
    timer = CloseTimer(llm)
    rows = []
    with serving(llm, ServerConfig(served_model_name="smollm2-135m")) as url, \
            sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium_path())
        for rep in range(args.reps):
            doc = "".join(document(llm.tokenizer, args.doc_tokens, 100 + rep)[:-1])
            page = browser.new_context(bypass_csp=True, viewport={"width": 1280, "height": 1010}
                                       ).new_page()
            page.goto(url + "/")
            page.wait_for_function("document.querySelector('#server-state').textContent"
                                   ".startsWith('ready')")
            page.fill("#system", "Answer in one short sentence.")
            page.fill("#max-tokens", str(args.max_tokens))
            before = ttft_histogram(url)
            m = drive(page, doc, QUESTION)
            after = ttft_histogram(url)
            whole_engine = (after[0] - before[0]) / max(1.0, after[1] - before[1])
            if rep == 0 and args.screenshot:
                page.evaluate("document.activeElement.blur()")
                page.wait_for_timeout(2500)  # the metrics panel's next scrape
                page.screenshot(path=args.screenshot)
            rows.append({**asdict(m), "engine_stream_ms": 1000 * timer.ttft[-1],
                         "engine_whole_ms": 1000 * whole_engine})
            page.context.close()
            print(json.dumps({k: v for k, v in rows[-1].items() if "answer" not in k}))
        browser.close()
    llm.shutdown()
    keys = ("stream_ms", "engine_stream_ms", "whole_ms", "engine_whole_ms")
    med = {k: statistics.median(r[k] for r in rows) for k in keys}
    print("| document tokens | browser, streamed | engine, streamed | browser, whole | "
          "engine, whole |\n|---|---|---|---|---|")
    print(f"| {rows[0]['received']} | " + " | ".join(f"{med[k]:.0f} ms" for k in keys) + " |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"schema": "thinkstream-bench-playground/1", "machine": machine(),
                       "command": "python -m thinkstream.bench.playground " + " ".join(sys.argv[1:]),
                       "args": vars(args), "medians_ms": med, "sessions": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
