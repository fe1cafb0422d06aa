"""``ThinkController``: one session's reasoning while its input streams in.

The session's input is its request's sequence S; the reasoning is one attached sequence R
(``engine.attach``, this controller its ``SequenceOwner``) whose own tokens are the notes so far, viewing S's cache::

    S (input, never sees R while reading):  | unit 0 | unit 1 | unit 2 ...     | answer |
    R (notes):  view of S[:end_k] + own:    | seg 0: head note tail | seg 1 ... |
    answer (S after close): S tokens + a view of all of R

Each completed input unit k starts a segment of R: a steering head, a sampled note
(``note_tokens`` at most, ending at a line break or EOS), a tail. R's view is
``kv_prefix = [(S, end_k)]``; the tokens of earlier segments keep the view they were
written with (``kv_prefix_visible``), so they are recomputed exactly after a preemption.
The scheduler computes R only once S has computed ``end_k`` tokens, so unit k+1 is
prefilled in the same steps as note k (see ``layouts`` for where each token sits).

Invariants (``check``):
- every view ends at an input token S has received and that is not its held last token;
- the positions of S's computed tokens equal the layout formula and never change:
  truncating the input below a segment's view first rolls R back to before that segment
  (``before_truncate``), and its units are noted again;
- R has an explicit position for every token.

After the input closes: a note for the last unit (``defer_notes``, batch thinking: for
every unit, in order; at D2/D3 the unit the close completes is left to the integration
pass, ``fold_last_unit``), the depth's passes (D2 integrate, D3 integrate + reflect), the
answer request (``answer_request``, in R after the last tail), then the answer: S's remaining
tokens (the chat template's assistant header) are placed after all reasoning and see S plus
all of R. Budget forcing: once ``max_reasoning_tokens`` are generated the current note ends
and no other starts.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from thinkstream.engine.llm_engine import LLMEngine
from thinkstream.engine.request import Sequence
from thinkstream.sampling_params import SamplingParams
from thinkstream.thinking.config import ThinkConfig
from thinkstream.thinking.layouts import after_all, input_positions, known_until, segment_start
from thinkstream.thinking.units import find_unit_ends


@dataclass
class _Unit:
    end: int  # exclusive input token index
    seg_len: int | None = None  # tokens of R written after it (0: merged into a later note)


@dataclass
class _Seg:
    start: int  # first R token of the segment
    view_end: int  # input tokens it sees
    unit: int | None  # the unit it notes (None: an integration / reflection pass)
    sample_start: int = 0
    count: int = 0  # sampled tokens
    budget: int = 0
    text: str = ""
    done: bool = False


ANSWER_PROMPT_SLACK = 16  # tokens: the chat template's answer header, unknown while reading
ANSWER_ROOM = 32  # tokens of answer a memory cut of the reasoning leaves room for (at least)


class ThinkController:
    def __init__(self, engine: LLMEngine, request_id: str, cfg: ThinkConfig,
                 content_start: int = 0) -> None:
        self.engine, self.rid, self.cfg = engine, request_id, cfg
        self.state = engine.requests[request_id]
        self.S = self.state.seqs[0]
        tok = engine.tokenizer
        self._enc = lambda text: list(tok.encode(text, add_special_tokens=False))
        self.head, self.tail = self._enc(cfg.note_head), self._enc(cfg.note_tail)
        self.pass_heads = [self._enc(h) for h in cfg.passes]
        self.pass_tail = self._enc(cfg.pass_tail)
        self.request = self._enc(cfg.answer_request)
        need = len(self.head) + cfg.note_tokens + len(self.tail)
        if cfg.layout.kind == "gap" and need > cfg.layout.gap:
            raise ValueError(f"layout gap {cfg.layout.gap} cannot hold a note segment of up to "
                             f"{need} tokens (head + note_tokens + tail)")
        self.R = Sequence(
            seq_id=f"{request_id}#think", request_id=request_id, index=-1, token_ids=[],
            num_prompt_tokens=0, params=SamplingParams(temperature=cfg.temperature, ignore_eos=True),
            generator=torch.Generator(device=engine.device).manual_seed(cfg.seed),
            max_tokens=engine.max_model_len, input_closed=False)
        self.units: list[_Unit] = []
        self.segs: list[_Seg] = []
        self.content_start = content_start
        self.phase = "reading"  # -> "final" (input closed) -> "answering"
        self.view_limit = 0  # input tokens notes may view
        self.passes_left: list[list[int]] = []
        self.reasoning_tokens = 0
        self.onset_time: float | None = None  # first reasoning token
        self.onset_input_tokens: int | None = None  # input tokens received by then
        self.reasoning_done_time: float | None = None
        self._attached = False
        self.starved = False  # the pool cannot hold S and R: no more reasoning (``on_starved``)

    # ------------------------------------------------------------ input events
    @property
    def note(self) -> _Seg | None:
        return self.segs[-1] if self.segs and not self.segs[-1].done else None

    def _last_end(self) -> int:
        return self.units[-1].end if self.units else self.content_start

    def on_input(self) -> None:
        """The input grew (or was rolled back and regrown): find completed units, place the
        input tokens, start a note if R is free."""
        if self.phase != "reading":
            return
        self._scan(self.S.num_tokens - 1)  # the last token may still change
        self._place_input()
        self._advance()

    def _scan(self, limit: int) -> None:
        start = self._last_end()
        if limit <= start:
            return
        ids = self.S.token_ids
        pieces = [""] * start + [self.engine.tokenizer.decode([t]) for t in ids[start:limit]]
        self.units += [_Unit(e) for e in find_unit_ends(self.cfg.units, pieces, start, limit)]

    def before_truncate(self, keep: int, num_added: int = 0) -> None:
        """The input is about to be cut to ``keep`` tokens, then extended by ``num_added``:
        drop the units and reasoning segments that saw past what remains viewable. That is
        ``keep - 1`` if nothing is added (the last token is held back and may still change),
        else ``keep``: tokens ``[0, keep)`` stay and none of them is the last one any more (a
        chunk ending in a space: the retokenizer merges it into the next word, so an append
        replaces one token, and the unit ending just before it keeps its note)."""
        limit = keep if num_added else keep - 1
        bad = next((i for i, s in enumerate(self.segs) if s.view_end > limit), None)
        if bad is not None:
            self._truncate_r(self.segs[bad].start)
            del self.segs[bad:]
        self.units = [u for u in self.units if u.end <= limit]
        noted = {s.unit for s in self.segs}
        for k, u in enumerate(self.units):
            if k not in noted and (not self.segs or u.end > self.segs[-1].view_end):
                u.seg_len = None  # its note (or the one it merged into) is gone: note it again
        self.R.kv_prefix = [(self.S.seq_id, self.segs[-1].view_end)] if self.segs else []

    def _truncate_r(self, cut: int) -> None:
        R = self.R
        del R.token_ids[cut:], R.positions[cut:], R.kv_prefix_visible[cut:]
        R.num_prompt_tokens = min(R.num_prompt_tokens, cut)
        self.engine.truncate_kv(R, cut)
        R.input_closed = False

    def close(self, num_content: int) -> None:
        """The input is complete; S holds ``num_content`` input tokens then the answer prompt.
        Note the last unit, run the passes, then answer (``engine.close_input``)."""
        self.phase = "final"
        self.num_content = num_content
        end = min(num_content, self.S.num_tokens - 1)  # S's last token is held until the answer
        self._scan(end)
        if end > self._last_end():
            self.units.append(_Unit(end))
        if self.pass_heads and self.cfg.fold_last_unit and self.units and self.units[-1].seg_len is None:
            self.units[-1].seg_len = 0  # the first pass reads it (``ThinkConfig.fold_last_unit``)
        self.view_limit = end
        self.passes_left = list(self.pass_heads)
        self._place_input()
        self._advance()

    # -------------------------------------------------------------- placement
    def _place_input(self) -> None:
        S, layout = self.S, self.cfg.layout
        ends = [u.end for u in self.units]
        seg_lens = []
        for u in self.units:
            if u.seg_len is None:
                break
            seg_lens.append(u.seg_len)
        if layout.kind != "grouped":
            pos = input_positions(layout, S.num_tokens, ends, seg_lens)
            done = S.num_computed_tokens
            if S.positions[:done] != pos[:done]:
                raise RuntimeError(f"{S.seq_id}: the layout would move computed input tokens")
            S.positions = pos
        limit = known_until(layout, ends, seg_lens)
        if self.phase == "final":
            limit = min(limit if limit is not None else self.view_limit, self.view_limit)
        S.compute_limit = limit

    def _advance(self) -> None:
        """Start the next note or pass if R is free; after the last, answer."""
        if self.note is not None or self.phase == "answering":
            return
        if self.phase == "reading" and self.cfg.defer_notes:
            return
        pending = [k for k, u in enumerate(self.units) if u.seg_len is None]
        seg = (len(self.head) + self.cfg.note_tokens + len(self.tail) if pending
               else len(max(self.pass_heads, key=len, default=[])) + self.cfg.pass_tokens
               + len(self.pass_tail))
        forced = (self.starved or self.reasoning_tokens >= self.cfg.max_reasoning_tokens
                  or not self._fits(seg))
        if pending and forced:
            for k in pending:
                self.units[k].seg_len = 0
            self._place_input()
        elif pending:
            if self.cfg.layout.kind == "interleaved" or self.cfg.defer_notes:
                k = pending[0]
            else:  # R fell behind: one note for everything read since (the others merge)
                k = pending[-1]
                for j in pending[:-1]:
                    self.units[j].seg_len = 0
            u = self.units[k]
            start = segment_start(self.cfg.layout, u.end, self.S.positions or range(self.S.num_tokens),
                                  self.R.positions)
            self._start(self.head, u.end, start, self.cfg.note_tokens, k)
            return
        if self.phase == "final":
            if self.passes_left and not forced:
                head = self.passes_left.pop(0)
                self._start(head, self.view_limit, self._after_reasoning(), self.cfg.pass_tokens, None)
            else:
                self._answer()

    def _fits(self, more: int) -> bool:
        """Whether R grown by ``more`` tokens (plus the answer request) and S with its answer
        still fit the KV pool together, as the answer needs both resident, and R stays
        within ``max_model_len``: budget forcing by memory, so a session never asks for more
        blocks than exist (it would wait forever). What this cannot foresee (S's input
        growing past the room left) ends in ``on_starved``."""
        e, S = self.engine, self.S
        r = self.R.num_tokens + more + len(self.request) + 1
        s = S.num_tokens + S.max_tokens + ANSWER_PROMPT_SLACK
        # R is a sequence too: the engine ends any at ``max_model_len`` tokens
        return e.blocks_for(r) + e.blocks_for(s) <= e.num_kv_blocks and r < e.max_model_len

    def _input_pos(self, n: int) -> list[int]:
        return self.S.positions[:n] if self.S.positions else list(range(n))

    def _after_reasoning(self) -> int:
        """Where a pass or the answer request starts: after everything (grouped: after R)."""
        if self.cfg.layout.kind == "grouped" and self.R.positions:
            return self.R.positions[-1] + 1
        return after_all(self._input_pos(self.view_limit), self.R.positions)

    def _start(self, head: list[int], view_end: int, pos: int, budget: int, unit: int | None) -> None:
        R = self.R
        seen = sum(n for _, n in R.kv_prefix)
        R.kv_prefix_visible += [seen] * (R.num_tokens - len(R.kv_prefix_visible))  # pin the past
        seg = _Seg(R.num_tokens, view_end, unit, budget=budget)
        R.token_ids += head
        R.positions += range(pos, pos + len(head))
        R.num_prompt_tokens = seg.sample_start = R.num_tokens
        R.kv_prefix = [(self.S.seq_id, view_end)]
        R.input_closed = True
        self.segs.append(seg)
        if not self._attached:
            self.engine.attach(self.rid, R, self)
            self._attached = True
        else:
            self.engine.wake(R)

    # -------------------------------------------------------------- R's tokens
    def on_token(self, R: Sequence, token_id: int) -> str | None:
        """``SequenceOwner``: a token of R was sampled; returns the session's request id."""
        seg = self.note
        if seg is None:  # not expected: R only samples inside a segment
            return None
        R.positions.append(R.positions[-1] + 1)
        seg.count += 1
        self.reasoning_tokens += 1
        self.state.num_reasoning_tokens += 1  # usage: reasoning tokens are completion tokens
        if self.onset_time is None:
            self.onset_time = time.monotonic()
            self.onset_input_tokens = self.S.num_prompt_tokens
        tok = self.engine.tokenizer
        text = tok.decode(R.token_ids[seg.sample_start :], skip_special_tokens=True)
        ended = (token_id in self.engine.eos_ids or seg.count >= seg.budget
                 or self.reasoning_tokens >= self.cfg.max_reasoning_tokens
                 or (self.cfg.stop_at_newline and "\n" in tok.decode([token_id]) and seg.count > 1))
        text = text.strip() if ended else text.lstrip().rstrip("\ufffd")
        if len(text) > len(seg.text):
            sep = "\n" if not seg.text and self.state.reasoning else ""
            self.state.reasoning += sep + text[len(seg.text):]
            seg.text = text
        if ended:
            self._end_segment(seg)
        return self.rid

    def _end_segment(self, seg: _Seg) -> None:
        R = self.R
        R.input_closed = False
        tail = self.tail if seg.unit is not None else self.pass_tail
        R.positions += range(R.positions[-1] + 1, R.positions[-1] + 1 + len(tail))
        R.token_ids += tail
        R.num_prompt_tokens = R.num_tokens
        seg.done = True
        if seg.unit is not None:
            self.units[seg.unit].seg_len = R.num_tokens - seg.start
        self._place_input()
        self._advance()

    # ---------------------------------------------------------- memory pressure
    def on_starved(self, R: Sequence) -> None:
        """``SequenceOwner``: the engine says R can never get its blocks while S is resident (the pool is too
        small for both): budget forcing by memory. The note in progress is dropped, R is
        cut to the segments that fit beside S, and no reasoning starts again; the answer
        follows as usual (it views what is left of R). S and R are never preempted
        against each other in a cycle, and the session always answers."""
        self.starved = True
        self._cut_to_fit(0)
        self._place_input()
        self._advance()

    def _cut_to_fit(self, extra: int) -> None:
        """Drop R's unfinished segment and its last finished ones until R plus ``extra``
        tokens and S with room for ``ANSWER_ROOM`` answer tokens fit the pool together.
        Units keep their layout (computed input positions never move)."""
        e, S, R = self.engine, self.S, self.R
        room = e.num_kv_blocks - e.blocks_for(S.num_tokens + min(S.max_tokens, ANSWER_ROOM))
        keep = len(self.segs)
        if self.note is not None:
            keep -= 1
        while keep and e.blocks_for(self._seg_end(keep - 1) + extra) > room:
            keep -= 1
        if keep == len(self.segs):
            return
        cut = self.segs[keep].start
        for seg in self.segs[keep:]:
            if seg.unit is not None and self.units[seg.unit].seg_len is None:
                self.units[seg.unit].seg_len = 0  # its note never ended: nothing placed for it
        del self.segs[keep:]
        self._truncate_r(cut)
        R.kv_prefix = [(S.seq_id, self.segs[-1].view_end)] if self.segs else []

    def _seg_end(self, i: int) -> int:
        """R tokens up to the end of segment ``i`` (its tail included)."""
        return self.segs[i + 1].start if i + 1 < len(self.segs) else self.R.num_tokens

    # ----------------------------------------------------------------- answer
    def _answer(self) -> None:
        """Write the answer request into R, then S's remaining tokens go after all reasoning
        and see all of R but its last token, which R holds back (never computed); then the
        input closes and S answers."""
        S, R, end = self.S, self.R, self.view_limit
        self.phase = "answering"
        self.reasoning_done_time = time.monotonic()
        self._cut_to_fit(len(self.request) + 1)  # the answer needs S and R resident together
        if self.segs and self.request:
            self._write_request()
        if R.num_tokens > 1:
            R.kv_prefix_visible += [sum(n for _, n in R.kv_prefix)] * (R.num_tokens - len(R.kv_prefix_visible))
            S.kv_prefix = [(R.seq_id, R.num_tokens - 1)]
            S.kv_prefix_visible = [0] * end
            start = after_all(self._input_pos(end), R.positions[: R.num_tokens - 1])
            S.positions = self._input_pos(end) + list(range(start, start + S.num_tokens - end))
            S.position_offset = start - end
        S.compute_limit = None
        self.engine.close_input(self.rid)

    def _write_request(self) -> None:
        """Append ``answer_request`` after the last tail, then a placeholder for the token R
        holds back (never computed nor viewed; a copy of S's next token), so the answer
        views all of the request::

            R:         | ... last tail | request | placeholder (held) |
            S answer:  | view of R[:-1]          | S's remaining tokens, after it all
        """
        R = self.R
        ids = [*self.request, self.S.token_ids[self.view_limit]]
        start = self._after_reasoning()
        R.token_ids += ids
        R.positions += range(start, start + len(ids))
        R.num_prompt_tokens = R.num_tokens
        self.engine.wake(R)

    # ------------------------------------------------------------------ checks
    def check(self) -> None:
        """The invariants in the module docstring."""
        S, R = self.S, self.R
        assert len(R.positions) == R.num_tokens, (len(R.positions), R.num_tokens)
        ends = [s.view_end for s in self.segs]
        assert ends == sorted(ends), ends
        if self.phase == "reading":
            assert all(e <= S.num_tokens - 1 for e in ends), (ends, S.num_tokens)
            if self.cfg.layout.kind != "grouped":
                seg_lens = []
                for u in self.units:
                    if u.seg_len is None:
                        break
                    seg_lens.append(u.seg_len)
                want = input_positions(self.cfg.layout, S.num_tokens, [u.end for u in self.units], seg_lens)
                done = S.num_computed_tokens
                assert S.positions[:done] == want[:done]


__all__ = ["ThinkController"]
