"""Parallel reasoning paths: N paths from one prompt, then a summary that reads every path
through views (ParaThinker), a majority vote over their final answers (self-consistency),
or the paths alone.

``start_paths`` runs on the engine's thread right after the request is added with its
input open (``LLMEngine.make_request(..., input_closed=False)``): the request's sequence P
computes the prompt but for its last token and samples nothing; the paths are a fork of P
(``threads.ThreadTree``), one child per path with seed ``seed + i`` and its path prompt.
Each path's text goes to the request's output as it is sampled (``RequestState.paths``:
``CompletionOutput.new_paths`` holds (path index, text delta) pairs). When the last path
ends: ``summary`` joins P after every path and the summary prompt (no path is recomputed;
the request's text is the summary; its ``prompt_token_ids`` stay the request's own),
``vote`` ends P with the most common extracted answer
as its text, ``none`` ends P with no text. ``num_path_tokens`` counts every path's tokens
for ``usage``.
"""

from __future__ import annotations

import dataclasses
import re
from collections import Counter

from thinkstream.engine.detokenize import IncrementalDetokenizer
from thinkstream.engine.llm_engine import LLMEngine
from thinkstream.engine.output import RequestState
from thinkstream.parallel.config import ParallelConfig
from thinkstream.parallel.threads import Thread, ThreadTree, check_room
from thinkstream.sampling_params import ParamError, SamplingParams

_NUMBER = re.compile(r"-?\d+(?:[.,]\d+)*")


def extract_answer(text: str) -> str:
    """A path's final answer: the text after the last "answer" marker if any, then its last
    number, else its last non-empty line (stripped, lower case); "" for none."""
    low = text.lower()
    at = low.rfind("answer")
    tail = text[at:] if at >= 0 else text
    nums = _NUMBER.findall(tail) or _NUMBER.findall(text)
    if nums:
        return nums[-1].replace(",", "")
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1].lower().rstrip(".") if lines else ""


def majority(answers: list[str]) -> str:
    """The most common non-empty answer; ties go to the one reached first ("" if none)."""
    counts = Counter(a for a in answers if a)
    if not counts:
        return ""
    best = max(counts.values())
    return next(a for a in answers if counts.get(a) == best)


class ParallelPaths:
    """The paths of one request and their merge (the tree's listener)."""

    def __init__(self, engine: LLMEngine, state: RequestState, cfg: ParallelConfig) -> None:
        self.engine, self.state, self.cfg = engine, state, cfg
        self.tree = ThreadTree(engine, state.request_id, listener=self._on_path)
        p = state.seqs[0].params
        base = state.seqs[0].generator.initial_seed()  # the request's seed (or its draw)
        temp = cfg.temperature if cfg.temperature is not None else p.temperature
        # the request's stop strings end its answer, not a path (a path ends on a stop
        # token or after path_tokens)
        self.params = [dataclasses.replace(p, seed=base + i, temperature=temp, n=1, stop=(),
                                           structured_outputs=None, logprobs=None,
                                           prompt_logprobs=None)
                       for i in range(cfg.paths)]
        tok = engine.tokenizer
        self.suffixes = [list(tok.encode(cfg.path_prompts[i % len(cfg.path_prompts)],
                                         add_special_tokens=False)) if cfg.path_prompts else []
                         for i in range(cfg.paths)]
        self.summary = list(tok.encode(cfg.summary_prompt, add_special_tokens=False))
        self.detoks = [IncrementalDetokenizer(tok, [], p.skip_special_tokens)
                       for _ in range(cfg.paths)]
        self.paths: list[Thread] = []
        state.paths = [""] * cfg.paths
        state.paths_sent = [0] * cfg.paths

    def start(self) -> None:
        check_paths_room(self.engine, self.state.seqs[0].num_tokens, self.state.seqs[0].params,
                         self.cfg)
        self.paths = self.tree.fork(self.tree.root, self.suffixes, self.params,
                                    self.cfg.path_tokens)

    def _on_path(self, path: Thread, token_id: int | None) -> None:
        st = self.state
        if token_id is not None:
            st.paths[path.index] += self.detoks[path.index].push(token_id)
            st.num_path_tokens += 1
            return
        st.paths[path.index] += self.detoks[path.index].flush()
        if all(p.done for p in self.paths):
            self._merge()

    def _merge(self) -> None:
        root = self.state.seqs[0]
        if self.cfg.merge == "summary":
            self.tree.join(self.tree.root, self.paths, self.summary, self.cfg.layout)
            return
        text = majority([extract_answer(t) for t in self.state.paths]) \
            if self.cfg.merge == "vote" else ""
        ids = list(self.engine.tokenizer.encode(text, add_special_tokens=False)) if text else []
        root.token_ids.extend(ids)  # the voted answer is the request's text (never computed)
        self.engine.finish_sequence(root)


def start_paths(engine: LLMEngine, state: RequestState, cfg: ParallelConfig) -> ParallelPaths:
    """Fork the paths of a request just added with its input open (engine thread)."""
    paths = ParallelPaths(engine, state, cfg)
    paths.start()
    return paths


def check_paths_room(engine: LLMEngine, num_prompt_tokens: int, params: SamplingParams,
                     cfg: ParallelConfig) -> None:
    """Refuse paths that could never all run (``threads.check_room``): every path at
    ``path_tokens`` beside the prompt, the summary prompt and the request's ``max_tokens``
    (one token when unset); and a summary placed past the model's context (after the
    longest path, or every path with ``layout="sequential"``), as a request whose prompt
    and ``max_tokens`` exceed it is refused. ``ParamError`` naming ``parallel.paths``
    (sequence slots) or ``parallel.path_tokens`` (KV blocks, positions); safe from any
    thread (it reads only settings)."""
    tok = engine.tokenizer
    answer = num_prompt_tokens
    prompts = [len(tok.encode(cfg.path_prompts[i % len(cfg.path_prompts)],
                              add_special_tokens=False)) if cfg.path_prompts else 0
               for i in range(cfg.paths)]
    if cfg.merge == "summary":
        answer += len(tok.encode(cfg.summary_prompt, add_special_tokens=False))
        answer += params.max_tokens or 1
        spans = [n + cfg.path_tokens for n in prompts]  # what the summary reads of each path
        last = answer + (sum(spans) if cfg.layout == "sequential" else max(spans))
        if last > engine.context_len:
            raise ParamError("parallel.path_tokens", f"too large: the summary would sit at "
                             f"positions up to {last}, past the context of "
                             f"{engine.context_len} tokens (prompt, {cfg.layout} paths, "
                             "summary prompt and max_tokens)")
    check_room(engine, [answer, *(1 + n + cfg.path_tokens for n in prompts)],
               "parallel.paths", "parallel.path_tokens")
