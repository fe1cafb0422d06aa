"""Structured outputs in the engine, on the tiny random model: where the mask allows the
tokens a free run picks, the constrained run picks the same ones; free requests batched with
constrained ones keep their exact tokens; grammars end sequences, EOS only where they can
end; n > 1 children, seeds, logprobs, preemption, aborts, sessions and the worker thread
that computes the masks beside the forward."""

from __future__ import annotations

import json
import threading

import jsonschema
import pytest
from helpers.tiny import tiny_checkpoint

from thinkstream import LLM
from thinkstream.config import EngineConfig
from thinkstream.engine.llm_engine import LLMEngine
from thinkstream.sampling_params import ParamError, SamplingParams, StructuredOutputsParams
from thinkstream.structured.mask import full_bitmask, unpack_bitmask

SO = StructuredOutputsParams
PROMPT = "The quick brown fox"
EOS = 2
PERSON = {"type": "object", "additionalProperties": False, "required": ["name", "age", "tags"],
          "properties": {"name": {"type": "string", "maxLength": 8},
                         "age": {"type": "integer", "minimum": 0, "maximum": 120},
                         "tags": {"type": "array", "maxItems": 2,
                                  "items": {"enum": ["a", "b", "c"]}}}}


def make_engine(**cfg) -> LLMEngine:
    base = dict(block_size=4, num_blocks=512, max_num_seqs=16, max_num_batched_tokens=256)
    return LLMEngine(config=EngineConfig(**{**base, **cfg}), checkpoint=tiny_checkpoint())


def run(engine: LLMEngine, requests: list[tuple[str, SamplingParams]], late: int = 0) -> list:
    """Outputs in request order; the second half arrives after ``late`` steps."""
    first = len(requests) - len(requests) // 2 if late else len(requests)
    for i, (prompt, params) in enumerate(requests[:first]):
        engine.add_request(f"r{i}", prompt, params)
    done, steps = {}, 0
    while engine.has_unfinished_requests() or steps <= late:
        if late and steps == late:
            for i, (prompt, params) in enumerate(requests[first:], first):
                engine.add_request(f"r{i}", prompt, params)
        for out in engine.step():
            if out.finished:
                done[out.request_id] = out
        engine.check_integrity()
        steps += 1
        assert steps < 3000
    assert engine.structured.num_matchers == 0
    return [done[f"r{i}"] for i in range(len(requests))]


def allowed_after(engine: LLMEngine, so: SO, ids: list[int]) -> set[int]:
    """The tokens an independent matcher allows after ``ids``."""
    m = engine.structured.compiler.compile(so).matcher()
    assert m.consume_tokens(ids)
    row = full_bitmask(1, engine.structured.compiler.vocab_size)
    m.unsafe_compute_mask_ptr(row.data_ptr(), row.numel() * 4)
    return set(unpack_bitmask(row, row.shape[1] * 32)[0].nonzero().flatten().tolist())


@pytest.fixture(scope="module")
def engine() -> LLMEngine:
    return make_engine()


# ------------------------------------------------------------ the mask changes nothing else
def test_greedy_under_a_choice_covering_the_greedy_continuation_is_that_continuation(
        engine) -> None:
    free = run(engine, [(PROMPT, SamplingParams(temperature=0, max_tokens=12))])[0].outputs[0]
    text = free.text
    assert len(text) > 6 and free.finish_reason == "length"
    # a second choice shares the first token's text, then the two part
    so = SO(choice=[text, text[:4] + "#" + text[4:]])
    out = run(engine, [(PROMPT, SamplingParams(temperature=0, max_tokens=40,
                                               structured_outputs=so))])[0].outputs[0]
    assert out.token_ids == free.token_ids  # the grammar ends it: no EOS sampled
    assert (out.text, out.finish_reason) == (text, "stop")
    # the masks were narrow (one token, then the two choices' next ones), not "anything"
    assert allowed_after(engine, so, []) == {free.token_ids[0]}
    assert 2 <= len(allowed_after(engine, so, free.token_ids[:1])) < 10  # " fox", " f", "#"..


def test_sampled_tokens_under_a_match_anything_regex_are_the_free_ones(engine) -> None:
    """Same seeds: identical tokens up to the first token the grammar forbids (an invalid
    UTF-8 byte, a special token), which the constrained run never picks."""
    so = SO(regex="(?s:.*)")
    reqs = [(PROMPT, SamplingParams(temperature=4.0, seed=s, n=2, max_tokens=30))
            for s in range(6)]
    free = run(engine, reqs)
    held = run(engine, [(p, SamplingParams(**{**_fields(sp), "structured_outputs": so}))
                        for p, sp in reqs])
    whole = 0
    for f, h in zip(free, held, strict=True):
        for a, b in zip(f.outputs, h.outputs, strict=True):
            pairs = zip(a.token_ids, b.token_ids, strict=False)
            k = next((i for i, (x, y) in enumerate(pairs) if x != y),
                     min(len(a.token_ids), len(b.token_ids)))
            if k == len(a.token_ids) == len(b.token_ids):
                whole += 1
                continue
            assert k < len(a.token_ids)
            forbidden = a.token_ids[k]
            assert forbidden not in allowed_after(engine, so, a.token_ids[:k])
            assert b.token_ids[k] in allowed_after(engine, so, a.token_ids[:k])
    assert whole >= 4  # most runs never meet a forbidden token


def _fields(p: SamplingParams) -> dict:
    return {k: getattr(p, k) for k in p.__dataclass_fields__}


def test_free_requests_batched_with_constrained_ones_keep_their_tokens(engine) -> None:
    free = [(PROMPT, SamplingParams(temperature=1.5, seed=3, n=2, max_tokens=16)),
            ("Streaming input", SamplingParams(temperature=0, max_tokens=16)),
            ("What is the capital", SamplingParams(temperature=3.0, seed=9, max_tokens=16))]
    alone = [out.outputs for out in run(engine, free)]
    held = [(PROMPT, SamplingParams(temperature=3.0, seed=1, n=2, max_tokens=200,
                                    structured_outputs=SO(json=PERSON))),
            ("numbers", SamplingParams(temperature=0, max_tokens=20,
                                       structured_outputs=SO(regex="[0-9]{3}-[a-z]{2}"))),
            ("pick", SamplingParams(temperature=2.0, seed=4, max_tokens=20,
                                    structured_outputs=SO(choice=["yes", "no", "maybe"])))]
    mixed = run(engine, [held[0], free[0], held[1], free[1], held[2], free[2]], late=2)
    assert [o.outputs for o in mixed[1::2]] == alone
    for out in mixed[0].outputs:
        jsonschema.validate(json.loads(out.text), PERSON)
    assert mixed[2].outputs[0].text[3] == "-" and len(mixed[2].outputs[0].text) == 6
    assert mixed[4].outputs[0].text in ("yes", "no", "maybe")


# ------------------------------------------------------------ how sequences end
def test_eos_only_where_the_grammar_can_end(engine) -> None:
    # EOS pushed up by +100: it still cannot come before the regex has matched something
    params = SamplingParams(temperature=0, max_tokens=20, logit_bias={EOS: 100},
                            structured_outputs=SO(regex="a+"))
    out = run(engine, [(PROMPT, params)])[0].outputs[0]
    assert len(out.token_ids) == 2 and out.token_ids[1] == EOS
    assert out.text and set(out.text) == {"a"} and out.finish_reason == "stop"
    # without the push the model goes on with "a"s until max_tokens
    free = run(engine, [(PROMPT, SamplingParams(temperature=0, max_tokens=5,
                                                structured_outputs=SO(regex="a+")))])[0]
    assert set(free.outputs[0].text) == {"a"} and free.outputs[0].finish_reason == "length"


def test_n_children_seeds_and_logprobs_under_a_schema(engine) -> None:
    params = SamplingParams(n=4, temperature=10.0, seed=11, max_tokens=200, logprobs=2,
                            structured_outputs=SO(json=PERSON))
    first, again = run(engine, [(PROMPT, params), (PROMPT, params)])
    texts = [o.text for o in first.outputs]
    assert texts == [o.text for o in again.outputs]  # same seed, same outputs
    assert len(set(texts)) >= 2  # each child follows its own matcher
    for o in first.outputs:
        jsonschema.validate(json.loads(o.text), PERSON)
        assert o.finish_reason == "stop" and len(o.logprobs) == len(o.token_ids)
        assert [next(iter(lp)) for lp in o.logprobs] == o.token_ids


def test_preemption_recomputes_without_advancing_a_matcher_twice() -> None:
    reqs = [(f"{PROMPT} {i}", SamplingParams(temperature=0, max_tokens=60,
                                            structured_outputs=SO(json=PERSON)))
            for i in range(4)]
    roomy = [o.outputs[0].token_ids for o in run(make_engine(), reqs)]
    tight = make_engine(num_blocks=30)
    squeezed = [o.outputs[0] for o in run(tight, reqs)]
    assert tight.num_preemptions > 0
    assert [o.token_ids for o in squeezed] == roomy
    for o in squeezed:
        jsonschema.validate(json.loads(o.text), PERSON)


def test_matchers_are_dropped_when_requests_abort_or_finish(engine) -> None:
    params = SamplingParams(temperature=3.0, seed=2, n=3, max_tokens=200,
                            structured_outputs=SO(json=PERSON))
    engine.add_request("gone", PROMPT, params)
    engine.add_request("kept", PROMPT, params)
    for _ in range(3):
        engine.step()
    assert engine.structured.num_matchers == 6
    engine.abort("gone")
    assert engine.structured.num_matchers == 3
    engine.check_integrity()
    while engine.has_unfinished_requests():
        engine.step()
    assert engine.structured.num_matchers == 0
    engine.check_integrity()


def test_an_invalid_constraint_is_refused_before_anything_is_queued(engine) -> None:
    with pytest.raises(ParamError) as err:
        engine.add_request("bad", PROMPT, SamplingParams(structured_outputs=SO(regex="(")))
    assert err.value.param == "structured_outputs"
    assert str(err.value).startswith("structured_outputs regex: ")
    assert not engine.requests and not engine.scheduler.waiting
    with pytest.raises(ParamError, match=r"logit_bias token ids must be in the vocabulary \(0..319\)"):
        engine.add_request("bad", PROMPT, SamplingParams(logit_bias={320: 1}))
    with pytest.raises(ParamError, match=r"stop_token_ids token id 320 is outside the vocabulary \(0..319\)"):
        engine.add_request("bad", PROMPT, SamplingParams(stop_token_ids=[5, 320]))
    assert not engine.requests and not engine.scheduler.waiting


# ------------------------------------------------------------ the worker thread
def test_masks_are_computed_on_a_worker_thread_beside_the_forward() -> None:
    threads: list[str] = []
    engine = make_engine()
    fill = engine.structured._fill

    def spy(work):
        threads.append(threading.current_thread().name)
        return fill(work)

    engine.structured._fill = spy
    params = SamplingParams(temperature=2.0, seed=5, n=2, max_tokens=200,
                            structured_outputs=SO(json=PERSON))
    overlapped = run(engine, [(PROMPT, params)])[0]
    assert threads and all(t.startswith("thinkstream-grammar") for t in threads)
    inline = make_engine()
    inline.structured.overlap = False
    assert [o.token_ids for o in run(inline, [(PROMPT, params)])[0].outputs] == \
        [o.token_ids for o in overlapped.outputs]
    engine.structured.shutdown()


# ------------------------------------------------------------ sessions
def test_a_session_closed_with_a_schema_answers_valid_json() -> None:
    llm = LLM(checkpoint=tiny_checkpoint(), dtype="float32", block_size=4, num_blocks=256)
    params = SamplingParams(temperature=2.0, seed=8, max_tokens=200,
                            structured_outputs=SO(json=PERSON))
    session = llm.open_session("Describe a person", sampling_params=params)
    session.append(" in JSON, please.")
    out = session.complete().outputs[0]
    jsonschema.validate(json.loads(out.text), PERSON)
    assert out.finish_reason == "stop" and llm.engine.structured.num_matchers == 0


def test_a_mask_not_foreseen_before_the_forward_is_computed_when_asked(engine) -> None:
    so = SO(choice=["yes", "no"])
    free, held = (engine.make_request(rid, PROMPT, SamplingParams(structured_outputs=c)).seqs[0]
                  for rid, c in (("free", None), ("held", so)))
    mask = engine.structured.token_mask([free, held])
    allowed = unpack_bitmask(mask, mask.shape[1] * 32)
    assert bool(allowed[0].all())
    assert set(allowed[1].nonzero().flatten().tolist()) == allowed_after(engine, so, [])
    engine.structured.on_finish("held")
    assert engine.structured.num_matchers == 0
