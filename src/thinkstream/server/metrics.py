"""Prometheus metrics, one ``CollectorRegistry`` per app (no process-global state).

Latency histograms are observed by the routes as outputs reach them (what a client sees);
token counters and finish reasons (aborts included) are read from ``AsyncLLM.stats``, and
the gauges (running, waiting, KV blocks) from the engine itself, at scrape time: a scrape
during a long step sees the requests admitted since it began as waiting.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from thinkstream.async_llm import AsyncLLM

_LATENCY_BUCKETS = (0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0,
                    7.5, 10.0, 20.0, 40.0, 80.0)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class _EngineCollector(Collector):
    def __init__(self, llm: AsyncLLM, model: str, queued: Callable[[], int]) -> None:
        self.llm, self.model, self.queued = llm, model, queued

    def collect(self):
        s, labels = self.llm.stats, [self.model]

        def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
            g = GaugeMetricFamily(f"thinkstream_{name}", doc, labels=["model_name"])
            g.add_metric(labels, value)
            return g

        def counter(name: str, doc: str, value: float) -> CounterMetricFamily:
            c = CounterMetricFamily(f"thinkstream_{name}", doc, labels=["model_name"])
            c.add_metric(labels, value)
            return c

        # Read now, from the engine thread's structures: lengths and counters are single
        # reads, so a scrape mid-step sees a consistent-enough snapshot without waiting.
        usage = self.llm.engine.usage()
        running, waiting = usage.num_running, usage.num_waiting + self.queued()
        total, used = usage.kv_blocks_total, usage.kv_blocks_used
        yield gauge("num_requests_running", "Sequences in the running batch.", running)
        yield gauge("num_requests_waiting", "Sequences waiting to be scheduled.", waiting)
        yield gauge("kv_blocks_used", "KV cache blocks in use.", used)
        yield gauge("kv_blocks_total", "KV cache blocks in the pool.", total)
        yield gauge("kv_cache_usage_ratio", "Fraction of KV blocks in use.", used / max(1, total))
        yield gauge("prefix_cache_hit_rate", "Prefix-cache hit rate (tokens).",
                    usage.prefix_hit_rate)
        yield gauge("engine_healthy", "1 while the engine loop runs.", float(self.llm.dead is None))
        yield counter("prompt_tokens", "Prompt tokens admitted.", s.prompt_tokens)
        yield counter("generation_tokens", "Tokens generated.", s.generation_tokens)
        yield counter("num_preemptions", "Sequences preempted.", usage.num_preemptions)
        spec = getattr(self.llm.engine, "speculative", None)
        if spec is not None:  # speculative decoding (speculative/decoder.py)
            st = spec.stats
            yield counter("spec_decode_num_drafts", "Draft verifications (a sequence's "
                          "drafts in one step).", st.num_drafts)
            yield counter("spec_decode_num_draft_tokens", "Draft tokens verified.",
                          st.num_draft_tokens)
            yield counter("spec_decode_num_accepted_tokens", "Draft tokens accepted.",
                          st.num_accepted_tokens)
            yield gauge("spec_decode_mean_accepted_length", "Tokens per verification: "
                        "accepted drafts plus the target's own.", st.mean_accepted_length)
        finished = CounterMetricFamily("thinkstream_request_success", "Finished sequences.",
                                       labels=["model_name", "finished_reason"])
        for reason, count in sorted(s.finished.items()):
            finished.add_metric([self.model, reason], count)
        yield finished


class ServerMetrics:
    """``queued``: sequences the server admitted that have not reached the engine yet (they
    wait in its command queue while a step runs); counted as waiting."""

    def __init__(self, llm: AsyncLLM, model: str, queued: Callable[[], int] = lambda: 0) -> None:
        self.registry = CollectorRegistry()
        self.model = model
        self.queued = queued
        self.registry.register(_EngineCollector(llm, model, lambda: self.queued()))

        def hist(name: str, doc: str) -> Histogram:
            return Histogram(f"thinkstream_{name}", doc, ["model_name"],
                             buckets=_LATENCY_BUCKETS, registry=self.registry)

        self.ttft = hist("time_to_first_token_seconds", "Time to first token.").labels(model)
        self.itl = hist("inter_token_latency_seconds", "Time between output tokens.").labels(model)
        self.e2e = hist("e2e_request_latency_seconds", "Request latency, end to end.").labels(model)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class RequestTimer:
    """Observes one request's TTFT, inter-token gaps and end-to-end latency."""

    def __init__(self, metrics: ServerMetrics) -> None:
        self.metrics = metrics
        self.start = self.last = time.perf_counter()
        self.first = True

    def tokens(self, count: int) -> None:
        if count <= 0:
            return
        now = time.perf_counter()
        if self.first:
            self.metrics.ttft.observe(now - self.start)
            self.first = False
        else:
            gap = (now - self.last) / count
            for _ in range(count):
                self.metrics.itl.observe(gap)
        self.last = now

    def done(self) -> None:
        self.metrics.e2e.observe(time.perf_counter() - self.start)
