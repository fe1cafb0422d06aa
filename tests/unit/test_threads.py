"""The threads API and the memory rules of parallel generation, on the tiny model: fork /
join sync and async give the same tokens, nesting and the caps, seeded paths that do not
depend on the batch, exact tokens under preemption in a tiny pool, the prompt's blocks held
once, and every abort (parent mid-fork, child mid-decode, summary mid-join) leaving the
pool full."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest
from helpers.parallel import PROMPT, run_paths
from helpers.tiny import tiny_checkpoint

from thinkstream.async_llm import AsyncLLM
from thinkstream.config import EngineConfig
from thinkstream.engine.llm_engine import LLMEngine
from thinkstream.llm import LLM
from thinkstream.parallel.api import AsyncThreads
from thinkstream.parallel.config import ParallelConfig, ThreadLimits
from thinkstream.parallel.paths import start_paths
from thinkstream.sampling_params import ParamError, SamplingParams

HOT = SamplingParams(temperature=6.0, seed=11, max_tokens=6, ignore_eos=True)
CFG = ParallelConfig(paths=4, path_tokens=6, path_prompts=("A:", "BB:"), summary_prompt=" so:")


def _tree_tokens(t) -> tuple[list[list[int]], list[int]]:
    """Run a two-level tree: 3 children of the root, the first forks 2 of its own and joins
    them, then the root joins all 3 (sequential layout) and answers."""
    kids = t.fork(t.root, ["A:", "B", "C:"], max_tokens=4)
    grand = t.fork(kids[0], ["x", "y"], max_tokens=3)
    t.wait(grand)
    t.join(kids[0], grand, " so", max_tokens=2)  # kids[0] samples 2 more after the join
    t.wait(kids[1:])
    return kids, grand


def test_sync_threads_nest_and_join() -> None:
    llm = LLM(checkpoint=tiny_checkpoint(), dtype="float32", num_blocks=64, block_size=4)
    t = llm.threads(PROMPT, HOT)
    kids, grand = _tree_tokens(t)
    t.wait(kids)
    before = len(kids[0].token_ids)
    t.join(t.root, kids, " Done:", layout="sequential")
    out = t.result()
    assert len(out.outputs[0].token_ids) == 6
    assert [len(g.token_ids) for g in grand] == [3, 3]
    assert all(len(k.token_ids) == 4 for k in kids[1:])
    so = llm.tokenizer.encode(" so", add_special_tokens=False)
    assert before == len(so) + 2  # forked at once: " so" and 2 sampled after its join
    llm.engine.check_integrity()
    assert llm.engine.kv.num_free_blocks == llm.engine.kv.num_blocks
    # the caps
    t = llm.threads(PROMPT, HOT, ThreadLimits(max_width=2, max_depth=1))
    with pytest.raises(ParamError) as width:
        t.fork(t.root, ["a", "b", "c"])
    assert width.value.param == "width"
    kid = t.fork(t.root, ["a"])[0]
    with pytest.raises(ParamError) as depth:
        t.fork(kid, ["b"])
    assert depth.value.param == "depth"
    with pytest.raises(ParamError):
        t.join(t.root, [kid])  # not done yet
    assert t.abort()
    llm.engine.check_integrity()
    assert llm.engine.kv.num_free_blocks == llm.engine.kv.num_blocks


def test_async_threads_give_the_sync_tokens() -> None:
    def sync():
        llm = LLM(checkpoint=tiny_checkpoint(), dtype="float32", num_blocks=64, block_size=4)
        t = llm.threads(PROMPT, HOT)
        kids = t.fork(t.root, ["A:", "B"], max_tokens=5)
        t.wait(kids)
        t.join(t.root, kids, " so")
        return [k.token_ids for k in kids], t.result().outputs[0].token_ids

    async def run(llm):
        t = await AsyncThreads.open(llm, PROMPT, HOT)
        kids = await t.fork(t.root, ["A:", "B"], max_tokens=5)
        await t.wait(kids)
        await t.join(t.root, kids, " so")
        return [k.token_ids for k in kids], (await t.result()).outputs[0].token_ids

    llm = AsyncLLM(LLMEngine(checkpoint=tiny_checkpoint(),
                             config=EngineConfig(num_blocks=64, block_size=4)))
    try:
        assert asyncio.run(run(llm)) == sync()
    finally:
        llm.shutdown()


def test_seeded_paths_do_not_depend_on_the_batch() -> None:
    ckpt = tiny_checkpoint()
    alone, paths, _ = run_paths(ckpt, CFG, HOT)
    engine = LLMEngine(checkpoint=ckpt, config=EngineConfig(num_blocks=64, block_size=4))
    for i in range(3):  # other requests in the same batches, before and beside
        engine.add_request(f"other{i}", [7 + i, 9, 11], SamplingParams(max_tokens=12, seed=i))
    state = engine.make_request("r", PROMPT, HOT, input_closed=False)
    engine.add(state)
    busy_paths = start_paths(engine, state, CFG)
    busy = None
    while busy is None:
        busy = next((o for o in engine.step() if o.request_id == "r" and o.finished), None)
    assert [p.token_ids for p in busy_paths.paths] == [p.token_ids for p in paths.paths]
    assert busy.outputs[0].token_ids == alone.outputs[0].token_ids
    assert len({tuple(p.token_ids) for p in paths.paths}) > 1  # distinct seeds, distinct paths


def test_preemption_in_a_tiny_pool_gives_the_same_tokens() -> None:
    ckpt = tiny_checkpoint()
    roomy, paths, _ = run_paths(ckpt, CFG, HOT)
    tight, tpaths, engine = run_paths(ckpt, CFG, HOT, num_blocks=18, others=2)
    assert engine.num_preemptions > 0
    assert [p.token_ids for p in tpaths.paths] == [p.token_ids for p in paths.paths]
    assert tight.outputs[0].token_ids == roomy.outputs[0].token_ids


def test_the_prompt_is_held_once_whatever_the_number_of_paths() -> None:
    ckpt = tiny_checkpoint()
    prompt = list(range(10, 42))  # 8 blocks of 4
    peaks = []
    for n in (1, 8):
        engine = LLMEngine(checkpoint=ckpt, config=EngineConfig(num_blocks=128, block_size=4))
        state = engine.make_request("r", prompt, HOT, input_closed=False)
        engine.add(state)
        start_paths(engine, state, ParallelConfig(paths=n, path_tokens=4, merge="none"))
        peak = 0
        while "r" in engine.requests:
            engine.step()
            peak = max(peak, engine.kv.num_blocks - engine.kv.num_free_blocks)
        peaks.append(peak)
    # the prompt's 8 blocks once (31 tokens computed, the last one each path's own); each
    # path one block of its own (its fork token and 3 tokens computed when "none" ends it)
    assert peaks == [8 + 1, 8 + 8 * 1]


@pytest.mark.parametrize("when", ["parent mid-fork", "child mid-decode", "summary mid-join"])
def test_abort_anywhere_leaves_the_pool_full(when: str) -> None:
    engine = LLMEngine(checkpoint=tiny_checkpoint(), config=EngineConfig(num_blocks=64,
                                                                         block_size=4))
    state = engine.make_request("r", PROMPT, HOT, input_closed=False)
    engine.add(state)
    paths = start_paths(engine, state, CFG)
    root = state.seqs[0]
    for _ in range(200):
        if when == "parent mid-fork" and root.num_computed_tokens > 0:
            break
        if when == "child mid-decode" and paths.paths[0].seq.num_output_tokens > 2:
            break
        if when == "summary mid-join" and root.num_output_tokens > 1:
            break
        engine.step()
        engine.check_integrity()
    else:
        raise AssertionError(f"never reached {when}")
    assert engine.kv.num_free_blocks < engine.kv.num_blocks
    assert engine.abort("r")
    engine.check_integrity()
    assert engine.kv.num_free_blocks == engine.kv.num_blocks
    assert not engine.has_unfinished_requests()


def test_the_children_of_a_fork_are_admitted_together() -> None:
    """With the pool short, a fork's children wait together until all of them fit."""
    engine = LLMEngine(checkpoint=tiny_checkpoint(), config=EngineConfig(num_blocks=16,
                                                                         block_size=4))
    engine.add_request("big", list(range(60, 96)), SamplingParams(max_tokens=8, ignore_eos=True))
    engine.step()  # the big request holds 9 of 16 blocks (36 tokens) and grows
    state = engine.make_request("r", PROMPT, HOT, input_closed=False)
    engine.add(state)
    paths = start_paths(engine, state, ParallelConfig(paths=4, path_tokens=3, merge="none",
                                                      path_prompts=("Path one:",)))
    kids = [p.seq for p in paths.paths]
    seen = []
    while "r" in engine.requests:
        engine.step()
        engine.check_integrity()
        seen.append(sum(k in engine.scheduler.running for k in kids))
    first = seen.index(4)  # all four admitted in one step ...
    assert first > 0 and set(seen[:first]) == {0}  # ... after waiting, none of them alone


def test_paths_after_a_prompt_cached_whole() -> None:
    """The second request on a prompt: its sequence is a full prefix-cache hit and computes
    nothing in its first step (its paths, first in line, wait for it): not a stall."""
    llm = LLM(checkpoint=tiny_checkpoint(), num_blocks=64, block_size=4)
    prompt = list(range(20, 41))  # all but the held last token: 5 blocks, cached by the first run
    outs = [llm.generate(prompt, HOT, parallel={"paths": 2, "path_tokens": 3})[0]
            for _ in range(2)]
    assert outs[0].outputs[0].token_ids == outs[1].outputs[0].token_ids
    assert outs[0].outputs[0].paths == outs[1].outputs[0].paths


COOL = SamplingParams(temperature=0, max_tokens=5, ignore_eos=True)


def _joined(llm: LLM, layout: str, into: str):
    t = llm.threads(PROMPT, COOL)
    kids = t.fork(t.root, ["A:", "BB: x"], max_tokens=4)
    t.wait(kids)
    return t, t.join(t.root, kids, " so", layout=layout, into=into)


@pytest.mark.parametrize("layout", ["parallel", "sequential"])
def test_join_into_a_new_summary_reads_what_the_parent_would(layout: str) -> None:
    """A summary thread gets the parent's joined context (same greedy tokens), its blocks
    are freed when it ends, the parent stays paused for another join, and the pool is full
    after the request."""
    llm = LLM(checkpoint=tiny_checkpoint(), dtype="float32", num_blocks=64, block_size=4)
    t, _ = _joined(llm, layout, "parent")
    want = t.result().outputs[0].token_ids
    assert len(want) == 5
    t, s = _joined(llm, layout, "new")
    t.wait([s])
    assert s.summary and s.token_ids == want
    assert s.seq.status.finished and not llm.engine.kv.has(s.seq.seq_id)  # freed at its end
    assert not t.root.seq.status.finished  # the parent is paused, not continued
    s2 = t.join(t.root, t.root.children, " so", layout=layout, into="new",
                params=dataclasses.replace(COOL, max_tokens=3))
    t.wait([s2])
    assert s2.token_ids == want[:3]  # a second summary over the same children
    llm.engine.check_integrity()
    with pytest.raises(ParamError) as bad:
        t.join(t.root, t.root.children, into="sideways")
    assert bad.value.param == "into"
    assert t.abort()
    llm.engine.check_integrity()
    assert llm.engine.kv.num_free_blocks == llm.engine.kv.num_blocks


def test_abort_mid_join_into_a_new_summary_leaves_the_pool_full() -> None:
    llm = LLM(checkpoint=tiny_checkpoint(), dtype="float32", num_blocks=64, block_size=4)
    t, s = _joined(llm, "parallel", "new")
    for _ in range(50):
        if s.seq.num_output_tokens > 1:
            break
        llm.engine.step()
        llm.engine.check_integrity()
    assert s.seq.num_output_tokens > 1 and not s.done
    assert t.abort()
    llm.engine.check_integrity()
    assert llm.engine.kv.num_free_blocks == llm.engine.kv.num_blocks
    assert not llm.engine.has_unfinished_requests()


def test_async_join_into_a_new_summary_gives_the_sync_tokens() -> None:
    sync_llm = LLM(checkpoint=tiny_checkpoint(), dtype="float32", num_blocks=64, block_size=4)
    t, s = _joined(sync_llm, "sequential", "new")
    t.wait([s])
    want = s.token_ids

    async def run(llm):
        t = await AsyncThreads.open(llm, PROMPT, COOL)
        kids = await t.fork(t.root, ["A:", "BB: x"], max_tokens=4)
        await t.wait(kids)
        s = await t.join(t.root, kids, " so", layout="sequential", into="new")
        await t.wait([s])
        await t.abort()
        return s.token_ids

    llm = AsyncLLM(LLMEngine(checkpoint=tiny_checkpoint(),
                             config=EngineConfig(num_blocks=64, block_size=4, dtype="float32")))
    try:
        assert asyncio.run(run(llm)) == want
    finally:
        llm.shutdown()


@pytest.mark.parametrize("include", [False, True])
def test_children_stop_on_their_stop_strings(include: bool) -> None:
    """Child 0 samples ':', '\\n', '\\n', '?', '+', ... (seeded): "?+" spans two tokens and
    ends it at '+' (kept, its text cut); child 1 never meets it and runs its budget. The
    join after reads both, and the pool is full at the end."""
    llm = LLM(checkpoint=tiny_checkpoint(), dtype="float32", num_blocks=64, block_size=4)
    t = llm.threads(PROMPT, HOT)
    stop = dataclasses.replace(HOT, stop=("?+",), include_stop_str_in_output=include)
    kids = t.fork(t.root, ["A:", "BB: x"], stop, max_tokens=8)
    t.wait(kids)
    assert kids[0].token_ids == [28, 201, 201, 33, 13]
    assert t.text(kids[0]) == (":\n\n?+" if include else ":\n\n")
    assert kids[0].stop_str == "?+" and kids[1].stop_str is None
    assert len(kids[1].token_ids) == 8
    t.join(t.root, kids, " so")
    assert len(t.result().outputs[0].token_ids) == 6
    llm.engine.check_integrity()
    assert llm.engine.kv.num_free_blocks == llm.engine.kv.num_blocks


def test_a_bad_fork_or_join_is_refused_before_anything_runs() -> None:
    """Suffix ids outside the vocabulary and params the model cannot serve are refused by
    fork / join, as a request's are by add_request: they used to pass and make the next
    step raise (IndexError in the embedding, topk out of range), failing every request in
    its batch; another request goes on untouched."""
    llm = LLM(checkpoint=tiny_checkpoint(), dtype="float32", num_blocks=64, block_size=4)
    engine = llm.engine
    engine.add_request("other", [5, 6, 7], SamplingParams(temperature=0, max_tokens=3))
    t = llm.threads(PROMPT, HOT)
    for suffixes, params, param in (([[320]], None, "suffix"), ([[-1]], None, "suffix"),
                                    ([[1, 2.5]], None, "suffix"),
                                    (["a"], SamplingParams(logprobs=321), "logprobs"),
                                    (["a"], SamplingParams(logit_bias={320: 1}), "logit_bias")):
        with pytest.raises(ParamError) as err:
            t.fork(t.root, suffixes, params)
        assert err.value.param == param
        assert not t.root.children and not t.root.seq.status.finished
    kid = t.fork(t.root, [[1, 2]], max_tokens=2)[0]
    t.wait([kid])
    with pytest.raises(ParamError) as err:
        t.join(t.root, [kid], [320])
    assert err.value.param == "suffix"
    with pytest.raises(ParamError) as err:
        t.join(t.root, [kid], "x", into="new", params=SamplingParams(prompt_logprobs=321))
    assert err.value.param == "prompt_logprobs"
    t.join(t.root, [kid], " so:")
    assert len(t.result().outputs[0].token_ids) == 6
    assert "other" not in engine.requests  # finished beside the tree, never failed
    engine.check_integrity()
    assert engine.kv.num_free_blocks == engine.kv.num_blocks


def test_a_tree_that_could_never_run_is_refused() -> None:
    """A request's threads stay resident until it ends, so a tree that cannot fit the
    engine's sequence slots or KV pool at once would wait forever (or answer nothing): it
    is refused, naming the setting, with nothing left in the engine."""
    llm = LLM(checkpoint=tiny_checkpoint(), dtype="float32", num_blocks=16, block_size=4,
              max_num_seqs=4)
    for parallel, param in [({"paths": 4, "path_tokens": 2}, "parallel.paths"),
                            ({"paths": 2, "path_tokens": 40}, "parallel.path_tokens")]:
        with pytest.raises(ParamError) as err:
            llm.generate([PROMPT, PROMPT], HOT, parallel=parallel)
        assert err.value.param == param
        assert not llm.engine.requests
    out = llm.generate(PROMPT, HOT, parallel={"paths": 3, "path_tokens": 2})[0].outputs[0]
    assert out.num_path_tokens == 6 and len(out.token_ids) == 6
    t = llm.threads(PROMPT, HOT)
    kids = t.fork(t.root, ["a", "b"], max_tokens=2)
    with pytest.raises(ParamError) as err:  # root, 2 children, 2 more: 5 of 4 slots
        t.fork(kids[0], ["c", "d"], max_tokens=2)
    assert err.value.param == "width"
    t.wait(kids)
    with pytest.raises(ParamError) as err:  # a summary of 60 tokens: over the 16 blocks
        t.join(t.root, kids, into="new", max_tokens=60)
    assert err.value.param == "max_tokens"
    s = t.join(t.root, kids, " so", into="new", max_tokens=2)
    t.wait([s])
    assert len(s.token_ids) == 2
    assert t.abort()
    llm.engine.check_integrity()
    assert llm.engine.kv.num_free_blocks == llm.engine.kv.num_blocks


def test_requests_whose_trees_fit_one_at_a_time_all_finish() -> None:
    """Two requests whose paths fit the engine's slots one tree at a time: a root waiting
    for its paths gives its slot to the other tree's paths (parked, an idle open input),
    and a root under running paths is never parked for the other root (its paths would
    stall and recompute, over and over): both finish with the tokens each makes alone."""
    ckpt, cfg = tiny_checkpoint(), ParallelConfig(paths=4, path_tokens=6)
    prompts = {"a": PROMPT, "b": list(range(60, 75))}
    engine = LLMEngine(checkpoint=ckpt, config=EngineConfig(num_blocks=64, block_size=4,
                                                            max_num_seqs=5))
    for rid, prompt in prompts.items():
        state = engine.make_request(rid, prompt, HOT, input_closed=False)
        engine.add(state)
        start_paths(engine, state, cfg)
    finals = {}
    for _ in range(100):
        finals.update({o.request_id: o for o in engine.step() if o.finished})
        engine.check_integrity()
        if not engine.has_unfinished_requests():
            break
    assert set(finals) == {"a", "b"}
    assert engine.num_preemptions == 1  # the root of "b", once, while "a" ran
    assert engine.kv.num_free_blocks == engine.kv.num_blocks
    for rid, prompt in prompts.items():
        alone = run_paths(ckpt, cfg, HOT, prompt=prompt)[0].outputs[0]
        assert finals[rid].outputs[0].token_ids == alone.token_ids
        assert finals[rid].outputs[0].paths == alone.paths


@pytest.mark.parametrize("seed", range(4))
def test_random_parallel_requests_under_tight_slots_and_pools_all_finish(seed: int) -> None:
    """Parallel-paths requests (refused when their tree could never run), plain ones and
    n > 1 beside them, a few aborts, under small pools and few sequence slots: every
    request ends and the pool is full again (roots once held slots each other's paths
    needed, forever)."""
    import random

    rng = random.Random(seed)
    for _ in range(10):
        engine = LLMEngine(checkpoint=tiny_checkpoint(), config=EngineConfig(
            num_blocks=rng.choice([12, 20, 32]), block_size=4, max_num_seqs=rng.choice([2, 3, 4]),
            max_num_batched_tokens=rng.choice([8, 64])))
        for k in range(rng.randint(2, 5)):
            p = SamplingParams(temperature=1.0, seed=k, n=rng.choice([1, 1, 2]),
                               max_tokens=rng.choice([1, 3, None]))
            prompt = list(range(10 + k, 11 + k + rng.randint(0, 20)))
            if p.n == 1 and rng.random() < 0.7:
                state = engine.make_request(f"r{k}", prompt, p, input_closed=False)
                engine.add(state)
                try:
                    start_paths(engine, state, ParallelConfig(
                        paths=rng.randint(1, 3), path_tokens=rng.randint(1, 6),
                        layout=rng.choice(["parallel", "sequential"]),
                        merge=rng.choice(["summary", "vote", "none"])))
                except ParamError:
                    engine.abort(f"r{k}")
            else:
                engine.add_request(f"r{k}", prompt, p)
        for step in range(1000):
            if not engine.has_unfinished_requests():
                break
            if step < 20 and rng.random() < 0.05 and engine.requests:
                engine.abort(rng.choice(sorted(engine.requests)))
            engine.step()
            engine.check_integrity()
        assert not engine.requests
        assert engine.kv.num_free_blocks == engine.kv.num_blocks


def test_an_exception_in_wait_aborts_and_a_with_block_ends_the_request(monkeypatch) -> None:
    """Ctrl-C inside ``t.wait`` (a step raising) leaves no request nor block behind; leaving
    ``with`` aborts a live request; a thread id string is a ParamError naming ``thread``."""
    llm = LLM(checkpoint=tiny_checkpoint(), dtype="float32", num_blocks=64, block_size=4)
    engine, real, calls = llm.engine, llm.engine.step, [0]

    def step():
        calls[0] += 1
        if calls[0] == 3:
            raise KeyboardInterrupt
        return real()

    t = llm.threads(PROMPT, HOT)
    kids = t.fork(t.root, ["a", "b"], max_tokens=6)
    monkeypatch.setattr(engine, "step", step)
    with pytest.raises(KeyboardInterrupt):
        t.wait(kids)
    monkeypatch.setattr(engine, "step", real)
    assert not engine.requests and engine.kv.num_free_blocks == engine.kv.num_blocks
    engine.check_integrity()
    with llm.threads(PROMPT, HOT) as t:
        kids = t.fork(t.root, ["a"], max_tokens=6)
        with pytest.raises(ParamError) as bad:
            t.text(kids[0].seq.seq_id)
        assert bad.value.param == "thread"
        with pytest.raises(ParamError):
            t.wait(["x"])
        t.wait(kids)
        assert engine.requests
    assert not engine.requests and engine.kv.num_free_blocks == engine.kv.num_blocks
    engine.check_integrity()
