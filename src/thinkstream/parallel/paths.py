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
``vote`` ends P with the most common extracted answer as its text and, as its tokens (and
their logprobs), the tokens in which the first path giving that answer wrote it; ``none``
ends P with no text. ``num_path_tokens`` counts every path's tokens
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
_LINE = re.compile("[^\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]+")  # str.splitlines' breaks


def answer_span(text: str) -> tuple[int, int, bool] | None:
    """Where a path's final answer stands in ``text``: (start, end, is a number). The last
    number after the last "answer" marker if any, else the text's last number, else its last
    non-empty line (stripped, trailing dots left out); None for none."""
    at = text.lower().rfind("answer")
    for base in ([at, 0] if at >= 0 else [0]):
        nums = list(_NUMBER.finditer(text, base))
        if nums:
            return nums[-1].start(), nums[-1].end(), True
    lines = [m for m in _LINE.finditer(text) if m.group().strip()]
    if not lines:
        return None
    line = lines[-1]
    start = line.start() + len(line.group()) - len(line.group().lstrip())
    end = line.start() + len(line.group().rstrip().rstrip("."))
    return (start, end, False) if end > start else None


def extract_answer(text: str) -> str:
    """A path's final answer (``answer_span``): a number without thousands separators, or
    a line in lower case; "" for none."""
    span = answer_span(text)
    if span is None:
        return ""
    start, end, number = span
    return text[start:end].replace(",", "") if number else text[start:end].lower()


def span_tokens(ends: list[int], start: int, end: int) -> range:
    """Indices of the tokens whose text overlaps characters ``[start, end)``; ``ends[k]``:
    the length of the text after token k. A token that added no text (bytes of a character
    held back) belongs with the token whose text released them."""
    first = next((k for k, e in enumerate(ends) if e > start), len(ends))
    last = next((k for k, e in enumerate(ends) if e >= end), len(ends) - 1)
    while first > 0 and ends[first - 1] == (ends[first - 2] if first > 1 else 0):
        first -= 1
    return range(first, last + 1)


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
                                           structured_outputs=None, prompt_logprobs=None,
                                           logprobs=p.logprobs if cfg.merge == "vote" else None)
                       for i in range(cfg.paths)]
        tok = engine.tokenizer
        self.suffixes = [list(tok.encode(cfg.path_prompts[i % len(cfg.path_prompts)],
                                         add_special_tokens=False)) if cfg.path_prompts else []
                         for i in range(cfg.paths)]
        self.summary = list(tok.encode(cfg.summary_prompt, add_special_tokens=False))
        self.detoks = [IncrementalDetokenizer(tok, [], p.skip_special_tokens)
                       for _ in range(cfg.paths)]
        self.paths: list[Thread] = []
        self.ends: list[list[int]] = [[] for _ in range(cfg.paths)]  # text length per token
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
            self.ends[path.index].append(len(st.paths[path.index]))
            st.num_path_tokens += 1
            return
        st.paths[path.index] += self.detoks[path.index].flush()
        if self.ends[path.index]:  # text held back to the end is the last token's
            self.ends[path.index][-1] = len(st.paths[path.index])
        if all(p.done for p in self.paths):
            self._merge()

    def _merge(self) -> None:
        root = self.state.seqs[0]
        if self.cfg.merge == "summary":
            self.tree.join(self.tree.root, self.paths, self.summary, self.cfg.layout)
            return
        ids, lps, text = [], [], ""
        if self.cfg.merge == "vote":
            ids, lps, text = self._vote()
        root.token_ids.extend(ids)  # the answer is the request's output (never computed)
        root.logprobs.extend(lps)
        self.state.set_text(0, text)
        self.engine.finish_sequence(root)

    def _vote(self) -> tuple[list[int], list, str]:
        """The majority answer, and the tokens in which the first path that gave it wrote
        it (with their logprobs, where the request asked for them)."""
        texts = self.state.paths
        text = majority([extract_answer(t) for t in texts])
        if not text:
            return [], [], ""
        i = next(i for i, t in enumerate(texts) if extract_answer(t) == text)
        start, end, _ = answer_span(texts[i])  # type: ignore[misc]
        ks = span_tokens(self.ends[i], start, end)
        path = self.paths[i]
        ids = [path.token_ids[k] for k in ks]
        lps = path.seq.logprobs[ks.start : ks.stop] if path.seq.params.logprobs is not None else []
        return ids, lps, text


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
