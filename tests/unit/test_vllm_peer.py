"""The vLLM CPU peer's request/response protocol, against a fake worker (no vLLM here):
what the peer sends, what it makes of the replies, errors, export, and the skip when vLLM's
python is missing. Also the llama.cpp peer's context reuse (a fake llama_cpp)."""

from __future__ import annotations

import argparse
import sys
import textwrap
from pathlib import Path

import pytest

from thinkstream.bench.cli import _specs, register
from thinkstream.bench.llamacpp import LlamaCppPeer
from thinkstream.bench.peers import Timing
from thinkstream.bench.vllm_peer import VLLMPeer, VLLMUnavailable, export_dir
from thinkstream.bench.workloads import Request

FAKE_WORKER = textwrap.dedent('''
    import json, os, sys
    from pathlib import Path
    if sys.argv[1] == "export":  # export GGUF OUT
        Path(sys.argv[3]).mkdir(parents=True, exist_ok=True)
        Path(sys.argv[3], "config.json").write_text("{}")
        Path(sys.argv[3], "exported_from").write_text(sys.argv[2])
        sys.exit(0)
    if os.environ.get("FAKE_DIE"):
        sys.exit(3)
    env = {k: os.environ.get(k) for k in ("VLLM_CPU_KVCACHE_SPACE", "VLLM_CPU_OMP_THREADS_BIND",
           "OMP_NUM_THREADS", "VLLM_USE_AOT_COMPILE", "VLLM_ENABLE_V1_MULTIPROCESSING")}
    print(json.dumps({"ok": True, "ready": {"argv": sys.argv[1:], "env": env},
                      "vocab_size": 1000}), flush=True)
    for line in sys.stdin:
        msg = json.loads(line)
        if msg["op"] == "generate":  # token k of a request: its first prompt id + k
            toks = [[p[0] + k for k in range(n)] for p, n in msg["requests"]]
            reply = {"ok": True, "first_s": 0.25, "total_s": 1.5, "cpu_s": 0.75,
                     "generated": sum(map(len, toks)), "tokens": toks}
        elif msg["op"] == "rss":
            reply = {"ok": True, "peak_rss_mb": 123.0}
        else:
            reply = {"ok": False, "error": "Traceback: unknown op " + msg["op"]}
        print(json.dumps(reply), flush=True)
''')


@pytest.fixture
def fake(tmp_path: Path) -> dict:
    worker = tmp_path / "fake_worker.py"
    worker.write_text(FAKE_WORKER)
    hf_dir = tmp_path / "hf"
    hf_dir.mkdir()
    (hf_dir / "config.json").write_text("{}")
    return {"python": sys.executable, "worker": worker, "hf_dir": hf_dir}


def test_protocol_settings_timing_tokens_and_rss(fake, tmp_path):
    peer = VLLMPeer(tmp_path / "m.gguf", threads=1, max_batch=8, kv_cache_gb=3, **fake)
    try:
        ready = peer.settings()
        assert ready["argv"] == ["serve", str(fake["hf_dir"]), "--threads", "1", "--max-batch",
                                 "8", "--dtype", "float32"]
        assert ready["env"] == {"VLLM_CPU_KVCACHE_SPACE": "3", "VLLM_CPU_OMP_THREADS_BIND": "nobind",
                                "OMP_NUM_THREADS": "1", "VLLM_USE_AOT_COMPILE": "0",
                                "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
        assert ready["python"] == sys.executable and peer.vocab_size == 1000
        timing = peer.generate([Request((7, 1, 2), 3), Request((40,), 2)])
        assert timing == Timing(0.25, 1.5, 5, 0.75)
        assert peer.last_tokens == [[7, 8, 9], [40, 41]]
        assert peer.peak_rss_mb() == 123.0
        with pytest.raises(RuntimeError, match="unknown op boom"):
            peer._ask({"op": "boom"})
        assert peer.generate([Request((3,), 1)]).generated == 1  # still answering
    finally:
        peer.close()
    assert peer.proc.returncode == 0


def test_worker_that_dies_is_an_error(fake, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_DIE", "1")
    with pytest.raises(RuntimeError, match=r"exited \(3\)"):
        VLLMPeer(tmp_path / "m.gguf", threads=1, **fake)


def test_missing_export_is_made_with_the_worker(fake, tmp_path):
    gguf = tmp_path / "model.Q4_1.gguf"
    out = export_dir(Path(fake["python"]), gguf)
    assert out == Path(sys.executable).parent.parent / "exports" / "model.Q4_1"
    hf_dir = tmp_path / "export"
    peer = VLLMPeer(gguf, python=fake["python"], worker=fake["worker"], hf_dir=hf_dir, threads=1)
    peer.close()
    assert (hf_dir / "exported_from").read_text() == str(gguf)


def test_missing_python_is_skipped_with_a_message(tmp_path, capsys):
    missing = tmp_path / "nowhere" / "bin" / "python"
    with pytest.raises(VLLMUnavailable, match="thinkstream bench vllm-setup"):
        VLLMPeer(tmp_path / "m.gguf", python=missing)
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(), "bench")
    args = parser.parse_args(["bench", "decode", "--peers", "thinkstream,vllm",
                              "--vllm-python", str(missing)])
    specs = _specs(args, checkpoint=object())
    assert [s.name for s in specs] == ["thinkstream"]
    assert f"skipping peer vllm: vLLM peer: no python at {missing}" in capsys.readouterr().err


class _FakeLlama:
    """The two calls of llama_cpp the context cache makes."""

    def __init__(self) -> None:
        self.freed: list[int] = []

    def llama_free(self, ctx: int) -> None:
        self.freed.append(ctx)


def test_llamacpp_contexts_are_kept_and_reused(monkeypatch):
    peer = LlamaCppPeer.__new__(LlamaCppPeer)
    peer.lc, peer._ctxs, made = _FakeLlama(), {}, []

    def new_context(n_seq: int, n_ctx: int, unified: bool) -> int:
        made.append((n_seq, n_ctx, unified))
        return len(made)

    monkeypatch.setattr(peer, "_new_context", new_context)
    monkeypatch.setattr("thinkstream.bench.llamacpp.MAX_CACHED_CELLS", 12288)
    assert peer._context(1, 768, False) == 1
    assert peer._context(1, 256, False) == 1  # big enough: reused
    assert peer._context(32, 8192, False) == 2
    assert peer._context(1, 768, False) == 1  # still kept across a batch switch
    assert peer._context(1, 2304, False) == 3 and peer.lc.freed == [1]  # grown: replaced
    assert peer._context(33, 4096, True) == 4  # 2304 + 8192 + 4096 > 12288: LRU freed
    assert peer.lc.freed == [1, 2] and made[-1] == (33, 4096, True)
    assert peer._context(1, 512, False) == 3


def test_hf_early_exit_peer_is_lossless_on_a_tiny_llama():
    """The HF rows of ``bench speculative``: transformers' own early-exit self-speculation
    (first layer drafts 3 tokens) gives plain greedy decoding's tokens."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from thinkstream.bench.speculative import hf_drafts, run_hf

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=96, hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=3, num_attention_heads=4,
                                         num_key_value_heads=2, max_position_embeddings=128,
                                         eos_token_id=None, bos_token_id=None)).eval()
    drafts = hf_drafts(lookup=4, layer=1, exit_tokens=3)
    assert drafts == {"none": {}, "prompt lookup 4": {"prompt_lookup_num_tokens": 4},
                      "early exit 1 x3": {"assistant_early_exit": 1, "num_assistant_tokens": 3,
                                          "num_assistant_tokens_schedule": "constant"}}
    assert list(hf_drafts(4, None, 3)) == ["none", "prompt lookup 4"]
    prompts = [[5, 9, 11, 5, 9], [40, 41, 42]]
    rows = {name: run_hf(Path("unused.gguf"), prompts, 10, draft, model)[0]
            for name, draft in drafts.items()}
    assert [len(o) for o in rows["none"]["outputs"]] == [10, 10]
    assert rows["early exit 1 x3"]["outputs"] == rows["none"]["outputs"]
    assert rows["prompt lookup 4"]["outputs"] == rows["none"]["outputs"]


def test_side_by_side_agreement_counts_identical_requests_and_common_prefix():
    from types import SimpleNamespace

    import torch

    from thinkstream.bench.side_by_side import _agreement

    def peer(tokens):
        return SimpleNamespace(peer=SimpleNamespace(last_tokens=tokens))

    peers = {"thinkstream float32": peer([[1, 2, 3], [4, 5, 6]]),
             "vllm float32": peer([[1, 2, 3], [4, 9, 6]]),
             "hf float32": peer(torch.tensor([[1, 2, 3], [4, 5, 6]])),  # (B, steps)
             "other": peer([[1, 2, 3]])}  # another workload's: left out
    assert _agreement(peers) == {
        "vllm float32": {"against": "thinkstream float32", "requests": 2, "identical": 1,
                         "mean_common_prefix": 2.0, "tokens_per_request": [3, 3]},
        "hf float32": {"against": "thinkstream float32", "requests": 2, "identical": 2,
                       "mean_common_prefix": 3.0, "tokens_per_request": [3, 3]}}
    assert _agreement({"vllm float32": peers["vllm float32"]}) == {}


def test_cpu_record_adds_family_and_model_number():
    from thinkstream.bench.report import cpu_record

    info = ("processor\t: 0\ncpu family\t: 25\nmodel\t\t: 17\nmodel name\t: AMD EPYC\n\n"
            "processor\t: 1\ncpu family\t: 99\nmodel\t\t: 1\n")
    record = cpu_record(info)
    assert record["cpu_family"] == "25" and record["model_number"] == "17"
    assert "isa" in record and "model" in record  # kernels.cpu's own fields kept


def test_preloads_the_venvs_openmp_runtime(tmp_path):
    from thinkstream.bench.vllm_peer import preloads, worker_env

    python = tmp_path / "venv" / "bin" / "python"
    assert str(tmp_path) not in " ".join(preloads(python))  # no libiomp5.so there yet
    (tmp_path / "venv" / "lib").mkdir(parents=True)
    (tmp_path / "venv" / "lib" / "libiomp5.so").write_bytes(b"")
    assert preloads(python)[-1] == str(tmp_path / "venv" / "lib" / "libiomp5.so")
    assert worker_env(2, 1, python)["LD_PRELOAD"].split(":")[len(preloads(python)) - 1] == \
        str(tmp_path / "venv" / "lib" / "libiomp5.so")


def test_a_peer_whose_library_is_missing_is_skipped_with_a_message(monkeypatch, capsys):
    """The default peers include llama.cpp: without llama-cpp-python every `bench decode`
    ended in a ModuleNotFoundError traceback after the other peers had loaded."""
    from thinkstream.bench import cli as bench_cli

    monkeypatch.setitem(bench_cli.PEER_MODULES, "llamacpp", ("no_such_module_qa8", "pkg-x"))
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(), "bench")
    args = parser.parse_args(["bench", "decode", "--peers", "thinkstream,llamacpp"])
    assert [s.name for s in _specs(args, checkpoint=object())] == ["thinkstream"]
    assert ("skipping peer llamacpp: no_such_module_qa8 is not installed (pip install pkg-x, "
            "or thinkstream's bench extra)") in capsys.readouterr().err
    args = parser.parse_args(["bench", "decode", "--peers", "llamacpp"])
    with pytest.raises(ValueError, match="none of them can run here"):
        _specs(args, checkpoint=object())


@pytest.mark.parametrize(("peers", "message"), [
    ("thinkstream", "missing config.json"),
    ("thinkstream,hf", "missing config.json"),
])
def test_a_folder_that_is_not_a_model_is_an_error_before_any_peer_starts(
        tmp_path, capsys, peers: str, message: str):
    """It was a CorruptModelError traceback from the thinkstream peer's worker process."""
    from thinkstream import cli

    rc = cli.main(["bench", "decode", "--quick", "--model", str(tmp_path), "--peers", peers])
    assert rc == 2
    err = capsys.readouterr().err
    assert f"thinkstream: error: {tmp_path}: {message}" in err and "Traceback" not in err


def test_external_peers_need_a_gguf_file(tmp_path, monkeypatch):
    from thinkstream.bench import cli as bench_cli

    monkeypatch.setattr(bench_cli, "_model_paths", lambda model: (model, None))  # an HF dir
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(), "bench")
    args = parser.parse_args(["bench", "decode", "--model", str(tmp_path)])
    with pytest.raises(ValueError, match="--peers: hf, llamacpp need a GGUF model file"):
        _specs(args, checkpoint=None)


def test_side_by_side_peers_are_checked_names() -> None:
    """``--peers thinkstream`` silently ran no thinkstream column; now an unknown name is a
    usage error naming the choices."""
    from thinkstream.bench.side_by_side import add_arguments

    p = argparse.ArgumentParser()
    add_arguments(p)
    assert p.parse_args(["--peers", "thinkstream (default), llamacpp"]).peers == [
        "thinkstream (default)", "llamacpp"]
    assert p.parse_args([]).peers == "all"
    with pytest.raises(SystemExit):
        p.parse_args(["--peers", "thinkstream,llamacpp"])
