"""The general guard against livelock: random requests (``max_tokens`` unset too, ``n``,
seeds), plain and thinking sessions with random appends, replaces and closes, and aborts,
under pools from the smallest upward. ``check_integrity()`` holds after every step; after
the input stops, a bounded number of steps finishes every request (or it was refused
cleanly when made), and the pool is full again."""

from __future__ import annotations

import pytest
from helpers.tiny import tiny_checkpoint
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from thinkstream.config import EngineConfig
from thinkstream.engine.llm_engine import LLMEngine, RequestError
from thinkstream.sampling_params import ParamError, SamplingParams
from thinkstream.streaming.errors import SessionError
from thinkstream.streaming.sessions import SessionManager
from thinkstream.thinking import Layout, ThinkConfig

CKPT = tiny_checkpoint()
WORDS = ["The cat sat. ", "Paris is big", ". ", "a dog ", "What is it? ", "x y z ", "fish ",
         "\n", "café 東京 ", "Once upon a time "]
REFUSED = (RequestError, ParamError, SessionError)

params_st = st.builds(
    SamplingParams,
    n=st.integers(1, 3),
    temperature=st.sampled_from([0.0, 1.0]),
    seed=st.integers(0, 3),
    max_tokens=st.one_of(st.none(), st.integers(1, 24)),
    ignore_eos=st.booleans(),
)
think_st = st.one_of(st.none(), st.builds(
    ThinkConfig,
    layout=st.sampled_from([Layout("gap", gap=40), Layout("interleaved"), Layout("grouped")]),
    depth=st.sampled_from(["D1", "D2", "D3"]),
    note_tokens=st.integers(1, 8),
    pass_tokens=st.integers(1, 8),
    max_reasoning_tokens=st.integers(1, 40),
    note_head=st.just("<|im_end|>\nNote:"),
))
op_st = st.one_of(
    st.tuples(st.just("request"), st.lists(st.integers(3, 300), min_size=1, max_size=40),
              params_st),
    st.tuples(st.just("open"), st.sampled_from(WORDS), params_st.filter(lambda p: p.n == 1),
              think_st),
    st.tuples(st.just("append"), st.integers(0, 7), st.lists(st.sampled_from(WORDS), min_size=1,
                                                             max_size=4)),
    st.tuples(st.just("replace"), st.integers(0, 7), st.lists(st.sampled_from(WORDS), min_size=1,
                                                              max_size=6)),
    st.tuples(st.just("close"), st.integers(0, 7)),
    st.tuples(st.just("abort"), st.integers(0, 15)),
    st.tuples(st.just("step"), st.integers(1, 6)),
)


def _step(engine: LLMEngine, sessions: SessionManager, opened: list[str]) -> None:
    engine.step()
    engine.check_integrity()
    for sid in opened:
        ctrl = sessions.thinker(sid)
        if ctrl is not None and sid in engine.requests:
            ctrl.check()


@pytest.mark.slow
@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(block_size=st.sampled_from([4, 8, 16]), pool_tokens=st.integers(16, 320),
       ops=st.lists(op_st, min_size=1, max_size=25))
def test_random_work_always_finishes_and_frees_the_pool(block_size: int, pool_tokens: int,
                                                        ops: list[tuple]) -> None:
    num_blocks = max(pool_tokens // block_size, 2)
    engine = LLMEngine(config=EngineConfig(block_size=block_size, num_blocks=num_blocks,
                                           max_num_seqs=6, max_num_batched_tokens=48),
                       checkpoint=CKPT)
    sessions = SessionManager(engine)
    opened: list[str] = []
    ids: list[str] = []
    for op in ops:
        kind = op[0]
        try:
            if kind == "request":
                ids.append(engine.add_request(None, op[1], op[2]))
            elif kind == "open":
                info = sessions.open(None, op[1], [], op[2], thinking=op[3])
                opened.append(info.session_id)
                ids.append(info.session_id)
            elif kind in ("append", "replace", "close") and opened:
                sid = opened[op[1] % len(opened)]
                if kind == "append":
                    sessions.append(sid, "".join(op[2]))
                elif kind == "replace":
                    sessions.replace(sid, "".join(op[2]))
                else:
                    sessions.close(sid)
            elif kind == "abort" and ids:
                rid = ids[op[1] % len(ids)]
                if rid in opened:
                    sessions.abort(rid)
                else:
                    engine.abort(rid)
            elif kind == "step":
                for _ in range(op[1]):
                    _step(engine, sessions, opened)
        except REFUSED:
            pass  # refused cleanly: nothing may have changed (the integrity check says so)
        engine.check_integrity()
    for sid in opened:  # the input ends: every session must answer
        try:
            sessions.close(sid)
        except REFUSED:
            sessions.abort(sid)
    for _ in range(4000):
        if not engine.has_unfinished_requests():
            break
        _step(engine, sessions, opened)
    assert not engine.requests, {rid: [s.status for s in st_.seqs]
                                 for rid, st_ in engine.requests.items()}
    engine.check_integrity()
    assert engine.kv.num_free_blocks == engine.kv.num_blocks
