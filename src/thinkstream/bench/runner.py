"""Drive the peers: each in its own worker process (so its peak RSS is its own), started
together, then every workload run by all peers back to back, the order rotated every
repetition, each repetition with fresh prompts (seed + rep) so no cache carries over.

``run_bench`` returns the raw samples; ``report`` turns them into medians and ratios.
"""

from __future__ import annotations

import multiprocessing as mp
import resource
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from thinkstream.bench.peers import Timing
from thinkstream.bench.workloads import (
    Request,
    Sizes,
    build_workloads,
    decode_workload,
    prefill_workload,
)

PEER_NAMES = ("thinkstream", "hf", "llamacpp", "vllm")


@dataclass(frozen=True)
class PeerSpec:
    """What a worker needs to build a peer (picklable)."""

    name: str  # one of PEER_NAMES
    model: str | None  # thinkstream's model argument
    gguf: Path | None  # the file HF and llama.cpp load
    options: dict[str, Any] = field(default_factory=dict)
    checkpoint: Any = None  # an already loaded thinkstream checkpoint (tests)


def make_peer(spec: PeerSpec):
    if spec.name == "thinkstream":
        from thinkstream.bench.peers import ThinkstreamPeer

        return ThinkstreamPeer(spec.model, checkpoint=spec.checkpoint, **spec.options)
    if spec.gguf is None:
        raise ValueError(f"peer {spec.name!r} needs a GGUF model file")
    if spec.name == "hf":
        from thinkstream.bench.peers import HFPeer

        return HFPeer(spec.gguf, **spec.options)
    if spec.name == "llamacpp":
        from thinkstream.bench.llamacpp import LlamaCppPeer

        return LlamaCppPeer(spec.gguf, **spec.options)
    if spec.name == "vllm":
        from thinkstream.bench.vllm_peer import VLLMPeer

        return VLLMPeer(spec.gguf, **spec.options)
    raise ValueError(f"unknown peer {spec.name!r}; choose {', '.join(PEER_NAMES)}")


def peak_rss_mb() -> float:
    """This process's resident-set high-water mark (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class LocalPeer:
    """A peer in this process (tests, ``--in-process``): memory is the whole process's."""

    def __init__(self, spec: PeerSpec) -> None:
        self.name = spec.name
        baseline = peak_rss_mb()
        t0 = time.perf_counter()
        self.peer = make_peer(spec)
        self.info = {"settings": self.peer.settings(), "load_s": time.perf_counter() - t0,
                     "baseline_rss_mb": baseline, "vocab_size": self.peer.vocab_size}

    def wait_ready(self) -> dict[str, Any]:
        return self.info

    def prepare(self, requests: list[Request]) -> None:
        """Untimed set-up for ``requests`` (a peer's ``prepare``, where it has one)."""
        if hasattr(self.peer, "prepare"):
            self.peer.prepare(requests)

    def generate(self, requests: list[Request]) -> Timing:
        return self.peer.generate(requests)

    def peak_rss_mb(self) -> float:
        """The peer's own figure where it runs in a process of its own (vLLM), else this
        process's."""
        return getattr(self.peer, "peak_rss_mb", peak_rss_mb)()

    def close(self) -> None:
        if hasattr(self.peer, "close"):
            self.peer.close()
        self.peer = None


def _worker(spec: PeerSpec, conn) -> None:
    try:
        peer = LocalPeer(spec)
        conn.send(("ready", peer.info))
        while (msg := conn.recv()) is not None:
            kind, requests = msg
            conn.send(("ok", peer.generate(requests) if kind == "generate"
                       else peer.peak_rss_mb()))
        peer.close()
    except BaseException:  # report it to the parent instead of dying silently
        conn.send(("error", traceback.format_exc()))


class WorkerPeer:
    """A peer in a spawned worker process, driven over a pipe."""

    def __init__(self, spec: PeerSpec) -> None:
        self.name = spec.name
        ctx = mp.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_worker, args=(spec, child), daemon=True)
        self.proc.start()

    def _recv(self) -> Any:
        status, value = self.conn.recv()
        if status == "error":
            raise RuntimeError(f"peer {self.name} failed:\n{value}")
        return value

    def wait_ready(self) -> dict[str, Any]:
        return self._recv()

    def generate(self, requests: list[Request]) -> Timing:
        self.conn.send(("generate", requests))
        return self._recv()

    def peak_rss_mb(self) -> float:
        self.conn.send(("rss", None))
        return self._recv()

    def close(self) -> None:
        try:
            self.conn.send(None)
        except OSError:
            pass
        self.proc.join(timeout=30)


def run_bench(specs: list[PeerSpec], kinds: tuple[str, ...], sizes: Sizes, reps: int,
              seed: int = 0, in_process: bool = False, throughput_reps: int | None = None,
              log: Callable[[str], None] = lambda s: print(s, file=sys.stderr)) -> dict[str, Any]:
    """Run every workload of ``kinds`` on every peer ``reps`` times (the throughput
    workloads ``throughput_reps`` times, default ``reps``), interleaved."""
    reps_of = {k: throughput_reps or reps if k == "throughput" else reps for k in kinds}
    peers = [(LocalPeer if in_process else WorkerPeer)(s) for s in specs]
    samples: list[dict[str, Any]] = []
    try:
        infos = {p.name: p.wait_ready() for p in peers}
        for name, info in infos.items():
            log(f"{name}: loaded in {info['load_s']:.1f}s {info['settings']}")
        vocab = min(info["vocab_size"] for info in infos.values())
        warm = [prefill_workload(64, vocab, seed=-1), decode_workload(2, vocab, 4, seed=-1)]
        for p in peers:
            for w in warm:
                p.generate(list(w.requests))
        for rep in range(max(reps_of.values())):
            order = peers[rep % len(peers):] + peers[:rep % len(peers)]
            now = tuple(k for k in kinds if rep < reps_of[k])
            for w in build_workloads(now, vocab, sizes, seed=seed + rep):
                for p in order:
                    timing = p.generate(list(w.requests))
                    if timing.generated != w.num_output_tokens:
                        raise RuntimeError(f"{p.name} generated {timing.generated} tokens on "
                                           f"{w.kind} {w.case}, expected {w.num_output_tokens}")
                    samples.append({"workload": w.kind, "case": w.case, "peer": p.name,
                                    "rep": rep, "prompt_tokens": w.num_prompt_tokens,
                                    "output_tokens": w.num_output_tokens,
                                    "requests": len(w.requests), "first_s": timing.first_s,
                                    "total_s": timing.total_s})
                    log(f"rep {rep} {w.kind:10s} {w.case:18s} {p.name:11s} "
                        f"{timing.total_s:8.3f}s")
        for p in peers:
            infos[p.name]["peak_rss_mb"] = p.peak_rss_mb()
    finally:
        for p in peers:
            p.close()
    return {"peers": infos, "samples": samples}
