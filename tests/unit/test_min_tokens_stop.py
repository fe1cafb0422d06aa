"""``min_tokens`` holds back stop strings as it holds back eos and stop ids (issue 16: with
``min_tokens=8`` and ``stop=["Par"]`` a completion stopped after 2 tokens). As in vLLM, a
stop string counts only if it ends in the text of a token past the first ``min_tokens``."""

from __future__ import annotations

from helpers.tiny import tiny_checkpoint

from thinkstream.config import EngineConfig
from thinkstream.engine.detokenize import StopStringMatcher
from thinkstream.engine.llm_engine import LLMEngine
from thinkstream.sampling_params import SamplingParams


def feed(matcher: StopStringMatcher, deltas: list[tuple[str, bool]]) -> tuple[str, str | None]:
    out = ""
    for delta, armed in deltas:
        emit, stopped = matcher.feed(delta, armed=armed)
        out += emit
        if stopped:
            return out, matcher.matched
    return out + matcher.flush(), None


def test_a_stop_string_in_unarmed_text_never_ends_it() -> None:
    assert feed(StopStringMatcher(["Par"]), [(", Par", False), ("is, ", True), ("which", True)]) \
        == (", Paris, which", None)


def test_a_stop_string_that_ends_in_armed_text_ends_it() -> None:
    # starts before the boundary, ends after it: it counts (vLLM's rule)
    assert feed(StopStringMatcher(["Paris"]), [("in Pa", False), ("ris!", True)]) == ("in ", "Paris")
    # a second occurrence after the boundary counts, the first does not
    assert feed(StopStringMatcher(["Par"]), [("Par ", False), ("x Par", True)]) == ("Par x ", "Par")


def test_a_held_tail_keeps_its_unarmed_part() -> None:
    """"a" fed unarmed stays held (it may begin "abc") and still cannot end the text once
    armed text follows it."""
    assert feed(StopStringMatcher(["a", "abc"]), [("xa", False), ("b", True), ("x", True)]) \
        == ("xabx", None)
    assert feed(StopStringMatcher(["a", "abc"]), [("xa", False), ("b", True), ("c", True)]) \
        == ("x", "abc")


def _engine() -> LLMEngine:
    cfg = EngineConfig(block_size=4, num_blocks=128, max_num_seqs=4, max_num_batched_tokens=64)
    return LLMEngine(config=cfg, checkpoint=tiny_checkpoint())


def _final(engine: LLMEngine, prompt, params: SamplingParams):
    rid = engine.add_request(None, prompt, params)
    while engine.has_unfinished_requests():
        for out in engine.step():
            if out.request_id == rid and out.finished:
                return out.outputs[0]
    raise AssertionError("no final output")


def test_engine_stop_string_straddling_min_tokens() -> None:
    """The tiny model answers "The capital city of France" with "e" repeated. "ee" first
    ends past min_tokens=8 at the 9th token (characters 8-9): the text is cut before it."""
    engine = _engine()
    params = dict(temperature=0, max_tokens=12, ignore_eos=True)
    free = _final(engine, "The capital city of France", SamplingParams(**params))
    assert free.text == "e" * 12
    out = _final(engine, "The capital city of France",
                 SamplingParams(**params, min_tokens=8, stop=["ee"]))
    assert (out.text, len(out.token_ids), out.finish_reason, out.stop_reason) == \
        ("e" * 7, 9, "stop", "ee")
    early = _final(engine, "The capital city of France", SamplingParams(**params, stop=["ee"]))
    assert (early.text, len(early.token_ids), early.finish_reason) == ("", 2, "stop")


def test_engine_stop_string_only_before_min_tokens_is_ignored() -> None:
    """The fault's shape: a seeded sample whose stop string ("ee") occurs only in its
    first 3 tokens stops at the 2nd token without min_tokens, and never with
    min_tokens=8: the whole 12 tokens, finish reason "length"."""
    engine = _engine()
    params = dict(temperature=5.0, seed=7, max_tokens=12, ignore_eos=True)
    free = _final(engine, "The capital city of France", SamplingParams(**params))
    assert free.token_ids == [71, 71, 71] + [182] * 8 + [53]  # "eee", then no "ee"
    stopped = _final(engine, "The capital city of France", SamplingParams(**params, stop=["ee"]))
    assert (stopped.text, len(stopped.token_ids), stopped.finish_reason) == ("", 2, "stop")
    held = _final(engine, "The capital city of France",
                  SamplingParams(**params, stop=["ee"], min_tokens=8))
    assert (held.text, held.token_ids, held.finish_reason, held.stop_reason) == \
        (free.text, free.token_ids, "length", None)
