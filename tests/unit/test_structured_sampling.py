"""Structured outputs below the engine: packed token masks applied to logits, logit_bias in
the sampler, the grammar compiler (errors naming the field, the cache) and what a matcher
allows, on the tiny tokenizer. Exact assertions; no model."""

from __future__ import annotations

import pytest
import torch

from thinkstream.sampling_params import ParamError, SamplingParams, StructuredOutputsParams
from thinkstream.structured.compiler import ConstraintError, GrammarCompiler
from thinkstream.structured.mask import apply_token_bitmask, full_bitmask, unpack_bitmask
from thinkstream.worker.sampling import apply_logit_bias, build_sampling_tensors, sample

INF = float("-inf")


def bitmask(allowed: list[list[int]], vocab: int) -> torch.Tensor:
    """Packed rows allowing exactly ``allowed[i]`` (None: everything)."""
    out = full_bitmask(len(allowed), vocab)
    for row, ids in enumerate(allowed):
        if ids is None:
            continue
        out[row] = 0
        for t in ids:
            word = int(out[row, t // 32]) | (1 << (t % 32))
            out[row, t // 32] = word - (1 << 32) if word >= 1 << 31 else word
    return out


def st_for(params, vocab, mask=None, banned=None):
    return build_sampling_tensors(params, [None] * len(params), vocab, "cpu", banned, mask)


# ------------------------------------------------------------------ masks
def test_unpack_bitmask_bits_and_width() -> None:
    m = bitmask([[0, 31, 32, 69], None], 70)
    assert m.shape == (2, 3) and m.dtype == torch.int32
    allowed = unpack_bitmask(m, 70)
    assert allowed[0].nonzero().flatten().tolist() == [0, 31, 32, 69]
    assert allowed[1].all()
    # logits wider than the mask: the tokens past 32 * W are never allowed
    assert unpack_bitmask(m, 100)[1].nonzero().flatten().tolist() == list(range(96))


def test_apply_token_bitmask_leaves_free_rows_and_the_input_alone() -> None:
    logits = torch.arange(12.0).reshape(2, 6)
    before = logits.clone()
    out = apply_token_bitmask(logits, bitmask([[1, 4], None], 6))
    assert out.tolist() == [[INF, 1.0, INF, INF, 4.0, INF], [6.0, 7.0, 8.0, 9.0, 10.0, 11.0]]
    assert torch.equal(logits, before)
    free = full_bitmask(2, 6)
    assert apply_token_bitmask(logits, free) is logits  # nothing constrained: no copy


@pytest.mark.parametrize("free_rows, vocab", [((), 70), ((1, 3, 4), 70), ((0,), 100),
                                              ((), 64)])
def test_the_bit_select_equals_masked_fill(free_rows, vocab) -> None:
    g = torch.Generator().manual_seed(vocab + len(free_rows))
    bm = torch.randint(-2**31, 2**31 - 1, (5, 3), dtype=torch.int32, generator=g)
    bm[list(free_rows)] = -1
    logits = torch.randn(5, vocab, generator=g)
    ref = logits.masked_fill(~unpack_bitmask(bm, vocab), INF)
    assert torch.equal(apply_token_bitmask(logits, bm), ref)
    assert torch.equal(apply_token_bitmask(logits.double(), bm), ref.double())  # the fallback


def test_mask_applies_before_greedy_and_before_temperature_and_top_p() -> None:
    logits = torch.tensor([[5.0, 4.0, 3.0, 2.0, 1.0]] * 3)
    params = [SamplingParams(temperature=0), SamplingParams(temperature=0.7, top_p=0.5, seed=1),
              SamplingParams(temperature=0)]
    mask = bitmask([[2, 3], [3], None], 5)
    ids = sample(logits, st_for(params, 5, mask))
    # greedy takes the best allowed; top_p over the allowed tokens only keeps 3; free row: 0
    assert ids.tolist() == [2, 3, 0]


def test_sampled_rows_only_ever_draw_allowed_tokens() -> None:
    n = 4000
    logits = torch.zeros(n, 64)
    allowed = [7, 40, 63]
    ids = sample(logits, st_for([SamplingParams(temperature=1.0)] * n, 64,
                                bitmask([allowed] * n, 64)))
    counts = torch.bincount(ids, minlength=64)
    assert counts.nonzero().flatten().tolist() == allowed
    assert all(abs(int(counts[t]) / n - 1 / 3) < 0.05 for t in allowed)


def test_the_grammar_wins_over_min_tokens_bans() -> None:
    # a finished grammar allows only EOS (2); min_tokens bans it: the row keeps EOS
    logits = torch.tensor([[1.0, 9.0, 0.5, 3.0], [1.0, 9.0, 0.5, 3.0]])
    st = st_for([SamplingParams(temperature=0)] * 2, 4, bitmask([[2], [2, 3]], 4),
                banned=[[2], [2]])
    assert sample(logits, st).tolist() == [2, 3]


# ------------------------------------------------------------------ logit_bias
def test_apply_logit_bias_adds_per_row_and_ignores_ids_past_the_vocabulary() -> None:
    logits = torch.zeros(2, 4)
    out = apply_logit_bias(logits, [((1, 2.5), (3, -100.0)), ((9, 1.0),)])
    assert out.tolist() == [[0.0, 2.5, 0.0, -100.0], [0.0, 0.0, 0.0, 0.0]]
    assert logits.abs().sum() == 0


def test_logit_bias_minus_100_bans_and_plus_100_forces_exactly() -> None:
    logits = torch.tensor([[3.0, 2.9, 2.0, -1.0]] * 3)
    params = [SamplingParams(temperature=0, logit_bias={0: -100}),
              SamplingParams(temperature=0, logit_bias={3: 100}),
              SamplingParams(temperature=0)]
    assert sample(logits, st_for(params, 4)).tolist() == [1, 3, 0]
    draws = sample(logits[:1].expand(2000, 4).contiguous(),
                   st_for([SamplingParams(temperature=1.0, logit_bias={0: -100, 1: -100})] * 2000, 4))
    assert set(draws.tolist()) == {2, 3}  # e^-100 is never drawn


# ------------------------------------------------------------------ compiler
@pytest.fixture(scope="module")
def compiler(tiny_tok):
    return GrammarCompiler(tiny_tok, tiny_tok.vocab_size, [2])


@pytest.mark.parametrize("so, field, words", [
    (StructuredOutputsParams(json={"type": "foo"}), "json", "Invalid type: foo"),
    (StructuredOutputsParams(json={"type": "integer", "minimum": 5, "maximum": 1}), "json",
     "minimum (5) is greater than maximum (1)"),
    (StructuredOutputsParams(json={"type": "string", "pattern": "("}), "json", "unclosed group"),
    (StructuredOutputsParams(json="{not json"), "json", ""),
    (StructuredOutputsParams(json={"not": {"type": "string"}}), "json", "Unimplemented keys"),
    (StructuredOutputsParams(regex="(ab"), "regex", "unclosed group"),
    (StructuredOutputsParams(grammar="start: foo"), "grammar", 'unknown name: "foo"'),
    (StructuredOutputsParams(grammar="root ::= ::"), "grammar", ""),
    (StructuredOutputsParams(choice=["a", 3]), "choice", "choices must be strings"),
])
def test_invalid_constraints_name_their_field(compiler, so, field, words) -> None:
    with pytest.raises(ConstraintError) as err:
        compiler.compile(so)
    assert err.value.field == field and words in err.value.reason
    assert str(err.value).startswith(f"{field}: ")


def test_a_panic_reason_keeps_no_native_backtrace() -> None:
    """llguidance panics (a choice of ~66,000 strings overflows its symbol table) come with
    a native backtrace naming build paths; the client is told the assertion only."""
    panic = ("panic: assertion failed: grammar.symbols.len() < u16::MAX as usize - 10\n"
             "<backtrace>\n  16: type_call\n     at /tmp/python-build/Objects/typeobject.c:1091"
             "\n</backtrace>")
    err = ConstraintError("choice", panic)
    assert err.reason == "panic: assertion failed: grammar.symbols.len() < u16::MAX as usize - 10"
    assert str(err) == f"choice: {err.reason}"


def test_compiled_grammars_are_cached_by_the_params(compiler) -> None:
    so = StructuredOutputsParams(json={"type": "object", "properties": {"a": {"type": "integer"}}})
    first = compiler.compile(so)
    assert compiler.compile(StructuredOutputsParams(json=so.json_schema)) is first
    assert compiler.compile(StructuredOutputsParams(regex="a+")) is not first
    small = GrammarCompiler(compiler.tokenizer, 320, [2], cache_size=2)
    grammars = [small.compile(StructuredOutputsParams(choice=[str(i)])) for i in range(3)]
    assert len(small) == 2 and small.compile(grammars[0].constraint) is not grammars[0]


def allowed_texts(compiler, so: StructuredOutputsParams, prefix: str = "") -> set[str]:
    tok = compiler.tokenizer
    m = compiler.compile(so).matcher()
    assert m.consume_tokens(tok.encode(prefix, add_special_tokens=False))
    row = full_bitmask(1, tok.vocab_size)
    m.unsafe_compute_mask_ptr(row.data_ptr(), row.numel() * 4)
    return {"<eos>" if t == 2 else tok.decode([t])
            for t in unpack_bitmask(row, tok.vocab_size)[0].nonzero().flatten().tolist()}


def test_eos_only_where_the_grammar_can_end_and_no_special_tokens(compiler) -> None:
    so = StructuredOutputsParams(regex="ab+")
    assert allowed_texts(compiler, so) == {"a"}
    assert "<eos>" not in allowed_texts(compiler, so, "a")
    assert allowed_texts(compiler, so, "ab") == {"<eos>", "b"}
    anything = allowed_texts(compiler, StructuredOutputsParams(regex="(?s:.*)"))
    assert "<eos>" in anything and not anything & {"<unk>", "<|im_start|>", "<|im_end|>"}


def test_json_is_compact_with_spaces_after_separators(compiler) -> None:
    so = StructuredOutputsParams(json={"type": "object", "properties": {
        "b": {"type": "integer"}, "a": {"type": "boolean"}}, "required": ["b", "a"],
        "additionalProperties": False})
    assert allowed_texts(compiler, so) == {"{"}
    assert allowed_texts(compiler, so, '{"b"') == {":"}
    assert allowed_texts(compiler, so, '{"b":') == {" "}  # the schema's key order, ": "
    assert allowed_texts(compiler, so, '{"b": 1') == {",", *"0123456789"}  # "a" is required
    assert allowed_texts(compiler, so, '{"b": 1, "a": true') == {"}"}


def test_structured_outputs_params_keep_key_order_and_stay_hashable() -> None:
    so = StructuredOutputsParams(json={"b": 1, "a": 2})
    assert so.json == '{"b": 1, "a": 2}' and hash(SamplingParams(structured_outputs=so))
    with pytest.raises(ParamError, match="json must be a JSON schema"):
        StructuredOutputsParams(json={"a": object()})
