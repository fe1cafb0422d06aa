"""``thinkstream bench {prefill,decode,throughput,all,profile,streaming,parallel,
think-while-reading,speculative,distributed}``.

Example (the full run of docs/benchmarks.md)::

    thinkstream bench all --dtype bfloat16 --reps 3 --throughput-reps 1 \\
        --json docs/results/smollm2.json --plot docs/results/smollm2.png
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import os
import sys
from pathlib import Path
from typing import Any

from thinkstream.bench.report import machine, positive_int, quantization_arg
from thinkstream.config import KV_CACHE_DTYPES

KINDS = {"prefill": ("prefill",), "decode": ("decode",), "throughput": ("throughput",),
         "all": ("prefill", "decode", "throughput")}


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None,
                   help="GGUF file, HF directory, 'smollm2-135m' (default) or 'gemma3-270m'")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"],
                   help="thinkstream's dtype (and HF's, unless --hf-dtype; auto: HF float32)")
    p.add_argument("--quantization", default="auto", choices=["auto", "none", "gguf", "gguf-q16", "gguf-q8", "int8", "int4"],
                   help="thinkstream's weight quantization (auto: GGUF-native where it runs)")
    p.add_argument("--kv-cache-dtype", default="auto", choices=list(KV_CACHE_DTYPES),
                   help="thinkstream's KV cache (EngineConfig.kv_cache_dtype; auto: its dtype)")
    p.add_argument("--hf-dtype", default=None, choices=["float32", "bfloat16"])
    p.add_argument("--max-batch", type=positive_int, default=32,
                   help="most sequences in flight, for every peer (default 32)")
    p.add_argument("--kv-cache-mb", type=int, default=512, help="thinkstream's KV cache")
    p.add_argument("--threads", type=positive_int, default=None, help="default: the cores available")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="small sizes: a smoke test")
    p.add_argument("--compile-decode", action="store_true",
                   help="thinkstream's EngineConfig.compile_decode: decode steps as compiled graphs")


def hf_dtype(dtype: str) -> str:
    """The peers' dtype for thinkstream's ``--dtype`` (auto: float32, their exact setting)."""
    return "float32" if dtype == "auto" else dtype


HELP = "benchmark thinkstream against HF and llama.cpp"


def register(subparsers: argparse._SubParsersAction, name: str) -> None:
    from thinkstream.bench.vllm_peer import vllm_arguments

    bench = subparsers.add_parser(name, help=HELP)
    sub = bench.add_subparsers(dest="bench_command", required=True)
    for kind in KINDS:
        p = sub.add_parser(kind, help=f"{kind} workloads" if kind != "all" else "every workload")
        _common(p)
        p.add_argument("--peers", default="thinkstream,hf,llamacpp",
                       help="comma-separated subset of thinkstream,hf,llamacpp,vllm")
        vllm_arguments(p)
        p.add_argument("--reps", type=positive_int, default=3)
        p.add_argument("--throughput-reps", type=positive_int, default=None,
                       help="repetitions of the (long) throughput workloads; default --reps")
        p.add_argument("--json", default=None, help="write the report here")
        p.add_argument("--plot", default=None, help="write a PNG here (needs matplotlib)")
        p.add_argument("--in-process", action="store_true",
                       help="no worker processes (peak memory is then the whole process's)")
        p.set_defaults(fn=run, kinds=KINDS[kind])
    p = sub.add_parser("side-by-side", help="one table per CPU class: thinkstream's default "
                       "and float32, llama.cpp, HF float32 and vLLM CPU")
    from thinkstream.bench import side_by_side

    side_by_side.add_arguments(p)
    vllm_arguments(p)
    p.set_defaults(fn=side_by_side.run_cli)
    p = sub.add_parser("vllm-setup", help="create vLLM CPU's own environment and export the "
                       "GGUF for it (the vllm peer; about 7 minutes, needs pip's index)")
    p.add_argument("--model", default=None, help="the GGUF to export (default: SmolLM2)")
    p.add_argument("--venv", default=None, help="default: $THINKSTREAM_VLLM_VENV or "
                   "~/.cache/thinkstream/vllm-venv")
    p.set_defaults(fn=run_vllm_setup)
    p = sub.add_parser("profile", help="where thinkstream's decode step time goes")
    _common(p)
    p.add_argument("--batch", type=positive_int, nargs="+", action="extend", default=None,
                   help="batch size(s) to profile: --batch 1 8 32 or repeated (default 1 and 32)")
    p.add_argument("--steps", type=positive_int, default=32)
    p.add_argument("--speculative-method", default=None,
                   choices=["ngram", "early_exit", "fused"],
                   help="profile with speculative decoding (repeating prompts)")
    p.add_argument("--cpu-clock", action="store_true",
                   help="CPU time instead of wall time (1 thread: without a shared machine's waits)")
    p.add_argument("--context", type=int, default=16,
                   help="prompt tokens per sequence before the profiled decode steps (default 16)")
    p.add_argument("--json", default=None, help="write the profiles here (with the CPU class)")
    p.set_defaults(fn=run_profile)
    p = sub.add_parser("speculative", help="speculative decoding: proposers, adaptive, peers")
    from thinkstream.bench import speculative

    speculative.add_arguments(p)
    p.set_defaults(fn=speculative.run)
    p = sub.add_parser("streaming", help="streaming input: latency after the input ends")
    from thinkstream.bench.streaming import add_arguments
    from thinkstream.bench.streaming import run as run_streaming

    add_arguments(p)
    p.set_defaults(fn=run_streaming)
    p = sub.add_parser("distributed", help="tensor parallel, Ray replicas, weight streaming")
    from thinkstream.bench import distributed

    distributed.add_arguments(p)
    p.set_defaults(fn=distributed.run)
    p = sub.add_parser("parallel", help="parallel paths: wall time, join vs re-prefill, blocks, "
                       "accuracy")
    from thinkstream.bench import parallel

    parallel.add_arguments(p)
    p.set_defaults(fn=parallel.run)
    p = sub.add_parser("think-while-reading", help="reasoning while the input streams vs batch")
    from thinkstream.bench import think

    think.add_arguments(p)
    p.set_defaults(fn=think.run)


def _model_paths(model: str | None) -> tuple[str | None, Path | None]:
    """The model argument and its GGUF file (None for an HF directory), checked here: a
    directory that is not a model is a clear error, not a traceback from a peer's worker
    process after the others loaded (its config and tokenizer are read, no tensor)."""
    from thinkstream.loading import load_checkpoint

    path = load_checkpoint(model, tensors=False).path
    return model, path if path.suffix == ".gguf" else None


# the module each external peer imports in its worker, and the package that installs it
PEER_MODULES = {"hf": ("transformers", "transformers"),
                "llamacpp": ("llama_cpp", "llama-cpp-python")}


def _installed(name: str) -> bool:
    """Whether peer ``name``'s library is importable; if not, says so on stderr (the peer
    is skipped, as vLLM's is without its environment)."""
    module, package = PEER_MODULES.get(name, (None, None))
    if module is None or importlib.util.find_spec(module) is not None:
        return True
    print(f"skipping peer {name}: {module} is not installed (pip install {package}, or "
          "thinkstream's bench extra)", file=sys.stderr)
    return False


def _specs(args: argparse.Namespace, checkpoint: Any) -> list:
    from thinkstream.bench.runner import PeerSpec

    model, gguf = (None, None) if checkpoint is not None else _model_paths(args.model)
    threads = args.threads or len(os.sched_getaffinity(0))
    options = {
        "thinkstream": {"dtype": args.dtype, "quantization": quantization_arg(args.quantization),
                        "max_batch": args.max_batch, "kv_cache_mb": args.kv_cache_mb,
                        "threads": threads, "compile_decode": args.compile_decode,
                        "kv_cache_dtype": args.kv_cache_dtype},
        "hf": {"dtype": args.hf_dtype or hf_dtype(args.dtype), "max_batch": args.max_batch,
               "threads": threads},
        "llamacpp": {"max_batch": args.max_batch, "threads": threads},
        "vllm": {"python": args.vllm_python, "max_batch": args.max_batch, "threads": threads,
                 "dtype": args.hf_dtype or hf_dtype(args.dtype), "kv_cache_gb": args.vllm_kv_gb},
    }
    names = [n.strip() for n in args.peers.split(",") if n.strip()]
    if not names:
        raise ValueError(f"--peers: name at least one of {', '.join(options)}")
    for n in names:
        if n not in options:
            raise ValueError(f"--peers: unknown peer {n!r}; choose from {', '.join(options)}")
    if gguf is None and checkpoint is None and (external := [n for n in names
                                                              if n != "thinkstream"]):
        raise ValueError(f"--peers: {', '.join(external)} need a GGUF model file")
    names = [n for n in names if _installed(n)]
    if "vllm" in names:
        from thinkstream.bench.vllm_peer import vllm_available

        names = [n for n in names if n != "vllm" or vllm_available(args.vllm_python)]
    if not names:
        raise ValueError("--peers: none of them can run here (see the messages above)")
    return [PeerSpec(n, model, gguf, options[n], checkpoint if n == "thinkstream" else None)
            for n in names]


def run_vllm_setup(args: argparse.Namespace) -> int:
    from thinkstream.bench.vllm_peer import default_venv, setup
    from thinkstream.loading import resolve_model_path

    gguf = resolve_model_path(args.model)
    if gguf.suffix != ".gguf":
        raise ValueError(f"--model: vLLM's export reads a GGUF file, got {gguf}")
    python = setup(Path(args.venv).expanduser() if args.venv else default_venv(), gguf)
    print(f"vLLM peer ready: --peers ...,vllm --vllm-python {python}")
    return 0


def run(args: argparse.Namespace, checkpoint: Any = None) -> int:
    """Run the workloads, print the table, write ``--json`` / ``--plot``. ``checkpoint``
    (an already loaded model, for tests) forces ``--in-process``."""
    from dataclasses import asdict

    from thinkstream.bench import report as rep
    from thinkstream.bench.runner import run_bench
    from thinkstream.bench.workloads import Sizes

    if args.reps < 1:
        raise ValueError("--reps must be >= 1")
    if args.max_batch < 1:  # checked here, not as a traceback from a peer's worker process
        raise ValueError("--max-batch must be >= 1")
    sizes = Sizes.quick() if args.quick else Sizes()
    if "decode" in args.kinds and sizes.within(args.max_batch) != sizes:
        print(f"decode batches above --max-batch {args.max_batch} are skipped: "
              f"{[b for b in sizes.decode_batches if b > args.max_batch]}", file=sys.stderr)
    sizes = sizes.within(args.max_batch)
    specs = _specs(args, checkpoint)
    raw = run_bench(specs, args.kinds, sizes, args.reps, args.seed,
                    in_process=args.in_process or checkpoint is not None,
                    throughput_reps=args.throughput_reps)
    meta = {"command": "thinkstream " + " ".join(sys.argv[1:]) if checkpoint is None else "test",
            "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "model": str(specs[0].gguf or specs[0].model or "<checkpoint>"),
            "machine": machine(),
            "reps": args.reps, "throughput_reps": args.throughput_reps or args.reps,
            "quick": args.quick, "sizes": asdict(sizes)}
    report = rep.build_report(raw, meta)
    return rep.emit(rep, report, args)


def run_profile(args: argparse.Namespace, checkpoint: Any = None) -> int:
    from thinkstream.bench.profile import format_profile, profile_decode

    batches = args.batch or [1, 32]
    results = []
    for batch in batches:
        result = profile_decode(args.model, batch, args.steps, dtype=args.dtype,
                                quantization=quantization_arg(args.quantization), threads=args.threads,
                                checkpoint=checkpoint, compile_decode=args.compile_decode,
                                speculative=getattr(args, "speculative_method", None),
                                cpu_clock=getattr(args, "cpu_clock", False),
                                prompt_len=getattr(args, "context", 16),
                                kv_cache_dtype=args.kv_cache_dtype)
        print(format_profile(result))
        results.append(result)
    if getattr(args, "json", None):
        import json

        from thinkstream.bench.report import cpu_record

        doc = {"cpu": cpu_record(), "threads": args.threads, "profiles": results}
        Path(args.json).write_text(json.dumps(doc, indent=1, default=str))
    return 0
