"""The GGUF-native kernels (``kernels/gguf.py``, ``gguf_matmul.c``): every build this CPU
runs (AVX-512, AVX2, portable) against a float64 reference on ``gguf.quants``'s
dequantization of random blocks of every type, odd shapes and row counts; the choice of
build on mocked CPUs; and the fallbacks when no build can load."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from gguf.quants import dequantize

from thinkstream.kernels import gguf as kg
from thinkstream.kernels import native
from thinkstream.kernels.cpu import CpuInfo, detect_cpu, parse_cpuinfo

HAS_CC = shutil.which("cc") is not None or shutil.which("gcc") is not None
BUILDS = [isa for isa in ("avx512", "avx2", "portable")
          if native.choose_isa(detect_cpu(), isa) is not None] if HAS_CC else []
if "avx512" in BUILDS and "avx512_vnni" in detect_cpu().flags:
    BUILDS.insert(0, "avx512+vnni")
needs_cc = pytest.mark.skipif(not HAS_CC, reason="needs a C compiler")
# byte offsets of the float16 fields of each block (d, and m / dmin where present)
HALVES = {2: (0,), 3: (0, 2), 6: (0,), 7: (0, 2), 8: (0,), 12: (0, 2), 13: (0, 2), 14: (208,)}
NAMES = {2: "Q4_0", 3: "Q4_1", 6: "Q5_0", 7: "Q5_1", 8: "Q8_0", 12: "Q4_K", 13: "Q5_K", 14: "Q6_K"}


def random_blocks(qtype: int, n: int, k: int, seed: int) -> np.ndarray:
    """(n, bytes per row) random blocks: random quants and scales of mixed sign."""
    values, nbytes = kg.BLOCKS[qtype]
    rng = np.random.default_rng(seed)
    b = rng.integers(0, 256, size=(n, k // values, nbytes), dtype=np.uint8)
    for off in HALVES[qtype]:
        h = (rng.standard_normal((n, k // values)) * 0.02).astype(np.float16)
        b[..., off : off + 2] = h.view(np.uint8).reshape(n, k // values, 2)
    return b.reshape(n, -1)


def reference(qtype: int, blocks: np.ndarray, k: int) -> torch.Tensor:
    return torch.from_numpy(dequantize(blocks, qtype).reshape(blocks.shape[0], k).astype(np.float32))


@pytest.fixture(scope="module", params=BUILDS)
def kernels(request) -> kg.GGUFKernels:
    isa, _, vnni = request.param.partition("+")
    got = kg._load(isa, bool(vnni))
    assert got is not None and got.isa == isa and got.vnni == bool(vnni)
    return got


@needs_cc
@pytest.mark.parametrize("qtype", sorted(kg.BLOCKS), ids=lambda q: NAMES[q])
def test_matmul_and_dequantize_match_the_reference(kernels: kg.GGUFKernels, qtype: int) -> None:
    """Odd row counts of W (37) and of x (1..13: groups of four plus a remainder), two
    blocks per row: dequantization bit-equal to gguf's, products with float32 activations
    within float32 rounding of a float64 product (the int paths: test_gguf_int_kernels.py)."""
    values = kg.BLOCKS[qtype][0]
    n, k = 37, 2 * values
    blocks = random_blocks(qtype, n, k, seed=qtype)
    w = reference(qtype, blocks, k)
    bt = torch.from_numpy(blocks)
    assert torch.equal(kernels.dequantize(qtype, bt, k), w)
    g = torch.Generator().manual_seed(qtype)
    for m in (1, 2, 3, 5, 6, 7, 8, 9, 10, 11, 12, 13):
        x = torch.randn(m, k, generator=g)
        want = (x.double() @ w.double().t())
        scale = (x.abs().double() @ w.abs().double().t()).clamp_min(1e-30)
        got = kernels.matmul(qtype, bt, k, x, act=kg.ACT_F32)
        assert ((got.double() - want).abs() / scale).max() < 1e-5, (m, NAMES[qtype])
        if m <= 12:  # the dot kernel: each row as it would be alone, bit for bit (a
            # speculative verification's rows equal single-row decode's)
            alone = torch.cat([kernels.matmul(qtype, bt, k, x[i:i + 1], act=kg.ACT_F32) for i in range(m)])
            assert torch.equal(got, alone), (m, NAMES[qtype])


@needs_cc
@pytest.mark.parametrize("qtype", sorted(kg.BLOCKS), ids=lambda q: NAMES[q])
def test_threads_split_the_weight_rows_bit_for_bit(kernels: kg.GGUFKernels, qtype: int) -> None:
    """The dot kernel loops over a thread's range of weight rows inside one call: three
    threads' ranges (from row 17 / 34 on) give what one thread's does, bit for bit."""
    values = kg.BLOCKS[qtype][0]
    n, k = 50, values
    bt = torch.from_numpy(random_blocks(qtype, n, k, seed=qtype + 1))
    x = torch.randn(12, k, generator=torch.Generator().manual_seed(qtype))
    for m in (1, 2, 3, 4, 12):
        one = kernels.matmul(qtype, bt, k, x[:m], threads=1, act=kg.ACT_F32, path="dot")
        three = kernels.matmul(qtype, bt, k, x[:m], threads=3, act=kg.ACT_F32, path="dot")
        assert torch.equal(one, three), (m, NAMES[qtype])


@needs_cc
def test_matmul_writes_strided_output_columns_and_reads_strided_rows(kernels: kg.GGUFKernels) -> None:
    blocks = torch.from_numpy(random_blocks(8, 24, 64, seed=1))
    w = reference(8, blocks.numpy(), 64)
    xs = torch.randn(5, 100)[:, 10:74]  # rows strided by 100
    out = torch.full((5, 40), 7.0)
    kernels.matmul(8, blocks, 64, xs, out=out[:, 8:32], act=kg.ACT_F32)
    assert torch.allclose(out[:, 8:32], xs @ w.t(), atol=1e-4)
    assert (out[:, :8] == 7).all() and (out[:, 32:] == 7).all()


@needs_cc
def test_bad_inputs_raise(kernels: kg.GGUFKernels) -> None:
    blocks = torch.from_numpy(random_blocks(8, 4, 64, seed=2))
    with pytest.raises(ValueError, match="float32"):
        kernels.matmul(8, blocks, 64, torch.randn(2, 64, dtype=torch.float64))
    with pytest.raises(ValueError, match="not supported"):
        kernels.matmul(99, blocks, 64, torch.randn(2, 64))
    with pytest.raises(ValueError, match="not supported"):
        kernels.matmul(3, blocks, 64, torch.randn(2, 64))  # Q4_1 rows are 40 bytes, not 68
    with pytest.raises(ValueError, match="act must be one of"):
        kernels.matmul(8, blocks, 64, torch.randn(2, 64), act=4)


def cpu(*flags: str, arch: str = "x86_64") -> CpuInfo:
    return CpuInfo("mock", arch, frozenset(flags))


ZEN3 = cpu("avx2", "fma", "f16c")
ZEN4 = cpu("avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_bf16")


def test_build_choice_on_mocked_cpus() -> None:
    assert native.best_isa(ZEN3) == "avx2"
    assert native.best_isa(ZEN4) == "avx512"
    assert native.best_isa(cpu("sse2")) == "portable"
    assert native.best_isa(cpu("asimd", arch="aarch64")) == "portable"
    assert native.choose_isa(ZEN4, "avx2") == "avx2"  # forcing a lesser build
    assert native.choose_isa(ZEN4, "portable") == "portable"
    assert native.choose_isa(ZEN3, "avx512") is None  # a build this CPU cannot run
    with pytest.raises(ValueError, match="THINKSTREAM_ISA"):
        native.choose_isa(ZEN3, "neon")


def test_env_forces_a_build_or_none(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("THINKSTREAM_NATIVE", "0")
    assert kg.load_gguf_kernels() is None
    monkeypatch.delenv("THINKSTREAM_NATIVE")
    monkeypatch.setenv(native.ISA_ENV, "avx512")
    assert kg.load_gguf_kernels(ZEN3) is None
    if HAS_CC:
        monkeypatch.setenv(native.ISA_ENV, "portable")
        got = kg.load_gguf_kernels()
        assert got is not None and got.isa == "portable"


@needs_cc
@pytest.mark.skipif("avx512" not in BUILDS, reason="needs a CPU with AVX-512")
def test_vnni_build_only_for_cpus_with_vnni(monkeypatch: pytest.MonkeyPatch) -> None:
    """The int8 mode's vpdpbusd is compiled in (``-mavx512vnni``) only for a CPU that lists
    avx512_vnni; without it the avx512 build stays plain and an AVX2 CPU gets avx2."""
    monkeypatch.delenv(native.ISA_ENV, raising=False)
    monkeypatch.delenv("THINKSTREAM_NATIVE", raising=False)
    got = kg.load_gguf_kernels(ZEN4)
    assert got is not None and (got.isa, got.vnni) == ("avx512", False)
    if "avx512_vnni" in detect_cpu().flags:
        got = kg.load_gguf_kernels(cpu(*ZEN4.flags, "avx512_vnni"))
        assert got is not None and (got.isa, got.vnni) == ("avx512", True)
    got = kg.load_gguf_kernels(ZEN3)
    assert got is not None and (got.isa, got.vnni) == ("avx2", False)


def test_no_compiler_means_no_kernels(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    assert kg._open("portable") is None


def test_parse_cpuinfo() -> None:
    text = ("processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 9R14\n"
            "flags\t\t: fpu sse2 avx2 fma f16c avx512f avx512bw avx512vl avx512_bf16\n\n"
            "processor\t: 1\nmodel name\t: other\nflags\t\t: fpu\n")
    info = parse_cpuinfo(text, "x86_64")
    assert info.model == "AMD EPYC 9R14"
    assert info.avx512 and info.avx2 and info.native_bf16 and not info.amx
    assert info.describe() == "AMD EPYC 9R14 (x86_64): avx2 fma f16c avx512f avx512bw avx512vl avx512_bf16"
