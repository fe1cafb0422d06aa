"""The async engine's delivery thread: a consumer that vanished with its event loop never
stops the engine for everyone else."""

from __future__ import annotations

import asyncio

from conftest import tiny_llm, wait_pool_full

from thinkstream.sampling_params import SamplingParams

LONG = SamplingParams(max_tokens=60, temperature=0, ignore_eos=True)
SHORT = SamplingParams(max_tokens=4, temperature=0, ignore_eos=True)


def test_stream_left_unread_on_a_closed_loop_is_aborted_and_engine_lives() -> None:
    """A session answer whose stream was never read (the caller's loop closed first: an
    unstarted async generator has no finalizer) used to kill the engine thread with
    "Event loop is closed"; now the answer is aborted as ``client_gone``, the pool is full
    again and later callers on other loops are served."""
    llm = tiny_llm()
    try:
        async def leave_unread() -> None:
            await llm.open_session(prompt=[5, 6, 7, 8], params=LONG, session_id="s")
            await llm.close_session("s")  # the answer's stream, never iterated

        asyncio.run(leave_unread())
        wait_pool_full(llm)
        assert llm.dead is None

        async def later() -> tuple[str, str | None, list[int]]:
            info = await llm.session_info("s")
            outs = [o async for o in llm.generate([5, 6, 7], SHORT)]
            return info.state, info.reason, outs[-1].outputs[0].token_ids

        state, reason, ids = asyncio.run(later())
        assert (state, reason) == ("aborted", "client_gone")
        fresh = tiny_llm()
        try:
            async def reference() -> list[int]:
                return [o async for o in fresh.generate([5, 6, 7], SHORT)][-1].outputs[0].token_ids
            assert list(ids) == list(asyncio.run(reference())) and len(ids) == 4
        finally:
            fresh.shutdown()
        assert not llm._streams and not llm._listeners
    finally:
        llm.shutdown()


def test_salt_keeps_requests_out_of_each_others_prefix_cache() -> None:
    """``generate(salt=)``: the same prompt hits the prefix cache only under the same salt
    (the streaming benchmark's repeated runs rely on it); the answer is the same."""
    llm = tiny_llm()
    kv = llm.engine.kv
    ids = list(range(5, 45))  # 40 tokens: 9 full blocks of 4 before the last token

    async def run(salt) -> list[int]:
        return [o async for o in llm.generate(ids, SHORT, salt=salt)][-1].outputs[0].token_ids

    try:
        first = asyncio.run(run("a"))
        hits = kv.prefix_hits
        assert asyncio.run(run("b")) == first and kv.prefix_hits == hits  # other salt: no hit
        assert asyncio.run(run("a")) == first and kv.prefix_hits > hits  # same salt: hits
        wait_pool_full(llm)
    finally:
        llm.shutdown()
