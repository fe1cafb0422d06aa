"""The exactness check at close runs beside the answer's first step (the engine hook
``streaming.close_check.CloseCheck``): ids that differ from the reference tokenization are replaced before any
answer token is sampled, keeping the KV of the common prefix, and the answer is the
one-shot answer on the reference ids."""

from __future__ import annotations

import pytest
from helpers.tiny import tiny_checkpoint

from thinkstream.llm import LLM
from thinkstream.sampling_params import SamplingParams
from thinkstream.streaming.close_check import CloseCheck
from thinkstream.streaming.state import SessionInput

GREEDY = SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True)
CKPT = tiny_checkpoint()
TEXT = "The quick brown fox jumps over the lazy dog. Paris is the capital"


@pytest.fixture()
def llm() -> LLM:
    llm = LLM(checkpoint=CKPT, dtype="float32", block_size=4, num_blocks=128, max_num_seqs=8,
              max_num_batched_tokens=64)
    llm.check = CloseCheck(llm.engine)
    llm.engine.add_hook(llm.check)
    return llm


def close_with(llm: LLM, rid: str, reference) -> None:
    llm.engine.close_input(rid)
    llm.check.submit(rid, reference)


def run(llm: LLM) -> list:
    outs = []
    while llm.engine.has_work():  # an open input waits: its request stays
        outs += llm.engine.step()
    return outs


def assert_pool_full(llm: LLM) -> None:
    llm.engine.check_integrity()
    assert not llm.engine.requests and not llm.check._pending
    assert llm.engine.kv.num_free_blocks == llm.engine.kv.num_blocks


def close_held(llm: LLM, held: list[int], right: list[int]) -> None:
    """Request "r" with input ``held``, computed but for its last token, closed with the
    reference ``right``."""
    eng = llm.engine
    eng.add(eng.make_request("r", held, GREEDY, input_closed=False))
    run(llm)  # the input is computed but for its last token
    assert eng.requests["r"].seqs[0].num_computed_tokens == len(held) - 1
    close_with(llm, "r", lambda: list(right))


def assert_answers_one_shot(llm: LLM, right: list[int], one_shot: list[int]) -> None:
    llm.engine.check_integrity()
    outs = run(llm)
    assert outs[-1].prompt_token_ids == right
    assert outs[-1].outputs[0].token_ids == one_shot
    assert_pool_full(llm)


def test_wrong_ids_are_replaced_before_the_first_answer_token(llm: LLM) -> None:
    right = llm.tokenizer.encode(TEXT)
    wrong = right[:-3] + [right[-1], right[-2], right[-3], right[-1]]  # same prefix, other tail
    one_shot = llm.generate([right], GREEDY)[0].outputs[0].token_ids
    close_held(llm, wrong, right)
    eng = llm.engine
    first = eng.step()  # the check fails: nothing sampled, the tail goes back to compute
    assert first == [] and "r" not in llm.check._pending
    seq = eng.requests["r"].seqs[0]
    assert seq.token_ids == right and seq.num_prompt_tokens == len(right)
    assert seq.num_computed_tokens == len(right) - 3  # the common prefix's KV was kept
    assert_answers_one_shot(llm, right, one_shot)


def test_a_reference_that_is_a_prefix_of_the_ids_still_answers(llm: LLM) -> None:
    """The ids held end with a token the reference does not have: after the roll-back the
    reference's last token is computed again (its logits give the first answer token),
    rather than nothing being left to compute and the answer never starting."""
    right = llm.tokenizer.encode(TEXT)
    one_shot = llm.generate([right], GREEDY)[0].outputs[0].token_ids
    close_held(llm, right + [right[-1]], right)
    eng = llm.engine
    assert eng.step() == []  # the closing step computed every held id; the check fails
    seq = eng.requests["r"].seqs[0]
    assert seq.token_ids == right and seq.num_computed_tokens == len(right) - 1
    assert seq.num_pending_tokens == 1
    assert_answers_one_shot(llm, right, one_shot)


def test_matching_ids_answer_in_the_closing_step(llm: LLM) -> None:
    right = llm.tokenizer.encode(TEXT)
    one_shot = llm.generate([right], GREEDY)[0].outputs[0].token_ids
    close_held(llm, right, right)
    first = llm.engine.step()
    assert len(first) == 1 and first[0].outputs[0].token_ids == one_shot[:1]
    assert run(llm)[-1].outputs[0].token_ids == one_shot
    assert_pool_full(llm)


def test_a_reference_that_fails_leaves_the_ids(llm: LLM) -> None:
    right = llm.tokenizer.encode(TEXT)
    eng = llm.engine
    eng.add(eng.make_request("r", right, GREEDY, input_closed=False))

    def broken() -> list[int]:
        raise RuntimeError("tokenizer failed")

    close_with(llm, "r", broken)
    outs = run(llm)
    assert outs[-1].prompt_token_ids == right and len(outs[-1].outputs[0].token_ids) == 6
    assert_pool_full(llm)


def test_abort_with_a_check_pending_frees_everything(llm: LLM) -> None:
    eng = llm.engine
    right = llm.tokenizer.encode(TEXT)
    eng.add(eng.make_request("r", right, GREEDY, input_closed=False))
    eng.step()
    close_with(llm, "r", lambda: list(right))
    assert "r" in llm.check._pending
    assert eng.abort("r")
    assert_pool_full(llm)


def test_session_close_with_a_tail_that_went_wrong(llm: LLM, monkeypatch) -> None:
    """Through the session API: if the tail tokenizer's ids at close were wrong, the
    engine's check still makes the answer the one-shot answer on the exact ids."""
    plan_close = SessionInput.plan_close

    def skewed(self, exact: bool = True):
        plan = plan_close(self, exact)
        if exact:
            return plan
        ids = plan.ids[:-2] + [plan.ids[-1], plan.ids[-2]]
        return type(plan)(ids, type(plan.edit)(len(ids) - 2, ids[-2:]), plan.text)

    monkeypatch.setattr(SessionInput, "plan_close", skewed)
    s = llm.open_session(prompt="", sampling_params=GREEDY)
    for piece in ("The quick brown fox jumps ", "over the lazy dog. ", "Paris is the capital"):
        s.append(piece)
    out = s.complete()
    assert out.prompt_token_ids == llm.tokenizer.encode(TEXT)
    assert out.outputs[0].token_ids == llm.generate([TEXT], GREEDY)[0].outputs[0].token_ids
    assert_pool_full(llm)
