"""xgrammar vs llguidance on the default model's vocabulary: the measurement that chose the
structured-outputs backend (``thinkstream.structured``).

For each constraint (JSON schemas of growing shape, ``json_object``, a regex) it times the
compile (the grammar from the schema plus everything the first mask needs: xgrammar's
token-mask cache, llguidance's lexer and first mask) and then walks a valid output token
by token, timing the next-token bitmask before each token (one ``(V + 31) // 32`` int32 row,
the format both libraries write). Both are set up as the engine runs them: one thread,
compact JSON separators (``", "``, ``": "``), no free whitespace, special tokens never
allowed, the model's EOS as the stop token.

``--engine``: what the masks cost an engine step (llguidance, as the engine runs it). A
batch of greedy requests decodes under the nested schema, and the same batch free; blocks
of steps alternate between free, masks on the worker thread beside the forward (the
default), and masks computed before the forward on the engine thread. Reports the median
step, the mask time per step and how much of it the sampler waited for after the forward.

    python -m thinkstream.bench.grammar [--model M] [--reps 5]
    python -m thinkstream.bench.grammar --engine [--batch 1 --batch 16] [--threads 1]
        [--dtype bfloat16 --quantization int4] (the fastest steps: masks weigh most there)
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable

import torch

from thinkstream.loading import Tokenizer, load_tokenizer


def _required_calls(n: int) -> dict:
    """``tool_choice: required`` over ``n`` tools with nested parameters (an agent's)."""
    def params() -> dict:
        return {"type": "object", "required": ["query"], "properties": {
            "query": {"type": "string"}, "limit": {"type": "integer", "minimum": 1,
                                                   "maximum": 100},
            "filters": {"type": "array", "items": {"type": "object", "required": [
                "field", "value"], "properties": {"field": {"enum": ["a", "b", "c", "d"]},
                                                 "value": {"type": "string"}}}},
            "options": {"type": "object", "properties": {
                "lang": {"type": "string", "pattern": "^[a-z]{2}$"},
                "safe": {"type": "boolean"},
                "score": {"type": "number", "minimum": 0, "maximum": 1}}}}}

    return {"type": "array", "minItems": 1, "items": {"anyOf": [
        {"type": "object", "properties": {"name": {"const": f"tool_{i}"}, "arguments": params()},
         "required": ["name", "arguments"]} for i in range(n)]}}


CASES: list[tuple[str, str, object, str]] = [  # name, kind, constraint, a valid output
    ("flat object", "json", {
        "type": "object",
        "properties": {"name": {"type": "string"}, "age": {"type": "integer", "minimum": 0,
                                                           "maximum": 150},
                       "member": {"type": "boolean"},
                       "plan": {"enum": ["free", "pro", "team"]}},
        "required": ["name", "age", "member", "plan"]},
     {"name": "Ada Lovelace", "age": 36, "member": True, "plan": "pro"}),
    ("nested + arrays + patterns", "json", {
        "type": "object",
        "properties": {
            "id": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{4}$"},
            "customer": {"type": "object", "properties": {
                "email": {"type": "string", "pattern": "^[a-z]+@[a-z]+\\.[a-z]{2,3}$"},
                "address": {"type": "object", "properties": {
                    "city": {"type": "string"}, "zip": {"type": "string", "maxLength": 10}},
                    "required": ["city", "zip"]}},
                "required": ["email", "address"]},
            "items": {"type": "array", "minItems": 1, "items": {
                "type": "object", "properties": {
                    "sku": {"type": "string"}, "qty": {"type": "integer", "minimum": 1},
                    "price": {"type": "number", "minimum": 0}},
                "required": ["sku", "qty", "price"]}},
            "status": {"enum": ["open", "paid", "shipped"]}},
        "required": ["id", "customer", "items", "status"]},
     {"id": "ORD-2024", "customer": {"email": "ada@example.com",
                                     "address": {"city": "London", "zip": "NW1 6XE"}},
      "items": [{"sku": "pen-01", "qty": 3, "price": 1.25},
                {"sku": "ink-07", "qty": 1, "price": 12.5}],
      "status": "paid"}),
    ("tool_choice required (2 tools)", "json", {
        "type": "array", "minItems": 1, "items": {"anyOf": [
            {"type": "object", "properties": {
                "name": {"const": "get_weather"},
                "arguments": {"type": "object", "properties": {
                    "city": {"type": "string"}, "unit": {"enum": ["c", "f"]}},
                    "required": ["city"]}},
             "required": ["name", "arguments"]},
            {"type": "object", "properties": {
                "name": {"const": "search"},
                "arguments": {"type": "object", "properties": {
                    "query": {"type": "string"}, "limit": {"type": "integer"}},
                    "required": ["query"]}},
             "required": ["name", "arguments"]}]}},
     [{"name": "get_weather", "arguments": {"city": "Paris", "unit": "c"}}]),
    ("tool_choice required (8 tools)", "json", _required_calls(8),
     [{"name": "tool_3", "arguments": {"query": "weather in Paris", "limit": 5,
                                       "filters": [{"field": "b", "value": "today"}],
                                       "options": {"lang": "en", "score": 0.5}}}]),
    ("json_object", "json", {"type": "object"},
     {"answer": "Paris", "confidence": 0.9, "sources": ["atlas", "wiki"], "extra": None}),
    ("regex (ISO date + time)", "regex",
     r"\d{4}-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])T([01]\d|2[0-3]):[0-5]\d",
     "2024-05-17T09:30"),
]


def _output_text(kind: str, value: object) -> str:
    return json.dumps(value) if kind == "json" else str(value)


def _ms(seconds: list[float]) -> str:
    return f"{1e3 * statistics.median(seconds):.2f}"


def _us(seconds: list[float]) -> tuple[float, float, float]:
    s = sorted(seconds)
    return (1e6 * statistics.mean(s), 1e6 * s[len(s) // 2], 1e6 * s[-1])


# ------------------------------------------------------------------ xgrammar
def _xgrammar(tok: Tokenizer) -> tuple[float, Callable]:
    import xgrammar as xgr

    t = time.perf_counter()
    vocab = [b"" if tok.is_special(i) else tok.token_bytes(i) for i in range(tok.vocab_size)]
    info = xgr.TokenizerInfo(vocab, xgr.VocabType.RAW, vocab_size=tok.vocab_size,
                             stop_token_ids=list(tok.eos_token_ids))
    setup = time.perf_counter() - t

    def run(kind: str, constraint: object, ids: list[int]) -> tuple[float, list[float]]:
        compiler = xgr.GrammarCompiler(info, max_threads=1, cache_enabled=False)
        t = time.perf_counter()
        if kind == "json":
            grammar = compiler.compile_json_schema(json.dumps(constraint), any_whitespace=False)
        else:
            grammar = compiler.compile_regex(str(constraint))
        matcher = xgr.GrammarMatcher(grammar)
        compile_s = time.perf_counter() - t
        bitmask = xgr.allocate_token_bitmask(1, tok.vocab_size)
        steps = []
        for token in [*ids, None]:
            t = time.perf_counter()
            matcher.fill_next_token_bitmask(bitmask)
            steps.append(time.perf_counter() - t)
            if token is not None and not matcher.accept_token(token):
                raise RuntimeError(f"xgrammar refused token {token}")
        return compile_s, steps

    return setup, run


# ------------------------------------------------------------------ llguidance
def _llguidance(tok: Tokenizer) -> tuple[float, Callable]:
    import llguidance
    import llguidance.torch as lgt

    t = time.perf_counter()
    lltok = llguidance.LLTokenizer(tok.backend.to_str(), n_vocab=tok.vocab_size,
                                   eos_token=list(tok.eos_token_ids))
    setup = time.perf_counter() - t
    options = {"item_separator": ", ", "key_separator": ": ", "whitespace_flexible": False}

    def run(kind: str, constraint: object, ids: list[int]) -> tuple[float, list[float]]:
        t = time.perf_counter()
        if kind == "json":
            grammar = llguidance.LLMatcher.grammar_from_json_schema(constraint, overrides=options)
        else:
            grammar = llguidance.LLMatcher.grammar_from_regex(str(constraint))
        matcher = llguidance.LLMatcher(lltok, grammar, log_level=0)
        bitmask = lgt.allocate_token_bitmask(1, tok.vocab_size)
        lgt.fill_next_token_bitmask(matcher, bitmask)  # lazy: the first mask builds the lexer
        compile_s = time.perf_counter() - t
        if matcher.is_error():
            raise RuntimeError(matcher.get_error())
        steps = []
        for i, token in enumerate([*ids, None]):
            if i:
                t = time.perf_counter()
                lgt.fill_next_token_bitmask(matcher, bitmask)
                steps.append(time.perf_counter() - t)
            if token is not None and not matcher.consume_token(token):
                raise RuntimeError(f"llguidance refused token {token}: {matcher.get_error()}")
        return compile_s, steps

    return setup, run


# ------------------------------------------------------------------ engine steps
def _decode_block(llm, batch: int, steps: int, mode: str) -> tuple[list[float], float, float]:
    """Step times of ``steps`` decode steps of ``batch`` greedy requests, with the mask
    compute and wait seconds of the block (``mode``: free / overlap / inline)."""
    from thinkstream import SamplingParams
    from thinkstream.sampling_params import StructuredOutputsParams

    engine = llm.engine
    engine.structured.overlap = mode == "overlap"
    so = None if mode == "free" else StructuredOutputsParams(json=CASES[1][2])
    params = SamplingParams(temperature=0, max_tokens=steps + 2, ignore_eos=True,
                            structured_outputs=so)
    ids = [engine.add_request(None, engine.tokenizer.encode_chat([{
        "role": "user", "content": f"Write order number {i} as JSON."}]), params)
        for i in range(batch)]
    engine.step()  # prefill, first tokens
    before = (engine.structured.times.compute_s, engine.structured.times.wait_s)
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        engine.step()
        times.append(time.perf_counter() - t)
    compute = engine.structured.times.compute_s - before[0]
    wait = engine.structured.times.wait_s - before[1]
    for rid in ids:
        engine.abort(rid)
    return times, compute, wait


def engine_main(args: argparse.Namespace) -> None:
    from thinkstream import LLM

    for batch in args.batch or [1, 16]:
        llm = LLM(args.model, dtype=args.dtype, quantization=args.quantization,
                  num_threads=args.threads, max_num_seqs=batch)
        runs: dict[str, tuple[list[float], float, float]] = {}
        for rep in range(args.reps + 1):
            for mode in ("free", "overlap", "inline"):
                times, compute, wait = _decode_block(llm, batch, args.steps, mode)
                if rep:  # the first round warms up
                    old = runs.get(mode, ([], 0.0, 0.0))
                    runs[mode] = (old[0] + times, old[1] + compute, old[2] + wait)
        n = args.steps * args.reps
        row = {m: (1e3 * statistics.median(t), 1e3 * c / n, 1e3 * w / n)
               for m, (t, c, w) in runs.items()}
        print(f"batch {batch}, {args.dtype}/{args.quantization}, {args.threads} torch "
              f"thread(s): step ms (median) free "
              f"{row['free'][0]:.2f}, masks beside the forward {row['overlap'][0]:.2f} "
              f"(mask compute {row['overlap'][1]:.3f} ms/step, waited {row['overlap'][2]:.3f}), "
              f"masks before the forward {row['inline'][0]:.2f} "
              f"(mask compute {row['inline'][1]:.3f} ms/step)", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None, help="model whose vocabulary to use (default SmolLM2)")
    ap.add_argument("--reps", type=int, default=5, help="repetitions of each case (medians)")
    ap.add_argument("--engine", action="store_true", help="mask cost in engine steps")
    ap.add_argument("--batch", type=int, action="append", default=None)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (--engine)")
    ap.add_argument("--steps", type=int, default=24, help="decode steps per block (--engine)")
    ap.add_argument("--dtype", default="bfloat16", help="(--engine)")
    ap.add_argument("--quantization", default="int4", help="(--engine)")
    args = ap.parse_args()
    if args.engine:
        engine_main(args)
        return
    torch.set_num_threads(1)
    tok = load_tokenizer(args.model)
    print(f"CPU: {platform.processor() or platform.machine()}, {_cpu_name()}; vocab "
          f"{tok.vocab_size}; one thread")
    backends = {"xgrammar": _xgrammar(tok), "llguidance": _llguidance(tok)}
    for name, (setup, _) in backends.items():
        print(f"{name}: tokenizer set-up {1e3 * setup:.0f} ms (once per model)")
    print("| constraint | tokens | backend | compile ms | mask us: mean | median | max |")
    print("|---|---|---|---|---|---|---|")
    for case, kind, constraint, value in CASES:
        ids = tok.encode(_output_text(kind, value), add_special_tokens=False)
        for name, (_, run) in backends.items():
            compiles, steps = [], []
            for _ in range(args.reps):
                c, s = run(kind, constraint, ids)
                compiles.append(c)
                steps.extend(s)
            mean, median, worst = _us(steps)
            print(f"| {case} | {len(ids)} | {name} | {_ms(compiles)} | {mean:.1f} | "
                  f"{median:.1f} | {worst:.0f} |", flush=True)


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


if __name__ == "__main__":
    main()
