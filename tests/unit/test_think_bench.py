"""``thinkstream bench think-while-reading``: seeded task sets with answers checked from
their structured form, the scorer, the report math, batch thinking (``defer_notes``) on the
tiny model, and a small run of the whole benchmark. No timing assertions."""

from __future__ import annotations

import argparse
import json
import random

import pytest
from helpers.tiny import tiny_checkpoint

from thinkstream.bench import think_report
from thinkstream.bench.cli import register
from thinkstream.bench.think_tasks import (
    SETS,
    Task,
    context_qa,
    extract,
    make_tasks,
    ordering,
    score,
    state_tracking,
)
from thinkstream.llm import LLM
from thinkstream.sampling_params import SamplingParams
from thinkstream.thinking import Layout, ThinkConfig

CKPT = tiny_checkpoint()


# ------------------------------------------------------------------ task sets
@pytest.mark.parametrize("kind", SETS)
def test_same_seed_same_tasks(kind: str) -> None:
    a, b = make_tasks(kind, 3, 8), make_tasks(kind, 3, 8)
    assert a == b and len(a) == 8
    assert a != make_tasks(kind, 4, 8)
    for t in a:
        assert 6 <= len(t.sentences) <= 12, t.sentences
        assert t.chunks[0 if t.question_first else -1] == t.question
        assert all(s.endswith(".") for s in t.sentences) and t.question.endswith("?")


def test_context_qa_answers() -> None:
    tasks = context_qa(random.Random(0), 40)
    assert {t.question_first for t in tasks} == {True, False}
    assert {t.answer.isdigit() for t in tasks} == {True, False}
    for t in tasks:
        facts = dict(t.data)
        assert len(facts) == 3 and len(set(facts.values())) == 3 and set(facts) == set(t.names)
        for name, value in facts.items():  # every fact is in the passage, in order
            assert sum(name in s and str(value) in s for s in t.sentences) == 1
        if t.answer.isdigit():
            [name] = [n for n in t.names if n in t.question]
            assert facts[name] == int(t.answer)
        else:
            [value] = [v for v in facts.values() if str(v) in t.question]
            assert facts[t.answer] == value


def test_state_tracking_answers() -> None:
    for t in state_tracking(random.Random(1), 40):
        (op0, count), *ops = t.data
        assert op0 == "start" and len(ops) == len(t.sentences) - 1
        for (op, k), sentence in zip(ops, t.sentences[1:], strict=True):
            assert f" {k} " in sentence and t.names[0] in sentence
            count = count + k if op == "add" else count - k
            assert count >= 0
        assert t.answer == str(count)


def test_ordering_answers_follow_from_the_comparisons() -> None:
    for t in ordering(random.Random(2), 40):
        taller = {n: set() for n in t.names}  # who is taller than whom, closed transitively
        for a, b in t.data:
            taller[a].add(b)
            assert any(s in (f"{a} is taller than {b}.", f"{b} is shorter than {a}.")
                       for s in t.sentences)
        for _ in t.names:
            for a in t.names:
                taller[a] |= {c for b in set(taller[a]) for c in taller[b]}
        others = set(t.names) - {t.answer}
        if "tallest" in t.question:
            assert taller[t.answer] == others
        else:
            assert all(t.answer in taller[o] for o in others) and not taller[t.answer]


def test_scorer() -> None:
    num = Task("state_tracking", ("x.",) * 6, "How many?", "7", names=("Tom",))
    assert score(num, "Tom has 7 apples now.") and score(num, "SEVEN")
    assert score(num, "The answer is seven, not 3.")
    assert not score(num, "Tom has 3, then 7.") and not score(num, "17") and not score(num, "none")
    assert extract(num, "eleven or 4") == "11"
    name = Task("ordering", ("x.",) * 6, "Who is the tallest?", "Amy", names=("Amy", "Ben", "Sam"))
    assert score(name, "amy is the tallest.") and score(name, "The tallest is AMY, then Ben.")
    assert not score(name, "Ben is taller than Amy.") and not score(name, "Amyas") and not score(name, "")
    assert extract(name, "Sam.") == "Sam"


# ------------------------------------------------------------------ report math
def test_wilson_and_mcnemar() -> None:
    lo, hi = think_report.wilson(5, 10)
    assert lo == pytest.approx(0.2366, abs=1e-4) and hi == pytest.approx(0.7634, abs=1e-4)
    assert think_report.wilson(0, 4)[0] == 0.0 and think_report.wilson(4, 4)[1] == 1.0
    assert think_report.mcnemar_worse(0, 0) == 1.0
    assert think_report.mcnemar_worse(3, 0) == 0.125  # all 3 discordant favour the base
    assert think_report.mcnemar_worse(0, 3) == 1.0
    assert think_report.mcnemar_worse(1, 1) == 0.75


# ------------------------------------------------------------ batch thinking
@pytest.mark.parametrize("fold", [True, False])
def test_batch_mode_notes_nothing_before_close(fold: bool) -> None:
    llm = LLM(checkpoint=CKPT, dtype="float32", block_size=4, num_blocks=256, max_num_batched_tokens=64)
    cfg = ThinkConfig(layout=Layout("gap", gap=40), note_tokens=4, pass_tokens=4, depth="D2",
                      defer_notes=True, fold_last_unit=fold)
    s = llm.open_session(messages=[], sampling_params=SamplingParams(temperature=0, max_tokens=3),
                         thinking=cfg)
    ctrl = llm._sessions.thinker(s.id)
    for piece in ["The quick brown fox.\n", "Paris is the capital.\n", "What is it?\n"]:
        s.append(piece)
        list(s.think())
        ctrl.check()
    assert len(ctrl.units) >= 2 and not ctrl.segs and ctrl.reasoning_tokens == 0
    assert ctrl.onset_input_tokens is None
    assert ctrl.S.num_computed_tokens == ctrl.S.num_tokens - 1  # read (prefilled) meanwhile
    out = s.complete()
    assert ctrl.onset_input_tokens == ctrl.S.num_prompt_tokens  # the whole input, at close
    notes = [g for g in ctrl.segs if g.unit is not None]
    # every unit in order; folded: but the last, which D2's integration pass reads
    noted = ctrl.units[:-1] if fold else ctrl.units
    assert [g.unit for g in notes] == list(range(len(noted)))
    assert [g.view_end for g in notes] == [u.end for u in noted]
    assert len(ctrl.segs) == len(notes) + 1 and out.outputs[0].token_ids
    llm.engine.check_integrity()
    assert llm.engine.kv.num_free_blocks == llm.engine.kv.num_blocks


# ------------------------------------------------------------- the benchmark
def test_benchmark_tiny_model(tmp_path) -> None:
    """Sentences paced by engine steps (two per sentence), not seconds: what is read before
    the reasoning starts does not depend on the machine's speed or load."""
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(), "bench")
    out = tmp_path / "think.json"
    args = parser.parse_args([
        "bench", "think-while-reading", "--tasks", "1", "--interval-steps", "2",
        "--modes", "batch,interleaved,gap,grouped,no-think", "--depths", "D1",
        "--all-depths", "batch,gap", "--note-tokens", "3", "--pass-tokens", "3",
        "--max-tokens", "2", "--json", str(out)])
    assert args.fn(args, checkpoint=CKPT) == 0
    doc = json.loads(out.read_text())
    assert doc["schema"] == think_report.SCHEMA
    assert set(doc) >= {"command", "created", "model", "machine", "settings", "sets", "configs",
                        "records", "summary", "targets"}
    configs = [("batch", "D1"), ("interleaved", "D1"), ("gap", "D1"), ("grouped", "D1"),
               ("batch", "D2"), ("gap", "D2"), ("batch", "D3"), ("gap", "D3"), ("no-think", "D1")]
    assert [tuple(c) for c in doc["configs"]] == configs
    recs = doc["records"]
    assert len(recs) == 3 * len(configs)
    first = {k: len(CKPT.tokenizer.encode(make_tasks(k, 0, 1)[0].chunks[0] + "\n",
                                          add_special_tokens=False)) for k in SETS}
    for r in recs:
        assert r["final_answer_s"] >= r["first_answer_s"] >= 0 and 1 <= r["answer_tokens"] <= 2
        assert r["total_tokens"] == r["reasoning_tokens"] + r["answer_tokens"]
        if r["mode"] in ("batch", "no-think"):
            assert r["waited_tokens"] == r["input_tokens"] > 0
        else:  # the first note starts before the second sentence arrives
            assert 0 < r["waited_tokens"] == first[r["set"]] < r["input_tokens"]
        if r["mode"] == "batch":
            assert r["reasoning_after_close"] == r["reasoning_tokens"] > 0
            # every unit noted, but at D2/D3 the last (the integration pass reads it)
            assert r["notes"] == r["units"] - (r["depth"] != "D1")
    rows = {(r["set"], r["mode"], r["depth"]): r for r in doc["summary"]}
    assert len(rows) == 4 * len(configs)
    assert rows["all", "gap", "D1"]["n"] == 3 and "vs_batch" not in rows["all", "batch", "D1"]
    assert rows["all", "gap", "D2"]["vs_batch"]["onset_reduction"] > 0
    assert set(doc["targets"]) == {f"{m} {d}" for m, d in configs if m not in ("batch", "no-think")}
    assert set(doc["targets"]["gap D1"]) >= {"onset_80pct_fewer_tokens_waited",
                                             "final_60pct_less_time",
                                             "accuracy_not_significantly_worse"}
    assert "| all | gap | D3 | 3 |" in think_report.table(doc)


@pytest.mark.parametrize("flags,match", [(["--modes", "diagonal"], "unknown"),
                                         (["--interval-steps", "0"], "--interval-steps")])
def test_bad_arguments_are_rejected(flags: list[str], match: str) -> None:
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(), "bench")
    args = parser.parse_args(["bench", "think-while-reading", *flags])
    with pytest.raises(ValueError, match=match):
        args.fn(args, checkpoint=CKPT)
