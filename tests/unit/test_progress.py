"""Forward progress under memory pressure (issue: reliability, failures 1 and 2).

A sequence that outgrows the KV pool ends with "length" instead of preempting itself
forever; a request that does not fit now does not block admission of those behind it
(but is passed over a bounded number of times); a thinking session whose input and
reasoning cannot both be resident cuts its thinking and answers."""

from __future__ import annotations

import pytest
from helpers.tiny import tiny_checkpoint

from thinkstream.config import EngineConfig
from thinkstream.engine.llm_engine import LLMEngine, RequestError
from thinkstream.engine.request import Sequence
from thinkstream.engine.scheduler import Scheduler, SchedulerConfig
from thinkstream.kv.manager import KVCacheManager
from thinkstream.llm import LLM
from thinkstream.sampling_params import SamplingParams
from thinkstream.thinking import Layout, ThinkConfig

CKPT = tiny_checkpoint()
UNBOUNDED = SamplingParams(max_tokens=None, ignore_eos=True, temperature=0.0)
# the pool of ``--kv-cache-memory-mb 8`` on the default model: 11 blocks of 16 tokens
TINY_POOL = dict(block_size=16, num_blocks=11, max_num_seqs=16)


def engine(**cfg) -> LLMEngine:
    return LLMEngine(config=EngineConfig(**{**TINY_POOL, **cfg}), checkpoint=CKPT)


def drive(e: LLMEngine, max_steps: int = 2000) -> dict[str, tuple[int, object]]:
    """Step until every request finished; returns request id -> (step it finished, output)."""
    done: dict[str, tuple[int, object]] = {}
    for step in range(max_steps):
        if not e.has_unfinished_requests():
            return done
        for out in e.step():
            if out.finished:
                done[out.request_id] = (step, out)
        e.check_integrity()
    raise AssertionError(f"unfinished after {max_steps} steps: {list(e.requests)}")


# ------------------------------------------------------------ failure 1: output > pool
def test_output_outgrowing_the_pool_ends_with_length_and_others_finish() -> None:
    """The exact case: ``max_tokens=None, ignore_eos=True`` on an 11-block pool."""
    e = engine()
    assert e.max_model_len == 176  # the pool's tokens cap the sequence
    prompt = e.encode_prompt("Once upon a time")
    e.add_request("long", prompt, UNBOUNDED)
    e.add_request("short", [9, 10, 11], SamplingParams(max_tokens=4, ignore_eos=True,
                                                       temperature=0.0))
    done = drive(e)
    long_out = done["long"][1].outputs[0]
    assert long_out.finish_reason == "length"
    assert len(prompt) + len(long_out.token_ids) == 176
    assert done["short"][1].outputs[0].finish_reason == "length"
    assert len(done["short"][1].outputs[0].token_ids) == 4
    assert e.kv.num_free_blocks == e.kv.num_blocks


def test_llm_generate_with_unbounded_output_on_a_tiny_pool_returns() -> None:
    llm = LLM(checkpoint=CKPT, dtype="float32", **TINY_POOL)
    out = llm.generate(["Once upon a time"], UNBOUNDED)[0]
    assert out.outputs[0].finish_reason == "length"
    assert len(out.prompt_token_ids) + len(out.outputs[0].token_ids) == 176
    # the same tokens as a pool large enough not to cap it, up to the cap
    big = LLM(checkpoint=CKPT, dtype="float32", block_size=16, num_blocks=64)
    ref = big.generate(["Once upon a time"], SamplingParams(
        max_tokens=len(out.outputs[0].token_ids), ignore_eos=True, temperature=0.0))[0]
    assert ref.outputs[0].token_ids == out.outputs[0].token_ids


def test_explicit_max_tokens_beyond_the_pool_is_refused() -> None:
    e = engine()
    with pytest.raises(RequestError, match="max_tokens: prompt \\+ max_tokens needs 12 KV blocks"):
        e.add_request(None, [1, 2, 3], SamplingParams(max_tokens=180))
    with pytest.raises(RequestError, match="KV cache's 176 tokens"):
        e.add_request(None, list(range(5, 181)), SamplingParams(max_tokens=1))
    assert not e.requests and e.kv.num_free_blocks == 11


def test_prompt_plus_max_tokens_at_exactly_the_pool_runs_to_the_end() -> None:
    """``max_model_len`` (176 here, as ``/v1/models`` reports it) holds prompt + output:
    the last sampled token is never computed, so 3 + 173 tokens take 175 slots (11 blocks).
    It was refused ("needs 12 KV blocks"): a client asking for ``max_model_len - prompt``,
    as LiteLLM-style clients do, got a 400 the context length message did not explain."""
    e = engine()
    assert e.max_model_len == 176
    e.add_request("r", [1, 2, 3], SamplingParams(max_tokens=173, ignore_eos=True,
                                                 temperature=0.0))
    done = drive(e)
    out = done["r"][1].outputs[0]
    assert (len(out.token_ids), out.finish_reason) == (173, "length")
    assert e.num_preemptions == 0
    e.check_integrity()
    assert e.kv.num_free_blocks == 11
    with pytest.raises(RequestError, match="needs 12 KV blocks"):  # one more is too many
        e.add_request(None, [1, 2, 3], SamplingParams(max_tokens=174))


def test_a_request_that_does_not_fit_now_does_not_block_the_ones_behind_it() -> None:
    """A runs (9 blocks at most), B (4 blocks) cannot be admitted beside it, C (1 block)
    can: C is admitted past B and finishes before A; every output is the one it has alone."""
    params = SamplingParams(max_tokens=30, ignore_eos=True, temperature=0.0)
    reqs = {"A": (list(range(10, 110)), params),
            "B": (list(range(110, 170)), params),
            "C": ([5, 6, 7, 8, 9], SamplingParams(max_tokens=4, ignore_eos=True, temperature=0.0))}
    e = engine()
    for rid, (prompt, p) in reqs.items():
        e.add_request(rid, prompt, p)
    done = drive(e)
    assert done["C"][0] < done["A"][0] < done["B"][0]
    for rid, (prompt, p) in reqs.items():
        alone = engine()
        alone.add_request(rid, prompt, p)
        assert drive(alone)[rid][1].outputs[0].token_ids == done[rid][1].outputs[0].token_ids


# ------------------------------------------------ admission, on the scheduler alone
def _seq(sid: str, n_prompt: int, max_tokens: int = 8) -> Sequence:
    return Sequence(seq_id=sid, request_id=sid, index=0, token_ids=list(range(1, n_prompt + 1)),
                    num_prompt_tokens=n_prompt, params=SamplingParams(), generator=None,
                    max_tokens=max_tokens)


def test_passing_over_a_waiting_sequence_is_bounded() -> None:
    """Blocks: 8 of 4 tokens. R holds 6; W (3 blocks) waits; small ones pass it at most
    ``max_num_seqs`` times, then admission stops at W (no starvation)."""
    kv = KVCacheManager(8, 4, enable_prefix_caching=False)
    sched = Scheduler(SchedulerConfig(max_num_seqs=3, max_num_batched_tokens=64,
                                      max_model_len=32), kv)
    running = _seq("R", 24)
    sched.add(running)
    assert [s.seq.seq_id for s in sched.schedule().scheduled] == ["R"]
    running.num_computed_tokens = 24
    wide = _seq("W", 12)
    sched.add(wide)
    admitted = []
    for i in range(5):
        small = _seq(f"s{i}", 3)
        sched.add(small)
        out = sched.schedule()
        admitted += [s.seq.seq_id for s in out.scheduled if s.seq.seq_id.startswith("s")]
        if small in sched.running:
            sched.finish(small, small.status.FINISHED_STOPPED)
    # W was passed over three times (max_num_seqs), then admission waited for it
    assert admitted == ["s0", "s1", "s2"]
    assert [s.seq_id for s in sched.waiting] == ["W", "s3", "s4"]
    sched.finish(running, running.status.FINISHED_STOPPED)
    out = sched.schedule()
    assert [s.seq.seq_id for s in out.scheduled][:1] == ["W"]


def test_a_viewer_that_can_never_fit_beside_its_source_is_reported_starved() -> None:
    kv = KVCacheManager(6, 4, enable_prefix_caching=False)
    sched = Scheduler(SchedulerConfig(max_num_seqs=4, max_num_batched_tokens=64,
                                      max_model_len=24), kv)
    src, viewer = _seq("S", 16), _seq("V", 12)
    viewer.kv_prefix, viewer.kv_prefix_visible = [("S", 16)], [16] * 12
    sched.add(src)
    sched.schedule()
    src.num_computed_tokens = 16
    sched.add(viewer)
    out = sched.schedule()
    assert out.starved == [viewer] and not out.scheduled
    assert kv.has("S") and not kv.has("V")  # its source was not preempted for it
    assert list(sched.waiting) == [viewer]


def test_the_engine_ends_a_starved_request_with_length() -> None:
    e = engine(num_blocks=6, block_size=4)
    e.add_request("src", list(range(1, 17)), SamplingParams(max_tokens=1, temperature=0.0),
                  input_closed=False)
    while e.requests["src"].seqs[0].num_pending_tokens:
        e.step()
    e.add_request("v", list(range(20, 32)), SamplingParams(max_tokens=4, temperature=0.0))
    v = e.requests["v"].seqs[0]
    v.kv_prefix, v.kv_prefix_visible = [("src#0", 15)], [15] * 12
    outs = e.step()
    assert [(o.request_id, o.outputs[0].finish_reason) for o in outs] == [("v", "length")]
    e.abort("src")
    e.check_integrity()
    assert e.kv.num_free_blocks == e.kv.num_blocks


# -------------------------------------------- failure 2: thinking under a tiny pool
SENTENCES = ["The cat sat on the mat. ", "Paris is big. ", "A dog ran. ", "It was late. ",
             "We ate fish. ", "Rain fell. ", "The sun rose. ", "Birds sang loud. ",
             "Cars went by. ", "Time passed. ", "What is it? "]


@pytest.mark.parametrize("num_blocks", [11, 14, 20])
@pytest.mark.parametrize("layout", ["interleaved", "gap", "grouped"])
def test_thinking_session_appended_sentence_by_sentence_on_a_tiny_pool_answers(
        num_blocks: int, layout: str) -> None:
    """The exact case (interleaved D3, ``pass_tokens`` 64, ``max_reasoning_tokens`` 512,
    11 sentences appended one request at a time, then close) on 11 blocks of 16 tokens,
    and neighbours: the session answers, the pool is full afterwards."""
    llm = LLM(checkpoint=CKPT, dtype="float32", block_size=16, num_blocks=num_blocks, max_num_seqs=16)
    cfg = ThinkConfig(layout=Layout(layout, gap=60), depth="D3", pass_tokens=64,
                      max_reasoning_tokens=512)
    s = llm.open_session(messages=[], thinking=cfg, sampling_params=SamplingParams(
        max_tokens=8, ignore_eos=True, temperature=0.0))
    for text in SENTENCES:
        s.append(text)
        list(s.think())
        llm.engine.check_integrity()
    out = s.complete()
    assert out.finished and out.outputs[0].finish_reason == "length"
    assert len(out.outputs[0].token_ids) == 8
    llm.engine.check_integrity()
    assert llm.engine.kv.num_free_blocks == num_blocks


def test_reasoning_starved_by_input_growth_is_cut_and_the_session_answers() -> None:
    """Grouped layout: the input keeps growing while a note is written until the note and
    the input cannot both be resident; the note is dropped, no other starts, and the
    answer comes (seeing what is left of the reasoning)."""
    llm = LLM(checkpoint=CKPT, dtype="float32", block_size=8, num_blocks=14, max_num_seqs=16)
    cfg = ThinkConfig(layout=Layout("grouped"), note_tokens=20, max_reasoning_tokens=512)
    s = llm.open_session(messages=[], thinking=cfg, sampling_params=SamplingParams(
        max_tokens=2, ignore_eos=True, temperature=0.0))
    ctrl = llm._sessions.thinker(s.id)
    s.append("The cat sat. ")
    s.append("The dog", prefill=False)  # completes the first unit: its note starts
    assert [seg.unit for seg in ctrl.segs] == [0]
    for _ in range(4):
        llm.engine.step()
    s.append("x y z " * 12, prefill=False)  # 87 tokens of input beside the note: too many
    for _ in range(200):
        if ctrl.starved:
            break
        llm.engine.step()
        llm.engine.check_integrity()
    assert ctrl.starved and ctrl.note is None and ctrl.R.num_tokens == 0 and not ctrl.segs
    assert llm.engine.num_preemptions == 0  # no cycle: nothing was preempted for it
    out = s.complete()
    assert out.outputs[0].finish_reason == "length" and len(out.outputs[0].token_ids) == 2
    assert llm.engine.kv.num_free_blocks == 14


def test_idle_open_sessions_give_their_slots_to_a_request() -> None:
    """``max_num_seqs=2`` and three idle open inputs: a completion still runs (an idle input
    is parked to free a slot) and the sessions answer once closed."""
    e = engine(max_num_seqs=2, num_blocks=64)
    for i in range(3):
        e.add_request(f"s{i}", [5 + i, 6, 7, 8], SamplingParams(max_tokens=2, temperature=0.0),
                      input_closed=False)
    for _ in range(6):
        e.step()
    e.add_request("c", [9, 10, 11], SamplingParams(max_tokens=3, ignore_eos=True,
                                                   temperature=0.0))
    done: dict[str, object] = {}
    for _ in range(50):
        done.update({o.request_id: o for o in e.step() if o.finished})
        e.check_integrity()
        if "c" in done:
            break
    assert done["c"].outputs[0].finish_reason == "length"
    for i in range(3):
        e.close_input(f"s{i}")
    done = drive(e)
    assert sorted(done) == ["s0", "s1", "s2"]
    assert e.kv.num_free_blocks == e.kv.num_blocks
