"""Turns sampled tokens into what callers see: incremental text, stop strings, deltas.

One ``RequestState`` per request holds, for each of its sequences, an incremental
detokenizer and a stop-string matcher. Text is emitted only when it can no longer change:
a partial UTF-8 character or a possible start of a stop string is held back. Log-probs are
handed out in vLLM's shape (``Logprob`` dicts), converted once per position as they come.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from thinkstream.engine.detokenize import IncrementalDetokenizer, StopStringMatcher
from thinkstream.engine.request import (
    CompletionOutput,
    Logprob,
    PromptLogprobs,
    RequestOutput,
    Sequence,
    TokenLogprob,
)


@dataclass
class _SeqText:
    detok: IncrementalDetokenizer
    stops: StopStringMatcher
    text: str = ""
    num_tokens_seen: int = 0  # output tokens already pushed through the detokenizer
    num_tokens_sent: int = 0  # output tokens already reported
    text_sent: int = 0  # characters of text already reported
    stopped_by_string: str | None = None
    logprobs: list[dict[int, Logprob]] = field(default_factory=list)  # converted so far


@dataclass
class RequestState:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    seqs: list[Sequence]
    texts: list[_SeqText] = field(default_factory=list)
    reasoning: str = ""  # reasoning text (think while reading), reported on output 0
    reasoning_sent: int = 0
    num_reasoning_tokens: int = 0  # tokens the reasoning sampled (notes, passes)
    paths: list[str] = field(default_factory=list)  # parallel paths' text, on output 0
    paths_sent: list[int] = field(default_factory=list)
    num_path_tokens: int = 0
    _prompt_logprobs: PromptLogprobs = field(default_factory=list)  # converted so far
    _prompt_sources: list[TokenLogprob | None] = field(default_factory=list)  # ... from these

    @classmethod
    def create(cls, request_id: str, prompt: str | None, seqs: list[Sequence], tokenizer) -> RequestState:
        p = seqs[0].params
        texts = [
            _SeqText(
                IncrementalDetokenizer(tokenizer, s.token_ids[: s.num_prompt_tokens], p.skip_special_tokens),
                StopStringMatcher(p.stop, p.include_stop_str_in_output),
            )
            for s in seqs
        ]
        return cls(request_id, prompt, list(seqs[0].token_ids[: seqs[0].num_prompt_tokens]), seqs, texts)

    @property
    def finished(self) -> bool:
        return all(s.status.finished for s in self.seqs)

    def reset_prompt(self, prompt_token_ids: list[int]) -> None:
        """The input changed (streaming): detokenize outputs after the final prompt."""
        self.prompt_token_ids = list(prompt_token_ids)
        for st in self.texts:
            st.detok = IncrementalDetokenizer(
                st.detok.tokenizer, prompt_token_ids, st.detok.skip_special_tokens
            )

    def update_text(self, index: int) -> bool:
        """Detokenize new tokens of sequence ``index``. Returns True when a stop string
        matched (the caller finishes the sequence)."""
        seq, st = self.seqs[index], self.texts[index]
        out_ids = seq.output_token_ids
        stopped = False
        min_tokens = seq.params.min_tokens  # no stop string ends the first min_tokens tokens
        # a token of stop_token_ids that ended the sequence is kept in token_ids but not in
        # the text, unless include_stop_str_in_output (vLLM's detokenizer does the same)
        end = len(out_ids)
        if (seq.status.finished and isinstance(seq.stop_reason, int)
                and not seq.params.include_stop_str_in_output):
            end -= 1
        while st.num_tokens_seen < end and not stopped:
            delta = st.detok.push(out_ids[st.num_tokens_seen])
            st.num_tokens_seen += 1
            emit, stopped = st.stops.feed(delta, armed=st.num_tokens_seen > min_tokens)
            st.text += emit
            if stopped:
                st.stopped_by_string = st.stops.matched
                # Tokens past the stop string are not part of the output.
                del seq.token_ids[seq.num_prompt_tokens + st.num_tokens_seen :]
        if seq.status.finished and not stopped and st.stopped_by_string is None:
            emit, stopped_late = st.stops.feed(st.detok.flush(),
                                               armed=st.num_tokens_seen > min_tokens)
            st.text += emit
            if not stopped_late:
                st.text += st.stops.flush()
            else:
                st.stopped_by_string = st.stops.matched
        return stopped

    def set_text(self, index: int, text: str) -> None:
        """Sequence ``index``'s text is ``text``, not what its output tokens decode to (a
        feature's answer: a vote over parallel paths answers with the normalized answer
        and the tokens a path wrote it in). Call once its tokens are final."""
        st = self.texts[index]
        st.num_tokens_seen, st.text = len(self.seqs[index].output_token_ids), text

    def make_output(self, consume: bool = True) -> RequestOutput:
        """The request's output now. ``new_*`` fields hold what was not reported yet, and
        are marked reported unless ``consume`` is False (a snapshot for a late listener)."""
        outs = []
        for seq, st in zip(self.seqs, self.texts, strict=True):
            ids = seq.output_token_ids
            reason = seq.status.finish_reason
            if st.stopped_by_string is not None:
                reason = "stop"
            outs.append(
                CompletionOutput(
                    index=seq.index,
                    text=st.text,
                    token_ids=list(ids),
                    logprobs=self._sample_logprobs(seq, st, len(ids)),
                    finish_reason=reason,
                    stop_reason=st.stopped_by_string if st.stopped_by_string is not None else seq.stop_reason,
                    new_text=st.text[st.text_sent :],
                    new_token_ids=list(ids[st.num_tokens_sent :]),
                )
            )
            if seq.index == 0 and self.paths:
                self._path_output(outs[-1], consume)
            if seq.index == 0:
                outs[-1].num_reasoning_tokens = self.num_reasoning_tokens
            if seq.index == 0 and self.reasoning:
                outs[-1].reasoning_content = self.reasoning
                outs[-1].new_reasoning_content = self.reasoning[self.reasoning_sent :]
                if consume:
                    self.reasoning_sent = len(self.reasoning)
            if consume:
                st.text_sent, st.num_tokens_sent = len(st.text), len(ids)
        return RequestOutput(
            request_id=self.request_id,
            prompt=self.prompt,
            prompt_token_ids=self.prompt_token_ids,
            prompt_logprobs=self._prompt_logprobs_now(),
            outputs=outs,
            finished=self.finished,
            num_cached_tokens=max(self.seqs[0].num_cached_tokens, 0),
        )

    def _path_output(self, out: CompletionOutput, consume: bool) -> None:
        out.paths = list(self.paths)
        out.num_path_tokens = self.num_path_tokens
        out.new_paths = [(i, t[s:]) for i, (t, s) in enumerate(zip(self.paths, self.paths_sent,
                                                                    strict=True)) if len(t) > s]
        if consume:
            self.paths_sent = [len(t) for t in self.paths]

    # ------------------------------------------------------------ logprobs
    def _decode(self, token_id: int) -> str:
        return self.texts[0].detok.tokenizer.decode([token_id])

    def _as_dict(self, entry: TokenLogprob) -> dict[int, Logprob]:
        """vLLM's entry for a position: the chosen token first, then the top ones by rank."""
        out = {entry.token_id: Logprob(entry.logprob, entry.rank, self._decode(entry.token_id))}
        for rank, (tid, lp) in enumerate(entry.top, 1):
            if tid not in out:
                out[tid] = Logprob(lp, rank, self._decode(tid))
        return out

    def _sample_logprobs(self, seq: Sequence, st: _SeqText, num_tokens: int,
                         ) -> list[dict[int, Logprob]] | None:
        if seq.params.logprobs is None:
            return None
        for entry in seq.logprobs[len(st.logprobs):num_tokens]:  # entries are only appended
            st.logprobs.append(self._as_dict(entry))
        return st.logprobs[:num_tokens]

    def _prompt_logprobs_now(self) -> PromptLogprobs | None:
        """The head sequence's prompt logprobs for the request's prompt (``prompt_token_ids``;
        a feature's internal tokens after it left out), converted where they changed (an
        input that is rolled back and recomputed replaces its tail). The first token's
        entry is None before anything is computed (a prompt of one token whose token is
        held, as parallel paths hold it, is never computed as a prompt)."""
        src = self.seqs[0].prompt_logprobs
        if src is None:
            wanted = self.seqs[0].wants_prompt_logprobs and self.prompt_token_ids
            return [None] if wanted else None
        src = src[: len(self.prompt_token_ids)]
        done, have = 0, self._prompt_sources
        while done < min(len(src), len(have)) and src[done] is have[done]:
            done += 1
        del self._prompt_logprobs[done:], have[done:]
        for entry in src[done:]:
            have.append(entry)
            self._prompt_logprobs.append(None if entry is None else self._as_dict(entry))
        return list(self._prompt_logprobs)
