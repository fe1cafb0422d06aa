"""Prometheus metrics, one ``CollectorRegistry`` per app (no process-global state).

Latency histograms are observed by the routes as outputs reach them (what a client sees);
engine gauges and token counters are read from ``AsyncLLM.stats`` at scrape time.
"""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from thinkstream.async_engine import AsyncLLM

_LATENCY_BUCKETS = (0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0,
                    7.5, 10.0, 20.0, 40.0, 80.0)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class _EngineCollector(Collector):
    def __init__(self, llm: AsyncLLM, model: str) -> None:
        self.llm, self.model = llm, model

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

        yield gauge("num_requests_running", "Sequences in the running batch.", s.num_running)
        yield gauge("num_requests_waiting", "Sequences waiting to be scheduled.", s.num_waiting)
        yield gauge("kv_blocks_used", "KV cache blocks in use.", s.kv_blocks_used)
        yield gauge("kv_blocks_total", "KV cache blocks in the pool.", s.kv_blocks_total)
        yield gauge("kv_cache_usage_ratio", "Fraction of KV blocks in use.",
                    s.kv_blocks_used / max(1, s.kv_blocks_total))
        yield gauge("prefix_cache_hit_rate", "Prefix-cache hit rate (tokens).", s.prefix_hit_rate)
        yield gauge("engine_healthy", "1 while the engine loop runs.", float(self.llm.dead is None))
        yield counter("prompt_tokens", "Prompt tokens admitted.", s.prompt_tokens)
        yield counter("generation_tokens", "Tokens generated.", s.generation_tokens)
        yield counter("num_preemptions", "Sequences preempted.", s.num_preemptions)
        finished = CounterMetricFamily("thinkstream_request_success", "Finished sequences.",
                                       labels=["model_name", "finished_reason"])
        for reason, count in sorted(s.finished.items()):
            finished.add_metric([self.model, reason], count)
        yield finished


class ServerMetrics:
    def __init__(self, llm: AsyncLLM, model: str) -> None:
        self.registry = CollectorRegistry()
        self.model = model
        self.registry.register(_EngineCollector(llm, model))

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
