"""The native CPU kernels (``thinkstream.kernels``): built on first use, equal to torch's
ops, and absent without harm where they cannot be built or run."""

from __future__ import annotations

import platform
import shutil
from pathlib import Path

import pytest
import torch

from thinkstream.kernels import native
from thinkstream.kernels.native import build, load_softmax_bf16, softmax_last


def _avx512() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False
    return all(f in flags for f in ("avx512f", "avx512bw", "avx512vl"))


@pytest.fixture
def one_thread():
    """torch on one thread, where ``softmax_last`` takes the native kernel."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


CAN_RUN = platform.machine() == "x86_64" and _avx512() and shutil.which("cc") is not None
needs_native = pytest.mark.skipif(not CAN_RUN, reason="needs x86-64 with AVX-512 and a C compiler")


@needs_native
def test_kernel_loads_where_it_can_run() -> None:
    assert load_softmax_bf16() is not None


@needs_native
@pytest.mark.parametrize("cols", [1, 15, 16, 17, 100, 4113])
def test_softmax_bf16_equals_torch(cols: int, one_thread) -> None:
    """In place, within one bfloat16 rounding of torch's softmax (nearly always the same
    bits), masked (-inf) keys exactly 0, every row summing to 1."""
    g = torch.Generator().manual_seed(cols)
    x = (torch.randn(3, 7, cols, generator=g) * 8).to(torch.bfloat16)
    if cols > 2:
        x[:, :, cols // 2 :: 3] = float("-inf")  # never a whole row: column 0 stays
    want = torch.softmax(x, dim=-1)
    got = softmax_last(x)
    assert got.data_ptr() == x.data_ptr()  # in place
    assert torch.allclose(got.float(), want.float(), rtol=2**-7, atol=1e-7)
    assert (got == want).float().mean() > 0.99
    if cols > 2:
        assert (got[:, :, cols // 2 :: 3] == 0).all()
    assert torch.allclose(got.float().sum(-1), torch.ones(3, 7), atol=2e-2)


def test_softmax_last_keeps_torch_where_the_kernel_does_not_apply(one_thread) -> None:
    x = torch.randn(4, 33)
    assert torch.equal(softmax_last(x), torch.softmax(x, -1))  # float32: torch's op
    b = torch.randn(33, 4).to(torch.bfloat16).t()  # not contiguous
    out = softmax_last(b)
    assert out.data_ptr() != b.data_ptr() and torch.equal(out, torch.softmax(b, -1))
    torch.set_num_threads(2)  # torch's parallel softmax (the fixture restores the count)
    c = torch.randn(4, 33).to(torch.bfloat16)
    out = softmax_last(c)
    assert out.data_ptr() != c.data_ptr() and torch.equal(out, torch.softmax(c, -1))


def test_disabled_by_environment(monkeypatch, one_thread) -> None:
    monkeypatch.setenv("THINKSTREAM_NATIVE", "0")
    load_softmax_bf16.cache_clear()
    try:
        assert load_softmax_bf16() is None
        x = torch.randn(2, 40).to(torch.bfloat16)
        assert torch.equal(softmax_last(x), torch.softmax(x, -1))
    finally:
        load_softmax_bf16.cache_clear()


def test_build_without_a_compiler_gives_none(tmp_path: Path) -> None:
    src = Path(native.__file__).with_name("softmax_bf16.c")
    assert build(src, tmp_path / "k", compiler=str(tmp_path / "no-such-cc")) is None
    assert not any((tmp_path / "k").glob("*"))  # no half-written library left behind


@pytest.mark.skipif(shutil.which("cc") is None, reason="needs a C compiler")
def test_build_is_cached_by_source(tmp_path: Path) -> None:
    src = tmp_path / "k.c"
    src.write_text("int answer(void) { return 42; }\n")
    first = build(src, tmp_path / "out")
    assert first is not None and first.exists()
    assert build(src, tmp_path / "out") == first  # cached: same file
    src.write_text("int answer(void) { return 43; }\n")
    second = build(src, tmp_path / "out")
    assert second is not None and second != first
    assert not first.exists()  # the earlier source's build is gone
    src.write_text("this is not C\n")
    assert build(src, tmp_path / "out") is None
    assert [p.name for p in (tmp_path / "out").iterdir()] == [second.name]


def test_build_key_covers_nested_headers(tmp_path: Path) -> None:
    """A header included by a header the source includes is part of the build's key: editing
    it rebuilds (a stale library would keep the old code)."""
    (tmp_path / "inner.h").write_text("#define ANSWER 42\n")
    (tmp_path / "outer.h").write_text('#include "inner.h"\n')
    src = tmp_path / "k.c"
    src.write_text('#include "outer.h"\nint answer(void) { return ANSWER; }\n')
    first = build(src, tmp_path / "out")
    (tmp_path / "inner.h").write_text("#define ANSWER 43\n")
    second = build(src, tmp_path / "out")
    assert first is not None and second is not None and second != first


@needs_native
def test_short_chunk_same_with_native_and_torch_softmax(one_thread) -> None:
    """A 17-token chunk over 600 cached keys (bfloat16): the native softmax gives the
    output of torch's within bfloat16 rounding."""
    from thinkstream.attention.few_query import short_chunk
    from thinkstream.attention.metadata import open_columns

    g = torch.Generator().manual_seed(1)
    n, h, kvh, d, length = 17, 9, 3, 64, 600
    q = torch.randn(n, h, d, generator=g).to(torch.bfloat16)
    k_cache = torch.randn(length, kvh, d, generator=g).to(torch.bfloat16)
    v_cache = torch.randn(length, kvh, d, generator=g).to(torch.bfloat16)
    slots = torch.arange(length)
    key = torch.arange(length)[None, :]
    mask = key <= torch.arange(length - n, length)[:, None]
    args = (q, k_cache, v_cache, slots, ((0, length),), mask, open_columns(mask), 0.125)
    got = short_chunk(*args)
    want = short_chunk(*args, native_softmax=False)
    assert torch.allclose(got.float(), want.float(), atol=1e-2, rtol=1e-2)
    assert (got == want).float().mean() > 0.95
