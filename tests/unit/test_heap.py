"""engine/heap.py: the C heap's free pages go back to the OS once an engine is built (the
loader's float32 tensors that a GGUF model's kernels do not keep were ~430 MB of RSS for
SmolLM2-135M)."""

from __future__ import annotations

import ctypes
import ctypes.util
import dataclasses
import os
import weakref

import pytest
from helpers.tiny import tiny_checkpoint

import thinkstream.engine.llm_engine as llm_engine
from thinkstream.config import EngineConfig
from thinkstream.engine.heap import _malloc_trim, trim_heap
from thinkstream.sampling_params import SamplingParams


def _rss_mb() -> float:
    return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


@pytest.mark.skipif(_malloc_trim() is None or not os.path.exists("/proc/self/statm"),
                    reason="needs glibc's malloc_trim and /proc (Linux)")
def test_trim_heap_returns_pages_freed_in_the_middle_of_the_heap() -> None:
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    size, count = 96 * 1024, 2048  # under glibc's default mmap threshold: heap chunks
    chunks = [libc.malloc(size) for _ in range(count)]
    for c in chunks:
        ctypes.memset(c, 1, size)
    trim_heap()
    before = _rss_mb()
    for c in chunks[::2]:  # every other one: free chunks between used ones (fragmentation)
        libc.free(c)
    after_free = _rss_mb()
    assert trim_heap() is True
    after_trim = _rss_mb()
    for c in chunks[1::2]:
        libc.free(c)
    assert before - after_free < 16  # free() kept the ~96 MB mapped
    assert after_free - after_trim > 64  # the trim gave most of them back


def test_the_engine_trims_once_after_dropping_the_checkpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    refs: list[weakref.ref] = []
    calls: list[bool] = []

    def load(*args, **kwargs):
        ckpt = dataclasses.replace(tiny_checkpoint())  # a new object (the helper caches its own)
        refs.append(weakref.ref(ckpt))
        return ckpt

    monkeypatch.setattr(llm_engine, "load_checkpoint", load)
    monkeypatch.setattr(llm_engine, "trim_heap", lambda: calls.append(refs[0]() is None) or True)
    engine = llm_engine.LLMEngine("tiny", EngineConfig(num_blocks=8))
    assert calls == [True]  # one trim, and the loaded checkpoint was unreachable by then
    engine.add_request("r", [1, 2, 3], SamplingParams(temperature=0, max_tokens=2))
    while engine.has_unfinished_requests():
        engine.step()
    assert engine.check_integrity() is None
