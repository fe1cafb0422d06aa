"""A test-only way to make the tiny random model write a chosen text.

``script(llm, reply)`` wraps the engine runner's ``sample``: each sequence's tokens (one a
step, drafts never accepted) are the tokenization of ``reply(prompt_text)`` followed by
EOS, whatever the logits say. Everything
after sampling (detokenizer, stop strings, finish reasons, the server's parsers and
streaming) runs for real, so tests drive tool calls and reasoning deterministically.
``unscript(llm)`` puts the sampler back.
"""

from __future__ import annotations

from collections.abc import Callable


def script(llm, reply: Callable[[str], str]) -> None:
    engine = llm.engine
    runner = engine.runner
    original = getattr(runner, "_unscripted_sample", runner.sample)
    tok = engine.tokenizer
    eos = tok.eos_token_ids[0]
    planned: dict[str, list[int]] = {}

    def sample(logits, rows, seqs, eos_ids, token_mask=None):
        ids, logprobs = original(logits, rows, seqs, eos_ids, token_mask)
        forced = []
        for seq in seqs:
            plan = planned.get(seq.seq_id)
            if plan is None:
                prompt = tok.decode(seq.token_ids[: seq.num_prompt_tokens])
                plan = planned[seq.seq_id] = tok.encode(reply(prompt), add_special_tokens=False)
            k = seq.num_output_tokens
            forced.append([plan[k] if k < len(plan) else eos])
        return forced, [lps[:1] for lps in logprobs]

    runner._unscripted_sample = original
    runner.sample = sample


def unscript(llm) -> None:
    runner = llm.engine.runner
    if hasattr(runner, "_unscripted_sample"):
        runner.sample = runner._unscripted_sample
        del runner._unscripted_sample
