"""The Python API's log-probs in vLLM's shape (issue 16): ``prompt_logprobs[i]`` and
``outputs[j].logprobs[i]`` are ``dict[int, Logprob]`` (``logprob``, ``rank``,
``decoded_token``), the chosen token first, so code written against vLLM's
``RequestOutput`` (``out.prompt_logprobs[i][token_id].logprob``) runs unchanged."""

from __future__ import annotations

import torch
from helpers.tiny import reference_logits

from thinkstream import LLM, SamplingParams
from thinkstream.engine.request import Logprob

PROMPT = [100, 200, 300, 12, 13, 14, 15]


def _llm(ckpt) -> LLM:
    return LLM(checkpoint=ckpt, dtype="float32", block_size=4, num_blocks=64, max_num_seqs=4,
               max_num_batched_tokens=64)


def _ranks(row: torch.Tensor) -> list[int]:
    order = row.argsort(descending=True).tolist()
    return [order.index(t) + 1 for t in range(row.numel())]


def test_prompt_logprobs_are_dicts_of_logprob(tiny_ckpt) -> None:
    llm = _llm(tiny_ckpt)
    out = llm.generate([PROMPT], SamplingParams(temperature=0, max_tokens=1, prompt_logprobs=2))[0]
    ref = torch.log_softmax(reference_logits(tiny_ckpt.config, tiny_ckpt.tensors, PROMPT), -1)
    plp = out.prompt_logprobs
    assert plp[0] is None and len(plp) == len(PROMPT)
    for i in range(1, len(PROMPT)):
        token, row = PROMPT[i], ref[i - 1]
        entry = plp[i]
        assert isinstance(entry[token], Logprob)
        assert list(entry)[0] == token  # the prompt token first, then the top 2 by rank
        top2 = row.topk(2).indices.tolist()
        assert list(entry)[1:] == [t for t in top2 if t != token]
        assert entry[token].rank == _ranks(row)[token]
        assert abs(entry[token].logprob - float(row[token])) < 1e-4
        assert [entry[t].rank for t in top2] == [1, 2]
        assert all(entry[t].decoded_token == llm.tokenizer.decode([t]) for t in entry)


def test_sample_logprobs_of_every_output_token(tiny_ckpt) -> None:
    llm = _llm(tiny_ckpt)
    params = SamplingParams(temperature=1.0, seed=3, max_tokens=5, logprobs=1, n=2,
                            ignore_eos=True)
    for o in llm.generate([PROMPT], params)[0].outputs:
        assert len(o.logprobs) == len(o.token_ids) == 5
        for token, entry in zip(o.token_ids, o.logprobs, strict=True):
            assert list(entry)[0] == token
            best = next(t for t, lp in entry.items() if lp.rank == 1)
            assert len(entry) == (1 if token == best else 2)
            assert entry[token].rank >= 1 and entry[best].logprob >= entry[token].logprob
    greedy = llm.generate([PROMPT], SamplingParams(temperature=0, max_tokens=3, logprobs=0))[0]
    assert all(e[t].rank == 1 and len(e) == 1
               for e, t in zip(greedy.outputs[0].logprobs, greedy.outputs[0].token_ids,
                               strict=True))
