"""LLMEngine on a tiny random model: exact tokens against a dense reference, batch
invariance under prefix hits / chunked prefill / preemption, fork (n > 1), aborts."""

from __future__ import annotations

import pytest
import torch
from helpers.tiny import reference_logits, tiny_checkpoint

from thinkstream.config import EngineConfig
from thinkstream.engine.llm_engine import LLMEngine, RequestError
from thinkstream.sampling_params import ParamError, SamplingParams

PROMPTS = [
    [5, 6, 7, 8, 9],
    [100, 200, 300, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26],
    [42],
    [7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7],
    [3, 1, 4, 1, 5, 9, 2, 6],
    [300, 301, 302, 303],
    [11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21],
    [250, 240, 230, 220, 210, 200],
]
GREEDY = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)


def make_engine(arch: str = "llama", **cfg) -> LLMEngine:
    base = dict(block_size=4, num_blocks=256, max_num_seqs=16, max_num_batched_tokens=256)
    base.update(cfg)
    return LLMEngine(config=EngineConfig(**base), checkpoint=tiny_checkpoint(arch))


def run(engine: LLMEngine, prompts, params=GREEDY) -> list[list[int]]:
    ids = [engine.add_request(f"r{i}", p, params) for i, p in enumerate(prompts)]
    done = {}
    steps = 0
    while engine.has_unfinished_requests():
        for out in engine.step():
            if out.finished:
                done[out.request_id] = out
        engine.check_integrity()
        steps += 1
        assert steps < 2000
    return [done[i].outputs[0].token_ids for i in ids]


def reference_greedy(arch: str, prompt: list[int], n: int) -> list[int]:
    ck = tiny_checkpoint(arch)
    ids = list(prompt)
    for _ in range(n):
        ids.append(int(reference_logits(ck.config, ck.tensors, ids)[-1].argmax()))
    return ids[len(prompt):]


@pytest.fixture(scope="module")
def alone() -> list[list[int]]:
    engine = make_engine()
    return [run(engine, [p])[0] for p in PROMPTS]


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_greedy_matches_dense_reference(arch: str) -> None:
    engine = make_engine(arch)
    got = run(engine, PROMPTS[:3])
    assert got == [reference_greedy(arch, p, 12) for p in PROMPTS[:3]]


def test_batch_invariance(alone) -> None:
    assert run(make_engine(), PROMPTS) == alone


def test_batch_invariance_chunked_prefill(alone) -> None:
    engine = make_engine(max_num_batched_tokens=5)
    assert run(engine, PROMPTS) == alone


def test_batch_invariance_prefix_hits(alone) -> None:
    engine = make_engine()
    run(engine, PROMPTS)  # fills the prefix cache
    hits_before = engine.kv.prefix_hits
    assert run(engine, PROMPTS) == alone
    assert engine.kv.prefix_hits > hits_before


def test_batch_invariance_preemption(alone) -> None:
    engine = make_engine(num_blocks=14, enable_prefix_caching=False)
    got = run(engine, PROMPTS)
    assert got == alone
    assert engine.kv.num_free_blocks == 14


def test_seeded_sampling_independent_of_batch() -> None:
    params = SamplingParams(temperature=1.0, top_p=0.9, seed=1234, max_tokens=10, ignore_eos=True)
    solo = run(make_engine(), [PROMPTS[0]], params)[0]
    engine = make_engine()
    other = SamplingParams(temperature=1.0, max_tokens=10, ignore_eos=True)
    engine.add_request("x", PROMPTS[1], other)
    engine.add_request("y", PROMPTS[2], other)
    assert run(engine, [PROMPTS[0]], params)[0] == solo


def test_n_forks_and_frees() -> None:
    engine = make_engine()
    params = SamplingParams(n=3, temperature=5.0, seed=7, max_tokens=6, ignore_eos=True)
    engine.add_request("a", PROMPTS[1], params)  # 18 tokens: 4 full blocks + 2
    out = engine.step()  # prefill + fork
    tables = [engine.kv.block_table(f"a#{i}") for i in range(3)]
    assert tables[0][:4] == tables[1][:4] == tables[2][:4]
    assert len({t[4] for t in tables}) == 3  # partial block copied per child
    assert all(engine.kv.pool.ref_count(b) == 3 for b in tables[0][:4])
    while engine.has_unfinished_requests():
        out = engine.step() or out
    final = out[-1]
    assert [len(o.token_ids) for o in final.outputs] == [6, 6, 6]
    assert len({tuple(o.token_ids) for o in final.outputs}) > 1
    engine.check_integrity()
    assert engine.kv.num_free_blocks == engine.kv.num_blocks


def test_abort_mid_decode_frees_blocks() -> None:
    engine = make_engine()
    for i, p in enumerate(PROMPTS):
        engine.add_request(f"r{i}", p, GREEDY)
    engine.step()
    engine.step()
    assert engine.abort("r1") and not engine.abort("r1")
    for i in range(len(PROMPTS)):
        engine.abort(f"r{i}")
    assert not engine.has_unfinished_requests()
    engine.check_integrity()
    assert engine.kv.num_free_blocks == engine.kv.num_blocks


def test_stop_and_length_and_min_tokens() -> None:
    engine = make_engine()
    ref = run(engine, [PROMPTS[0]])[0]
    stop_id = ref[3]
    got = run(engine, [PROMPTS[0]], SamplingParams(temperature=0, max_tokens=12, stop_token_ids=[stop_id]))
    assert got[0] == ref[: ref.index(stop_id) + 1]
    got = run(engine, [PROMPTS[0]], SamplingParams(temperature=0, max_tokens=5, ignore_eos=True))
    assert got[0] == ref[:5]


def test_stop_string_cuts_text() -> None:
    engine = make_engine()
    engine.add_request("r", PROMPTS[0], GREEDY)
    full = None
    while engine.has_unfinished_requests():
        for o in engine.step():
            full = o
    text = full.outputs[0].text
    assert len(text) > 4
    stop = text[2:4]
    engine.add_request("s", PROMPTS[0], SamplingParams(temperature=0, max_tokens=12, stop=[stop], ignore_eos=True))
    last = None
    streamed = ""
    while engine.has_unfinished_requests():
        for o in engine.step():
            last = o
            streamed += o.outputs[0].new_text
    assert last.outputs[0].text == text[: text.index(stop)]
    assert streamed == last.outputs[0].text
    assert last.outputs[0].finish_reason == "stop" and last.outputs[0].stop_reason == stop


def test_stop_token_text_left_out_unless_asked() -> None:
    """A token of stop_token_ids that ends the output stays in token_ids, and its text is
    left out of ``text`` (streamed or not) unless include_stop_str_in_output (vLLM)."""
    engine = make_engine()
    engine.add_request("r", PROMPTS[0], SamplingParams(temperature=0, max_tokens=8, ignore_eos=True))
    ref = None
    while engine.has_unfinished_requests():
        ref = engine.step() or ref
    ids, text = ref[0].outputs[0].token_ids, ref[0].outputs[0].text
    stop_id = ids[3]
    n = ids.index(stop_id)
    want = engine.tokenizer.decode(ids[:n]), engine.tokenizer.decode(ids[: n + 1])
    assert want[1] != want[0] and text.startswith(want[1])
    for include, expected in ((False, want[0]), (True, want[1])):
        engine.add_request("s", PROMPTS[0], SamplingParams(
            temperature=0, max_tokens=8, ignore_eos=True, stop_token_ids=[stop_id],
            include_stop_str_in_output=include))
        last, streamed = None, ""
        while engine.has_unfinished_requests():
            for o in engine.step():
                last, streamed = o, streamed + o.outputs[0].new_text
        out = last.outputs[0]
        assert out.token_ids == ids[: n + 1] and out.stop_reason == stop_id
        assert out.text == streamed == expected


def test_prompt_logprobs_match_reference(tiny_ckpt) -> None:
    engine = make_engine(max_num_batched_tokens=7)  # chunked: logprobs cross chunk boundaries
    prompt = PROMPTS[1]
    engine.add_request("p", prompt, SamplingParams(temperature=0, max_tokens=1, prompt_logprobs=2, logprobs=1))
    out = None
    while engine.has_unfinished_requests():
        out = engine.step() or out
    plp = out[-1].prompt_logprobs
    ref = torch.log_softmax(reference_logits(tiny_ckpt.config, tiny_ckpt.tensors, prompt), -1)
    assert plp[0] is None and len(plp) == len(prompt)
    for i in range(1, len(prompt)):
        assert next(iter(plp[i])) == prompt[i]  # vLLM's shape: the prompt token first
        assert abs(plp[i][prompt[i]].logprob - float(ref[i - 1, prompt[i]])) < 1e-4
        top = sorted((lp.rank, t) for t, lp in plp[i].items() if lp.rank <= 2)
        assert len(top) == 2 and top[0][1] == int(ref[i - 1].argmax())
    out0 = out[-1].outputs[0]
    lp = out0.logprobs[0][out0.token_ids[0]]
    assert abs(lp.logprob - float(ref[-1].max())) < 1e-4 and lp.rank == 1


def test_bad_requests_take_no_blocks() -> None:
    engine = make_engine()
    with pytest.raises(RequestError, match="prompt"):
        engine.add_request("a", [], GREEDY)
    with pytest.raises(RequestError, match="vocabulary"):
        engine.add_request("b", [1, 99999], GREEDY)
    with pytest.raises(RequestError, match="prompt"):
        engine.add_request("c", list(range(10)) * 60, GREEDY)
    with pytest.raises(RequestError, match="prompt: token ids must be integers"):
        engine.add_request("d", [1, 2.5], GREEDY)  # not cut to 2
    with pytest.raises(RequestError, match="prompt: text \\(str\\) or token ids, not bytes"):
        engine.add_request("d", b"ab", GREEDY)  # not the ids 97, 98
    # more log-probs than the vocabulary has: refused here, not a crash of the step
    # (which would fail every request in its batch)
    for name in ("logprobs", "prompt_logprobs"):
        with pytest.raises(ParamError, match=f"{name} must be <= the vocabulary's 320 tokens"):
            engine.add_request("e", [1, 2], SamplingParams(max_tokens=2, **{name: 321}))
    assert not engine.has_unfinished_requests()
    assert engine.kv.num_free_blocks == engine.kv.num_blocks
    engine.add_request("f", [1, 2], SamplingParams(max_tokens=1, logprobs=320))  # all of them
    done = [o for _ in range(8) for o in engine.step() if o.finished]
    assert len(done[0].outputs[0].logprobs[0]) == 320
    engine.check_integrity()


def test_open_input_extend_truncate_close_matches_one_shot(alone) -> None:
    """Streaming-input hooks: chunks are prefilled while the input is open (the last token
    held back), a rollback keeps the common prefix, and the answer after close equals the
    one-shot answer on the final input."""
    engine = make_engine()
    final = PROMPTS[1]
    engine.add_request("s", final[:5], GREEDY, input_closed=False)
    engine.step()
    seq = engine.requests["s"].seqs[0]
    assert seq.num_computed_tokens == 4  # last token held back while open
    engine.extend_input("s", [9, 9, 9, 9, 9, 9, 9])  # a wrong tail, later replaced
    engine.step()
    assert seq.num_computed_tokens == 11
    engine.truncate_input("s", 5)
    assert seq.num_computed_tokens == 5
    engine.extend_input("s", final[5:])
    engine.step()
    assert seq.num_computed_tokens == len(final) - 1
    assert engine.step() == []  # nothing to do while the input is open
    engine.close_input("s")
    out = None
    while engine.has_unfinished_requests():
        out = engine.step() or out
    assert out[-1].outputs[0].token_ids == alone[1]
    assert out[-1].prompt_token_ids == final
    engine.check_integrity()


def test_shared_prefix_computed_once_per_step() -> None:
    """Requests arriving together with the same long prefix: the second waits one step and
    then hits the prefix cache instead of computing the same blocks again."""
    engine = make_engine(max_num_batched_tokens=256)
    common = [(7 * i) % 300 + 3 for i in range(24)]  # 6 full blocks
    engine.add_request("a", common + [1, 2], GREEDY)
    engine.add_request("b", common + [3, 4], GREEDY)
    engine.step()
    assert not engine.kv.has("b#0")  # held back while "a" computes the prefix
    engine.step()
    assert engine.kv.prefix_hits == 24
    assert engine.kv.block_table("a#0")[:6] == engine.kv.block_table("b#0")[:6]
    outs: dict[str, int] = {}
    while engine.has_unfinished_requests():
        for out in engine.step():
            outs[out.request_id] = out.num_cached_tokens
    assert outs == {"a": 0, "b": 24}  # RequestOutput.num_cached_tokens, as vLLM's


def test_a_long_queue_in_a_tiny_pool_matches_a_roomy_one() -> None:
    """120 requests through a pool of six blocks (three at a time, preempted as they grow),
    one aborted while it waits mid-queue: every other finishes with the tokens a roomy
    pool gives, and the pool is whole after (engine/waiting.py)."""
    prompts = [[3 + i, 7, 8, 9, 10, 11] for i in range(120)]
    params = SamplingParams(temperature=0.0, max_tokens=3, ignore_eos=True)
    roomy = make_engine(num_blocks=256, max_num_seqs=64)
    want = run(roomy, prompts, params)
    engine = make_engine(num_blocks=6, max_num_seqs=3)
    ids = [engine.add_request(f"r{i}", p, params) for i, p in enumerate(prompts)]
    engine.step()
    assert engine.abort("r60") and engine.usage().num_waiting == 116
    got = {}
    while engine.has_unfinished_requests():
        got.update({o.request_id: o.outputs[0].token_ids for o in engine.step() if o.finished})
    engine.check_integrity()
    assert engine.kv.num_free_blocks == engine.kv.num_blocks == 6
    assert got == {rid: w for rid, w in zip(ids, want, strict=True) if rid != "r60"}
