"""Streaming-input sessions on the tiny model: the answer after close equals a one-shot
request on the final input (greedy, token for token) under any chunking, update mode keeps
the KV of the common prefix, idle sessions give way under memory pressure, policies order
the queue, and the pool is full again after everything.

Tests taking the ``llm`` fixture run twice: in float32 and in bfloat16, where appended
chunks take the short-chunk attention path (a one-shot reference runs in the same dtype)."""

from __future__ import annotations

import random

import pytest
from helpers.tiny import tiny_checkpoint
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from thinkstream.engine.policy import POLICIES
from thinkstream.engine.request import SeqStatus
from thinkstream.llm import LLM
from thinkstream.sampling_params import SamplingParams
from thinkstream.streaming.errors import (
    SequenceGapError,
    SessionClosedError,
    SessionLimitError,
    SessionTooLongError,
)
from thinkstream.streaming.sessions import SessionManager

GREEDY = SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True)
TEXT = "The quick brown fox<|im_end|> jumps over café 東京🙂 the lazy dog. Paris is the capital"
CKPT = tiny_checkpoint()


def make_llm(**cfg) -> LLM:
    base = dict(dtype="float32", block_size=4, num_blocks=256, max_num_seqs=16, max_num_batched_tokens=64)
    base.update(cfg)
    return LLM(checkpoint=CKPT, **base)


@pytest.fixture(scope="module", params=["float32", "bfloat16"])
def llm(request) -> LLM:
    return make_llm(dtype=request.param)


def one_shot(llm: LLM, prompt) -> list[int]:
    return llm.generate([prompt] if isinstance(prompt, str) else prompt, GREEDY)[0].outputs[0].token_ids


def stream(llm: LLM, pieces, **open_kw) -> tuple[list[int], list[int]]:
    s = llm.open_session(sampling_params=GREEDY, **open_kw)
    for p in pieces:
        s.append(p)
        llm.engine.check_integrity()
    out = s.complete()
    return out.prompt_token_ids, out.outputs[0].token_ids


def assert_pool_full(llm: LLM) -> None:
    llm.engine.check_integrity()
    assert not llm.engine.requests
    assert llm.engine.kv.num_free_blocks == llm.engine.kv.num_blocks


def test_one_char_chunks_match_one_shot(llm: LLM) -> None:
    ids, answer = stream(llm, list(TEXT), prompt="")
    assert ids == llm.tokenizer.encode(TEXT)
    assert answer == one_shot(llm, TEXT)
    assert_pool_full(llm)


@settings(max_examples=12, deadline=None)
@given(st.lists(st.integers(0, len(TEXT.encode())), max_size=12))
def test_random_byte_cuts_match_one_shot(llm: LLM, cuts: list[int]) -> None:
    data = TEXT.encode()
    points = sorted(set(cuts) | {0, len(data)})
    ids, answer = stream(llm, [data[a:b] for a, b in zip(points, points[1:], strict=False)])
    assert ids == llm.tokenizer.encode(TEXT)
    assert answer == one_shot(llm, TEXT)
    assert_pool_full(llm)


def test_special_token_split_matches_one_shot(llm: LLM) -> None:
    text = "hello <|im_end|> world"
    ids, answer = stream(llm, ["hello <|im", "_en", "d|", "> world"], prompt="")
    assert ids == llm.tokenizer.encode(text)
    assert answer == one_shot(llm, text)


def test_chat_session_matches_template(llm: LLM) -> None:
    history = [{"role": "system", "content": "Be brief."}]
    ids, answer = stream(llm, ["What is the capi", "tal of Fra", "nce?"], messages=history)
    want = llm.tokenizer.apply_chat_template(
        [*history, {"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True, tokenize=True)
    assert ids == want
    assert answer == one_shot(llm, want)


def test_update_mode_keeps_common_prefix_kv(llm: LLM) -> None:
    engine = llm.engine
    s = llm.open_session("The quick brown fox jumps over the lazy dog again and again",
                         sampling_params=GREEDY)
    llm._prefill(s.id)
    seq = engine.requests[s.id].seqs[0]
    old_ids, old_table = list(seq.token_ids), engine.kv.block_table(seq.seq_id)
    free_before = engine.kv.num_free_blocks
    new_text = "The quick brown fox sleeps"
    result = s.replace(new_text, prefill=False)
    new_ids = llm.tokenizer.encode(new_text)
    keep = next(i for i, (a, b) in enumerate(zip(old_ids, new_ids, strict=False)) if a != b)
    assert result.tokens_kept == keep and seq.token_ids == new_ids
    assert seq.num_computed_tokens == keep  # the KV of the common prefix stays
    bs = engine.kv.block_size
    kept_blocks = -(-keep // bs)
    table = engine.kv.block_table(seq.seq_id)
    assert table[: keep // bs] == old_table[: keep // bs]  # exact block ids kept
    assert len(table) == kept_blocks
    freed = len(old_table) - kept_blocks
    assert engine.kv.num_free_blocks == free_before + freed  # the rolled-back ones, exactly
    engine.check_integrity()
    out = s.complete()
    assert out.outputs[0].token_ids == one_shot(llm, new_text)
    assert_pool_full(llm)


def test_replace_by_a_token_prefix_then_close_answers(llm: LLM) -> None:
    """An update whose ids are a strict prefix of the computed ones leaves every kept token
    computed; the close computes the last one again (the answer's first token is sampled
    from its logits) instead of finding nothing to compute and never answering."""
    s = llm.open_session(TEXT, sampling_params=GREEDY)
    llm._prefill(s.id)
    seq = llm.engine.requests[s.id].seqs[0]
    cut = next(i for i in range(40, len(TEXT))
               if llm.tokenizer.encode(TEXT[:i]) == seq.token_ids[: len(llm.tokenizer.encode(TEXT[:i]))])
    short = TEXT[:cut]
    n = len(llm.tokenizer.encode(short))
    assert seq.num_computed_tokens > n  # the cut drops computed tokens
    s.replace(short)
    assert seq.num_computed_tokens == n  # every kept token computed
    answer = s.close()
    assert seq.num_computed_tokens == n - 1 and seq.num_pending_tokens == 1
    *_, out = answer
    assert out.prompt_token_ids == llm.tokenizer.encode(short)
    assert out.outputs[0].token_ids == one_shot(llm, short)
    assert_pool_full(llm)


def test_a_request_that_cannot_progress_raises_instead_of_spinning(llm: LLM) -> None:
    """A closed input with nothing left to compute (state no engine path produces) makes
    ``LLM`` raise rather than step forever, and the request is aborted."""
    s = llm.open_session(TEXT, sampling_params=GREEDY)
    llm._prefill(s.id)
    answer = s.close()
    seq = llm.engine.requests[s.id].seqs[0]
    seq.num_computed_tokens = seq.num_tokens  # as if its last token's logits were lost
    with pytest.raises(RuntimeError, match="cannot progress"):
        list(answer)
    assert_pool_full(llm)


@settings(max_examples=10, deadline=None)
@given(st.integers(0, len(TEXT)), st.integers(0, len(TEXT)), st.text("abc 東<|>", max_size=12))
def test_replace_middle_matches_one_shot(llm: LLM, a: int, b: int, middle: str) -> None:
    a, b = min(a, b), max(a, b)
    new = TEXT[:a] + middle + TEXT[b:]
    assume(new)  # an empty input is refused at close (SessionLimitError), as it should be
    s = llm.open_session(TEXT, sampling_params=GREEDY)
    llm._prefill(s.id)
    s.replace(new)
    out = s.complete()
    assert out.prompt_token_ids == llm.tokenizer.encode(new)
    assert out.outputs[0].token_ids == one_shot(llm, new)
    assert_pool_full(llm)


def test_token_sessions(llm: LLM) -> None:
    ids, answer = stream(llm, [[7, 8, 9], [10], [11, 12, 13, 14, 15]], prompt=[5, 6])
    assert ids == list(range(5, 16)) and ids[:2] == [5, 6]
    assert answer == one_shot(llm, [list(range(5, 16))])


def test_idle_sessions_give_way_and_recompute_the_same() -> None:
    # 24 blocks of 4 tokens: two idle sessions hold most of them; ordinary requests still run.
    llm = make_llm(num_blocks=24, max_num_batched_tokens=256)
    engine = llm.engine
    text = "The quick brown fox jumps over the lazy dog. " * 2
    # distinct texts, so the two sessions share no prefix blocks
    sessions = [llm.open_session(f"{i}: {text}", sampling_params=GREEDY) for i in range(2)]
    for s in sessions:
        s.append(f" session {s.id}.")
    held = engine.kv.num_blocks - engine.kv.num_free_blocks
    assert held >= 16
    prompts = [[5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16 + i] for i in range(3)]
    outs = llm.generate([list(p) for p in prompts], SamplingParams(temperature=0, max_tokens=20, ignore_eos=True))
    assert all(o.outputs[0].finish_reason == "length" for o in outs)
    assert engine.scheduler.parked  # an idle session was preempted and parked
    parked = engine.scheduler.parked[0]
    assert parked.num_computed_tokens == 0 and parked.status == SeqStatus.WAITING
    for i, s in enumerate(sessions):  # the next chunk recomputes; the answer is unchanged
        s.append(" The end.")
        out = s.complete()
        assert out.outputs[0].token_ids == one_shot(llm, f"{i}: {text} session {s.id}. The end.")
    assert_pool_full(llm)


def test_policies_order_the_queue() -> None:
    engine = make_llm().engine
    mgr = SessionManager(engine)
    for i, n in enumerate([3, 9, 6]):
        mgr.open(f"s{i}", [5 + i] * n, params=GREEDY)  # distinct: no shared prefix
    engine.step()
    mgr.append("s0", [6])  # newest chunk: s0
    mgr.close("s2")  # s2 finished input
    seqs = {s.request_id: s for s in engine.scheduler.sequences()}
    order = {name: [s.request_id for s in sorted(seqs.values(), key=key)]
             for name, key in POLICIES.items()}
    assert order["fcfs"] == ["s2", "s0", "s1"]  # closed input first, then arrival
    assert order["lca"] == ["s1", "s0", "s2"]  # oldest newest-input first
    assert order["mcf"] == ["s1", "s2", "s0"]  # most computed first (8, 5, 2)
    for name in ("s0", "s1", "s2"):
        mgr.abort(name)
    assert engine.kv.num_free_blocks == engine.kv.num_blocks


def test_fcfs_runs_closed_sessions_first() -> None:
    engine = make_llm(max_num_batched_tokens=8).engine
    mgr = SessionManager(engine)
    mgr.open("a", [5] * 30, params=GREEDY)
    mgr.open("b", [6] * 30, params=GREEDY)
    mgr.close("b")
    out = engine.scheduler.schedule()
    assert [s.seq.request_id for s in out.scheduled] == ["b"]  # the whole budget goes to b
    engine.scheduler.commit(out)
    mgr.abort("a"), mgr.abort("b")


def test_closed_session_refuses_input_and_limits(llm: LLM) -> None:
    s = llm.open_session("abc", sampling_params=GREEDY)
    s.complete()
    with pytest.raises(SessionClosedError):
        s.append("more")
    mgr = SessionManager(llm.engine, max_input_tokens=10)
    mgr.open("tiny", "ab", params=GREEDY)
    with pytest.raises(SessionLimitError) as err:
        mgr.append("tiny", "a long text that is far more than ten tokens")
    assert err.value.status == 413
    assert mgr.info("tiny").tokens_received == 2  # refused whole: nothing changed
    mgr.abort("tiny")
    assert_pool_full(llm)


def test_a_text_too_long_to_fit_is_refused_before_it_is_tokenized(monkeypatch) -> None:
    """A replace (or an append) whose text has more characters than the session's tokens
    could ever hold (2x the longest vocabulary entry per token) is a 413 at once: a few
    megabytes were tokenized on the engine thread first (seconds of every request held)."""
    llm = make_llm(num_blocks=64)
    mgr = SessionManager(llm.engine, max_input_tokens=10)
    mgr.open("long", "ab", params=GREEDY)
    vocab = llm.tokenizer.backend.get_vocab(with_added_tokens=True)
    most = 2 * max(map(len, vocab)) * 10  # characters 10 tokens can stand for, at most

    def no_tokenizing(*args, **kwargs):
        raise AssertionError("the text was tokenized")

    monkeypatch.setattr(llm.tokenizer.backend, "encode_batch", no_tokenizing)
    for update, text in ((mgr.replace, "a" * (most + 1)), (mgr.append, "a" * (most - 1))):
        with pytest.raises(SessionLimitError) as err:
            update("long", text)
        assert (err.value.status, err.value.code) == (413, "session_tokens_exceeded")
        assert str(err.value).startswith("input: ")
    monkeypatch.undo()
    with pytest.raises(SessionLimitError, match="exceed the session limit of 10"):
        mgr.replace("long", "a b " * (most // 4))  # may fit by its length: tokenized, refused
    assert mgr.info("long").tokens_received == 2  # refused whole: nothing changed
    mgr.replace("long", "abc")
    assert mgr.abort("long")
    assert_pool_full(llm)


def test_fifty_sessions_random_aborts_leave_pool_full() -> None:
    llm = make_llm(num_blocks=64, max_num_seqs=64)
    engine, mgr = llm.engine, SessionManager(llm.engine)
    rng = random.Random(0)
    live = [mgr.open(f"s{i}", "", params=GREEDY).session_id for i in range(50)]
    for _ in range(300):
        sid = rng.choice(live) if live else None
        if sid is None:
            break
        action = rng.random()
        if action < 0.6:
            mgr.append(sid, rng.choice(["abc ", "東京 ", "fox<|im", "_end|> ", "dog. "]))
        elif action < 0.7:
            mgr.replace(sid, "replaced text")
        elif action < 0.85:
            mgr.abort(sid)
            live.remove(sid)
        elif mgr.info(sid).tokens_received:
            mgr.close(sid)
            live.remove(sid)
        engine.step()
        engine.check_integrity()
    for sid in live:
        mgr.abort(sid)
    while engine.has_unfinished_requests():
        engine.step()
    assert_pool_full(llm)


def test_close_with_last_chunk_is_one_step(llm: LLM) -> None:
    """``close(data)``: the last chunk and the answer's first token come from one step, and
    the answer equals a one-shot request; a numbered last chunk moves the close's number."""
    s = llm.open_session("", sampling_params=GREEDY)
    s.append(TEXT[:40])
    steps = []
    orig = llm.engine.step
    llm.engine.step = lambda: steps.append(1) or orig()  # type: ignore[method-assign]
    try:
        outs = list(s.close(TEXT[40:]))
    finally:
        llm.engine.step = orig  # type: ignore[method-assign]
    first = next(i for i, o in enumerate(outs) if o.outputs[0].token_ids)
    assert first == 0 and len(outs[0].outputs[0].token_ids) == 1
    assert len(steps) == GREEDY.max_tokens
    assert outs[-1].prompt_token_ids == llm.tokenizer.encode(TEXT)
    assert outs[-1].outputs[0].token_ids == one_shot(llm, TEXT)
    n = llm.open_session("", sampling_params=GREEDY)
    n.append("The quick ", seq=0)
    with pytest.raises(SequenceGapError):
        llm._sessions.close(n.id, seq=2, data="brown")  # the chunk must be number 1
    llm._sessions.close(n.id, seq=1, data="brown fox")
    assert n.info.state == "answering" and n.info.next_seq == 2
    list(llm._follow(n.id))
    assert_pool_full(llm)


def test_an_update_that_could_never_be_answered_is_refused_at_once() -> None:
    """A chat session with ``max_tokens`` on a pool of 64 tokens: the append after which
    even an immediate close (the template's end added) + max_tokens could not fit is a 413
    at once, naming the exact count, and changes nothing; a close (with a last chunk, whose
    count includes the template's end) then answers in full. Replace likewise."""
    llm = make_llm(num_blocks=16)  # 16 blocks of 4: 64 tokens (context 512)
    mgr = SessionManager(llm.engine)
    params = SamplingParams(temperature=0.0, max_tokens=20, ignore_eos=True)
    messages = [{"role": "system", "content": "Be brief."}]
    mgr.open("s", messages=messages, params=params)

    def final(content: str) -> int:  # the exact ids of the input closed on ``content``
        return len(llm.tokenizer.encode_chat([*messages, {"role": "user", "content": content}], True))

    content = ""
    while final(content + "fox jumps ") + 20 <= 64:
        mgr.append("s", "fox jumps ")
        content += "fox jumps "
    before = mgr.info("s")
    n = final(content + "fox jumps ")
    with pytest.raises(SessionTooLongError) as err:
        mgr.append("s", "fox jumps ")
    assert str(err.value) == (f"input: {n} tokens when closed + max_tokens 20 need "
                              f"{-(-(n + 20) // 4)} KV blocks but the cache has 16")
    assert (err.value.status, err.value.param, err.value.code) == (413, "input", "session_tokens_exceeded")
    with pytest.raises(SessionTooLongError):
        mgr.replace("s", content + "fox jumps ")
    assert mgr.info("s").tokens_received == before.tokens_received
    assert mgr.info("s").next_seq == before.next_seq  # refused whole: the session is as it was
    big = "fox jumps " * 3  # a close's own chunk counts, the template's end as its tokens
    with pytest.raises(SessionTooLongError, match=f"^input: {final(content + big)} tokens at close "):
        mgr.close("s", data=big)
    assert mgr.info("s").next_seq == before.next_seq
    last = "fox"
    assert final(content + last) + 20 <= 64  # fits exactly as counted: no over-count at close
    mgr.close("s", data=last)
    while llm.engine.has_unfinished_requests():
        llm.engine.step()
    out = mgr.snapshot("s")
    assert out.prompt_token_ids == llm.tokenizer.encode_chat(
        [*messages, {"role": "user", "content": content + last}], True)
    assert len(out.outputs[0].token_ids) == 20
    assert_pool_full(llm)


def test_abort_mid_answer_ends_the_answer_stream(llm: LLM) -> None:
    """``Session.abort()`` while its answer streams ends the stream: it raised "cannot
    progress" once every other request had finished (the aborted one was never going to)."""
    other = llm.stream("Paris is", SamplingParams(temperature=0, max_tokens=6, ignore_eos=True))
    s = llm.open_session("The quick brown fox", sampling_params=GREEDY)
    answer = s.close()
    first = next(answer)
    assert first.request_id == s.id and not first.finished
    assert s.abort() and s.info.state == "aborted"
    assert list(answer) == []
    assert len(list(other)[-1].outputs[0].token_ids) == 6  # the other request went on
    assert_pool_full(llm)
