"""Think while reading on the tiny model: layout formulas, units, exact logits of a
staircase view with gap positions, reading independent of thinking, notes computed in the
same step as input prefill, invalidation on roll-back, depth, budget forcing, preemption and
block accounting, and reasoning deltas before the input closes.

Tests parametrized by ``dtype`` also run in bfloat16, where appended chunks and notes take
the short-chunk attention path; their assertions hold in any dtype (or compare two runs in
the same one)."""

from __future__ import annotations

import pytest
import torch
from helpers.tiny import random_tensors, reference_logits, tiny_checkpoint, tiny_config

from thinkstream.attention.metadata import SeqSlice, allocate_kv_caches, build_attention_metadata
from thinkstream.llm import LLM
from thinkstream.models.registry import build_model
from thinkstream.sampling_params import SamplingParams
from thinkstream.thinking import Layout, ThinkConfig, UnitPolicy
from thinkstream.thinking.layouts import after_all, input_positions, known_until, segment_start
from thinkstream.thinking.units import find_unit_ends

CKPT = tiny_checkpoint()
GREEDY = SamplingParams(temperature=0.0, max_tokens=4, ignore_eos=True)
PIECES = ["The quick brown fox. ", "Paris is the capital. ", "What is it? ", "The lazy dog"]
DTYPES = ["float32", "bfloat16"]


def make_llm(**cfg) -> LLM:
    base = dict(dtype="float32", block_size=4, num_blocks=256, max_num_seqs=16, max_num_batched_tokens=64)
    base.update(cfg)
    return LLM(checkpoint=CKPT, **base)


def think(kind: str = "gap", **kw) -> ThinkConfig:
    kw.setdefault("note_tokens", 6)
    kw.setdefault("pass_tokens", 5)
    return ThinkConfig(layout=Layout(kind, gap=40), **kw)


def run_session(llm: LLM, cfg: ThinkConfig, pieces=PIECES, check=True):
    s = llm.open_session(messages=[], sampling_params=GREEDY, thinking=cfg)
    ctrl = llm._sessions.thinker(s.id)
    for p in pieces:
        s.append(p)
        list(s.think())
        if check:
            llm.engine.check_integrity()
            ctrl.check()
    return s, ctrl


def assert_pool_full(llm: LLM) -> None:
    llm.engine.check_integrity()
    assert not llm.engine.requests
    assert llm.engine.kv.num_free_blocks == llm.engine.kv.num_blocks


# ------------------------------------------------------------------ pure parts
def test_layout_formulas() -> None:
    ends, segs = [3, 7], [5, 2]
    assert input_positions(Layout("grouped"), 9, ends, segs) == list(range(9))
    assert input_positions(Layout("gap", gap=10), 9, ends, segs) == [0, 1, 2, 13, 14, 15, 16, 27, 28]
    assert input_positions(Layout("interleaved"), 9, ends, segs) == [0, 1, 2, 8, 9, 10, 11, 14, 15]
    assert known_until(Layout("interleaved"), ends, segs[:1]) == 7
    assert known_until(Layout("gap"), ends, []) is None
    pos = input_positions(Layout("gap", gap=10), 9, ends, segs)
    assert segment_start(Layout("gap", gap=10), 7, pos, []) == 17  # right after unit 1
    assert segment_start(Layout("grouped"), 7, list(range(9)), [0, 1, 2]) == 3
    assert after_all([0, 1, 5], [9, 10]) == 11
    with pytest.raises(ValueError):
        Layout("diagonal")


def test_unit_ends() -> None:
    pieces = ["Tom", " has", " 3", ".", " He", " buys", "!", " x", "\n", "y"]
    assert find_unit_ends(UnitPolicy(min_tokens=2), pieces, 0, 10) == [4, 7, 9]
    assert find_unit_ends(UnitPolicy(min_tokens=4), pieces, 0, 10) == [4, 9]  # "He buys!" merges
    assert find_unit_ends(UnitPolicy("tokens", num_tokens=3), pieces, 0, 10) == [3, 6, 9]
    assert find_unit_ends(UnitPolicy("delimiter", delimiter="\n", min_tokens=1), pieces, 0, 10) == [9]


# ------------------------------------------------------------- exact numerics
@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_staircase_view_gap_positions_exact(arch: str) -> None:
    """R's tokens see S[:visible] (a staircase: earlier notes saw less input) at gap-layout
    positions; chunked recompute and decode both equal the dense reference."""
    cfg = tiny_config(arch)
    t = random_tensors(cfg, seed=3)
    model = build_model(cfg, t)
    bs = 4
    caches = allocate_kv_caches(cfg.num_layers, 32 * bs, cfg.num_kv_heads, cfg.head_dim, torch.float32, "cpu")
    lay = Layout("gap", gap=6)
    src = [11, 22, 33, 44, 55, 66, 77, 88]
    ends = [3, 6]
    spos = input_positions(lay, len(src), ends, [])
    meta = build_attention_metadata([SeqSlice([0, 1], 0, len(src))], bs, caches)
    with torch.inference_mode():
        model(torch.tensor(src), torch.tensor(spos), meta)
    own = [90, 91, 92, 93, 94]  # tokens 0-2 noted unit 0 (see 3), tokens 3-4 unit 1 (see 6)
    visible = (3, 3, 3, 6, 6)
    rpos = [3, 4, 5, 12, 13]  # after unit 0 (pos 2); after unit 1 (S[5] sits at 3 + 6 + 2)
    assert rpos[3] == spos[5] + 1 == segment_start(lay, 6, spos, [])
    # reference: one dense pass over S[:6] + R; R token j sees S[:visible[j]] and R[:j+1]
    n = 6 + len(own)
    allowed = torch.ones(n, n).tril().bool()
    for j, v in enumerate(visible):
        allowed[6 + j, v:6] = False
    ref = reference_logits(cfg, t, src[:6] + own, spos[:6] + rpos, allowed)[6:]
    prefix = (([0, 1], 6),)
    meta = build_attention_metadata([SeqSlice([5, 6], 0, 4, prefix, visible[:4])], bs, caches)
    with torch.inference_mode():
        a = model.compute_logits(model(torch.tensor(own[:4]), torch.tensor(rpos[:4]), meta))
    meta = build_attention_metadata([SeqSlice([5, 6], 4, 1, prefix, visible[4:])], bs, caches)
    with torch.inference_mode():
        b = model.compute_logits(model(torch.tensor(own[4:]), torch.tensor(rpos[4:]), meta))
    assert torch.allclose(torch.cat([a, b]), ref, atol=1e-4), (torch.cat([a, b]) - ref).abs().max()
    # a decode that may see only part of the prefix
    meta = build_attention_metadata([SeqSlice([5, 6], 4, 1, prefix, (3,))], bs, caches)
    with torch.inference_mode():
        c = model.compute_logits(model(torch.tensor(own[4:]), torch.tensor(rpos[4:]), meta))
    allowed[-1, 3:6] = False
    ref_c = reference_logits(cfg, t, src[:6] + own, spos[:6] + rpos, allowed)[-1]
    assert torch.allclose(c[0], ref_c, atol=1e-4)


def _input_kv(llm: LLM, sid: str, n: int) -> torch.Tensor:
    table = llm.engine.kv.block_table(f"{sid}#0")
    bs = llm.engine.kv.block_size
    slots = torch.tensor([table[i // bs] * bs + i % bs for i in range(n)])
    return torch.cat([torch.cat([k[slots], v[slots]]) for k, v in llm.engine.runner.kv_caches])


def test_reading_is_independent_of_thinking() -> None:
    """The input's KV is bit-identical whether notes run alongside or not (same layout:
    budget forcing after one token leaves the notes out)."""
    kvs = []
    for budget in (1000, 1):
        llm = make_llm()
        s, ctrl = run_session(llm, think("gap", max_reasoning_tokens=budget))
        n = ctrl.S.num_computed_tokens
        kvs.append((_input_kv(llm, s.id, n), list(ctrl.S.positions[:n]), ctrl.reasoning_tokens))
        s.abort()
        assert_pool_full(llm)
    (a, pa, ra), (b, pb, rb) = kvs
    assert ra > rb == 1 and pa == pb
    # Equal up to float rounding: the masks keep the input from seeing any note, but CPU
    # matmuls are not batch-invariant (rows batched with note tokens round differently).
    assert (a - b).abs().max() <= 1e-5, (a - b).abs().max()


@pytest.mark.parametrize("dtype", DTYPES)
def test_notes_see_exactly_the_input_read_so_far(dtype: str) -> None:
    llm = make_llm(dtype=dtype)
    s, ctrl = run_session(llm, think("gap"))
    R = ctrl.R
    assert [g.view_end for g in ctrl.segs] == [u.end for u in ctrl.units]
    for g, nxt in zip(ctrl.segs, [*ctrl.segs[1:], None], strict=True):
        stop = nxt.start if nxt is not None else len(R.kv_prefix_visible)
        assert set(R.kv_prefix_visible[g.start:stop]) <= {g.view_end}
    assert R.kv_prefix == [(ctrl.S.seq_id, ctrl.segs[-1].view_end)]
    s.abort()
    assert_pool_full(llm)


# ----------------------------------------------------------------- scheduling
@pytest.mark.parametrize("dtype", DTYPES)
def test_note_and_next_unit_prefill_share_a_step(dtype: str) -> None:
    llm = make_llm(dtype=dtype)
    sched = llm.engine.scheduler
    steps = []
    orig = sched.schedule

    def spy():
        out = orig()
        steps.append({s.seq.seq_id: s.num_new_tokens for s in out.scheduled})
        return out

    sched.schedule = spy
    s = llm.open_session(messages=[], sampling_params=GREEDY, thinking=think("gap"))
    s.append("The quick brown fox. Paris")  # unit 0 complete; note 0 can start
    s.append(" is the capital of France and the lazy dog", prefill=False)
    list(s.think())
    both = [st for st in steps if f"{s.id}#0" in st and f"{s.id}#think" in st]
    assert both, steps  # input prefill of unit 1 and note 0 in one engine step
    assert any(st[f"{s.id}#0"] > 1 for st in both)
    s.abort()
    assert_pool_full(llm)


@pytest.mark.parametrize("dtype", DTYPES)
def test_interleaved_reading_waits_for_each_note(dtype: str) -> None:
    llm = make_llm(dtype=dtype)
    s, ctrl = run_session(llm, think("interleaved"))
    S = ctrl.S
    lens = [u.seg_len for u in ctrl.units]
    assert all(n is not None and n > 0 for n in lens)
    assert S.positions == input_positions(Layout("interleaved"), S.num_tokens, [u.end for u in ctrl.units], lens)
    for g, u in zip(ctrl.segs, ctrl.units, strict=True):  # notes sit right after their unit
        assert ctrl.R.positions[g.start] == S.positions[u.end - 1] + 1
    s.abort()
    assert_pool_full(llm)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["gap", "interleaved", "grouped"])
@pytest.mark.parametrize("depth,passes", [("D1", 0), ("D2", 1), ("D3", 2)])
def test_depth_positions_and_pool(kind: str, depth: str, passes: int, dtype: str) -> None:
    llm = make_llm(dtype=dtype)
    s, ctrl = run_session(llm, think(kind, depth=depth))
    out = s.complete()
    assert len(out.outputs[0].token_ids) == GREEDY.max_tokens
    assert len([g for g in ctrl.segs if g.unit is None]) == passes
    noted = [g.unit for g in ctrl.segs if g.unit is not None]
    # D2/D3: the unit the close completed is read by the integration pass, without a note
    assert noted == list(range(len(ctrl.units) - (1 if passes else 0))), (noted, len(ctrl.units))
    if passes:
        assert ctrl.units[-1].seg_len == 0
        first_pass = next(g for g in ctrl.segs if g.unit is None)
        assert first_pass.view_end == ctrl.view_limit == ctrl.units[-1].end
    S, R = ctrl.S, ctrl.R
    end = ctrl.view_limit
    # the answer prompt and the answer come after all reasoning, and see all of it
    first = max(S.position(end - 1), R.positions[R.num_tokens - 2]) + 1
    assert [S.position(i) for i in range(end, S.num_tokens)] == list(range(first, first + S.num_tokens - end))
    if kind == "gap":
        for g in ctrl.segs:
            if g.unit is not None:
                assert R.positions[g.start] == S.position(g.view_end - 1) + 1
                assert R.positions[g.start:].__len__() and max(
                    p for p in R.positions[g.start:g.start + 40] if p < S.position(g.view_end)
                ) < S.position(g.view_end)
    if kind == "grouped":
        assert R.positions[: ctrl.segs[-1].start] == list(range(ctrl.segs[-1].start))
    assert out.outputs[0].reasoning_content
    assert_pool_full(llm)


def _answer_view(kind: str, depth: str, request: str | None, dtype: str):
    llm = make_llm(dtype=dtype)
    kw = {} if request is None else {"answer_request": request}
    s, ctrl = run_session(llm, think(kind, depth=depth, **kw))
    out = s.complete()
    assert_pool_full(llm)
    return ctrl, out.outputs[0]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind,depth", [("gap", "D1"), ("interleaved", "D2"), ("grouped", "D3")])
def test_answer_request_fills_the_last_user_turn(kind: str, depth: str, dtype: str) -> None:
    """The answer request is computed in R after the last tail and the answer views all of
    it: the answer prompt reads "user\\n<request><|im_end|>\\n<|im_start|>assistant\\n"."""
    ctrl, out = _answer_view(kind, depth, None, dtype)
    S, R, end, tok = ctrl.S, ctrl.R, ctrl.view_limit, ctrl.engine.tokenizer
    req, tail = ctrl.request, ctrl.tail if depth == "D1" else ctrl.pass_tail
    n, a = R.num_tokens, R.num_tokens - 1 - len(req)  # the request is R[a:n-1]
    assert req == tok.encode("Now answer the question in a few words.", add_special_tokens=False)
    assert R.token_ids[a - len(tail):n - 1] == tail + req
    assert R.token_ids[-1] == S.token_ids[end]  # R's held token: a placeholder, never viewed
    assert S.kv_prefix == [(R.seq_id, n - 1)] and R.num_computed_tokens == n - 1
    prompt = S.token_ids[end:S.num_prompt_tokens]  # the chat template suffix
    seen = tok.decode(R.token_ids[a - len(tail):n - 1] + prompt, skip_special_tokens=False)
    assert seen == ("<|im_end|>\n<|im_start|>user\nNow answer the question in a few words."
                    "<|im_end|>\n<|im_start|>assistant\n")
    # positions: the request follows everything before it (grouped: R's own count), the
    # answer prompt follows the request (and the input)
    first = R.positions[a - 1] + 1 if kind == "grouped" else max(S.position(end - 1), R.positions[a - 1]) + 1
    assert R.positions[a:] == list(range(first, first + len(req) + 1))
    start = max(S.position(end - 1), R.positions[n - 2]) + 1
    assert [S.position(i) for i in range(end, S.num_tokens)] == list(range(start, start + S.num_tokens - end))
    assert all(R.kv_prefix_visible[i] == ctrl.segs[-1].view_end for i in range(a, n))
    assert len(out.token_ids) == GREEDY.max_tokens


@pytest.mark.parametrize("dtype", DTYPES)
def test_empty_answer_request_is_the_old_answer_prompt(dtype: str) -> None:
    """``answer_request=""``: nothing is written; R ends with the last tail, S views it all but
    its held last token, the notes are the same."""
    ctrl, out = _answer_view("gap", "D2", "", dtype)
    ref, ref_out = _answer_view("gap", "D2", None, dtype)
    R, S = ctrl.R, ctrl.S
    assert ctrl.request == [] and R.token_ids[-len(ctrl.pass_tail):] == ctrl.pass_tail
    assert S.kv_prefix == [(R.seq_id, R.num_tokens - 1)]
    assert ref.R.token_ids == R.token_ids + ref.request + [S.token_ids[ctrl.view_limit]]
    assert ref.R.positions[: R.num_tokens] == R.positions
    assert out.reasoning_content == ref_out.reasoning_content


@pytest.mark.parametrize("dtype", DTYPES)
def test_budget_forcing_moves_to_the_answer(dtype: str) -> None:
    llm = make_llm(dtype=dtype)
    s, ctrl = run_session(llm, think("gap", depth="D3", max_reasoning_tokens=9))
    out = s.complete()
    assert ctrl.reasoning_tokens == 9
    assert len(out.outputs[0].token_ids) == GREEDY.max_tokens
    assert_pool_full(llm)


# ------------------------------------------------------------ safety of views
@pytest.mark.parametrize("dtype", DTYPES)
def test_rollback_below_a_view_invalidates_its_notes(dtype: str) -> None:
    llm = make_llm(dtype=dtype)
    s, ctrl = run_session(llm, think("gap"), PIECES[:3])
    n_segs = len(ctrl.segs)
    assert n_segs >= 2
    s.replace("The quick brown fox. Paris")  # unit 1 ("Paris is the capital.") is gone
    llm.engine.check_integrity()
    ctrl.check()
    assert len(ctrl.segs) == 1 and ctrl.R.num_tokens <= ctrl.segs[0].start + 40
    s.append(" is big. And the end is near. ")
    list(s.think())
    ctrl.check()
    assert len(ctrl.segs) >= 2
    s.complete()
    assert_pool_full(llm)


# The tiny tokenizer merges " " + "The" into " The": each chunk ending in a space is rolled
# back by one token by the next append (a truncation that adds tokens).
SPACED = ["Tom has 3 apples. ", "The fox buys 4 more. ", "The dog eats 2 of them. ",
          "the lazy dog is quick. "]


def _notes_per_append(llm: LLM, pieces: list[str]) -> tuple[list[int], list[int]]:
    s = llm.open_session(messages=[], sampling_params=GREEDY, thinking=think("gap"))
    ctrl = llm._sessions.thinker(s.id)
    cuts: list[int] = []
    truncate_r = ctrl._truncate_r
    ctrl._truncate_r = lambda cut: (cuts.append(cut), truncate_r(cut))
    notes, kept = [], []
    for p in pieces:
        have = ctrl.S.num_tokens
        kept.append(s.append(p).tokens_kept - have)
        list(s.think())
        llm.engine.check_integrity()
        ctrl.check()
        assert all(u.seg_len for u in ctrl.units)  # every unit noted, none merged or redone
        assert [g.unit for g in ctrl.segs] == list(range(len(ctrl.units)))
        for g, u in zip(ctrl.segs, ctrl.units, strict=True):
            assert g.view_end == u.end and ctrl.R.positions[g.start] == ctrl.S.position(u.end - 1) + 1
        notes.append(len(ctrl.segs))
    assert cuts == []  # R was never rolled back
    s.complete()
    assert_pool_full(llm)
    return notes, kept


@pytest.mark.parametrize("dtype", DTYPES)
def test_chunks_ending_in_a_space_keep_their_notes(dtype: str) -> None:
    """An append that rolls back the previous chunk's trailing space keeps the note on the
    unit ending just before it: the same notes as with chunks ending in a line break."""
    llm = make_llm(dtype=dtype)
    spaced, kept = _notes_per_append(llm, SPACED)
    assert kept[1:] == [-1] * (len(SPACED) - 1)  # each append replaced the trailing space
    lines, kept = _notes_per_append(llm, [p.rstrip(" ") + "\n" for p in SPACED])
    assert kept == [0] * len(SPACED)
    assert spaced == lines == [1, 2, 3, 4]


@pytest.mark.parametrize("dtype", DTYPES)
def test_truncating_to_a_unit_end_without_adding_drops_its_note(dtype: str) -> None:
    """Cut back to a unit's last token and add nothing: that token is held again (it may
    still change), so the note that saw it is rolled back and redone once the input grows."""
    llm = make_llm(dtype=dtype)
    s, ctrl = run_session(llm, think("gap"), SPACED[:2])
    ends = [g.view_end for g in ctrl.segs]
    assert len(ends) == 2
    r = s.replace("Tom has 3 apples. The fox buys 4 more.")  # drops the trailing space only
    assert (r.tokens_kept, r.tokens_added) == (ends[1], 0)
    llm.engine.check_integrity()
    ctrl.check()
    assert [g.view_end for g in ctrl.segs] == [u.end for u in ctrl.units] == ends[:1]
    assert ctrl.R.num_tokens == ctrl.segs[0].start + ctrl.units[0].seg_len  # note 1 rolled back
    s.append(" The dog")  # "." is not the last token any more: unit 1 is noted again
    list(s.think())
    ctrl.check()
    assert [g.view_end for g in ctrl.segs] == [u.end for u in ctrl.units] == ends
    s.complete()
    assert_pool_full(llm)


def test_truncating_below_a_view_is_refused() -> None:
    llm = make_llm()
    s, ctrl = run_session(llm, think("gap"), PIECES[:2])
    with pytest.raises(RuntimeError):
        llm.engine.truncate_input(s.id, 3)
    s.abort()
    assert_pool_full(llm)


@pytest.mark.parametrize("num_blocks", [72, 40])
def test_preemption_and_abort_keep_block_accounting(num_blocks: int) -> None:
    """Three thinking sessions in a pool too small for them (at 40 blocks one session's
    notes alone would outgrow it: budget forcing by memory stops them in time)."""
    llm = make_llm(num_blocks=num_blocks, max_num_batched_tokens=16)
    sessions = []
    for i in range(3):
        s = llm.open_session(messages=[], sampling_params=GREEDY, thinking=think("gap", seed=i))
        sessions.append(s)
    for p in PIECES:
        for s in sessions:
            s.append(p, prefill=False)
        for _ in range(30):
            llm.engine.step()
            llm.engine.check_integrity()
            for s in sessions:
                llm._sessions.thinker(s.id).check()
    assert llm.engine.num_preemptions > 0
    sessions[0].abort()
    llm.engine.check_integrity()
    for s in sessions[1:]:
        llm._sessions.close(s.id)
    for _ in range(3000):  # bounded: a livelock fails here instead of hanging the suite
        if not llm.engine.has_unfinished_requests():
            break
        llm.engine.step()
    else:
        pytest.fail("the sessions never finished")
    outs = [llm._sessions.snapshot(s.id) for s in sessions[1:]]
    assert all(len(o.outputs[0].token_ids) == GREEDY.max_tokens for o in outs)
    for s in sessions[1:]:  # answer and reasoning were resident together
        ctrl = llm._sessions.thinker(s.id)
        bs = llm.engine.kv.block_size
        assert -(-ctrl.R.num_tokens // bs) + -(-ctrl.S.num_tokens // bs) <= num_blocks
    assert_pool_full(llm)


@pytest.mark.parametrize("dtype", DTYPES)
def test_reasoning_deltas_arrive_before_the_input_closes(dtype: str) -> None:
    llm = make_llm(dtype=dtype)
    s = llm.open_session(messages=[], sampling_params=GREEDY, thinking=think("gap"))
    s.append("The quick brown fox. Paris is")
    deltas = [o.outputs[0].new_reasoning_content for o in s.think()]
    assert s.info.state == "open"
    assert "".join(deltas) == s.reasoning_content != ""
    assert all(o.outputs[0].text == "" for o in [])
    outs = list(s.close())
    assert outs[-1].outputs[0].reasoning_content.startswith(s.reasoning_content if False else "".join(deltas))
    assert outs[-1].outputs[0].text
    assert_pool_full(llm)


@pytest.mark.parametrize("dtype", DTYPES)
def test_thinking_off_is_unchanged(dtype: str) -> None:
    llm = make_llm(dtype=dtype)
    a = llm.open_session(messages=[], sampling_params=GREEDY)
    for p in PIECES:
        a.append(p)
    out = a.complete()
    ref = llm.chat([{"role": "user", "content": "".join(PIECES)}], GREEDY)[0]
    assert out.outputs[0].token_ids == ref.outputs[0].token_ids
    assert out.outputs[0].reasoning_content == ""
    assert_pool_full(llm)


def _closing_steps(plan_viewers: bool, monkeypatch,
                   dtype: str) -> tuple[list[dict], list[int], str]:
    """Steps after close of a gap D2 session (R's pass views the input chunk the close
    brings; the answer views the request R writes), with or without same-step viewers."""
    from thinkstream.engine.scheduler import Scheduler

    if not plan_viewers:
        monkeypatch.setattr(Scheduler, "_plan_viewers", lambda self, out, stalled, budget: budget)
    llm = make_llm(dtype=dtype)
    s, ctrl = run_session(llm, think("gap", depth="D2"), PIECES[:-1])
    s.append(PIECES[-1], prefill=False)
    sched, steps = llm.engine.scheduler, []
    orig = sched.schedule

    def spy():
        out = orig()
        steps.append({s.seq.seq_id.split("#")[-1]: s.num_new_tokens for s in out.scheduled})
        return out

    sched.schedule = spy
    out = s.complete()
    ctrl.check()
    assert_pool_full(llm)
    monkeypatch.undo()
    return steps, out.outputs[0].token_ids, out.outputs[0].reasoning_content


@pytest.mark.parametrize("dtype", DTYPES)
def test_viewers_join_the_step_that_computes_their_source(monkeypatch, dtype: str) -> None:
    """The integration pass starts in the step that computes the last input chunk, and the
    answer's first token comes from the step that computes R's answer request: two steps
    fewer after close, the same tokens and reasoning (a step writes every token's KV before
    any attention reads it)."""
    new, answer, reasoning = _closing_steps(True, monkeypatch, dtype)
    old, ref_answer, ref_reasoning = _closing_steps(False, monkeypatch, dtype)
    assert (answer, reasoning) == (ref_answer, ref_reasoning) and reasoning
    assert len(new) == len(old) - 2, (new, old)
    assert new[0].keys() == {"0", "think"} and old[0].keys() == {"0"}  # chunk + pass head
    first_answer = next(i for i, st in enumerate(new) if st.get("0") and i > 0)
    assert "think" in new[first_answer]  # the request and the answer prompt: one step


def test_layout_and_units_by_name() -> None:
    """``ThinkConfig(layout="gap")`` was accepted and failed at the first note
    (``AttributeError: 'str' object has no attribute 'kind'``): a name is its kind's
    default, anything else a ``ValueError`` at construction."""
    cfg = ThinkConfig(layout="interleaved", units="tokens")
    assert cfg.layout == Layout("interleaved") and cfg.units == UnitPolicy("tokens")
    with pytest.raises(ValueError, match="'bogus' is not one of"):
        ThinkConfig(layout="bogus")
    with pytest.raises(ValueError, match="layout must be a Layout"):
        ThinkConfig(layout=48)
