from __future__ import annotations

import pytest
from tokenizers import ByteLevelBPETokenizer, SentencePieceBPETokenizer

from thinkstream.engine.detokenize import IncrementalDetokenizer, StopStringMatcher

CORPUS = [
    "hello world, the quick brown fox jumps over the lazy dog.",
    "User: hi there\n\nAssistant: hello, how can I help?",
    "the fox and the dog are friends in the world",
] * 30
TEXT = "hello 😀 世界 the fox 🦊 jumps! 日本語 ok"


@pytest.fixture(scope="module")
def byte_bpe() -> ByteLevelBPETokenizer:
    tok = ByteLevelBPETokenizer()
    tok.train_from_iterator(
        CORPUS, vocab_size=300, min_frequency=2, show_progress=False, special_tokens=["<|eos|>"]
    )
    return tok


@pytest.fixture(scope="module")
def sp_bpe() -> SentencePieceBPETokenizer:
    tok = SentencePieceBPETokenizer()
    tok.train_from_iterator(
        CORPUS, vocab_size=200, min_frequency=2, show_progress=False, special_tokens=["<unk>", "</s>"]
    )
    return tok


def stream(detok: IncrementalDetokenizer, ids: list[int]) -> list[str]:
    return [detok.push(i) for i in ids] + [detok.flush()]


# --- IncrementalDetokenizer ------------------------------------------------------------------


def test_byte_level_multibyte_chars_never_split(byte_bpe: ByteLevelBPETokenizer) -> None:
    ids = byte_bpe.encode(TEXT).ids
    # Precondition: the tiny vocabulary really splits characters across tokens.
    assert any("\ufffd" in byte_bpe.decode([i]) for i in ids)
    detok = IncrementalDetokenizer(byte_bpe)
    deltas = stream(detok, ids)
    assert "".join(deltas) == byte_bpe.decode(ids) == TEXT
    assert detok.text == TEXT
    assert not any("\ufffd" in d for d in deltas)
    assert deltas[-1] == ""  # nothing left over at the end
    assert sum(1 for d in deltas if d == "") > 3  # partial characters were held back


def test_byte_level_after_a_prompt(byte_bpe: ByteLevelBPETokenizer) -> None:
    prompt = byte_bpe.encode("User: hi there 世").ids
    out = byte_bpe.encode("界 and 😀 the fox").ids
    detok = IncrementalDetokenizer(byte_bpe, prompt_token_ids=prompt)
    deltas = stream(detok, out)
    assert "".join(deltas) == byte_bpe.decode(prompt + out)[len(byte_bpe.decode(prompt)) :]
    assert not any("\ufffd" in d for d in deltas)


def test_sentencepiece_leading_spaces_kept(sp_bpe: SentencePieceBPETokenizer) -> None:
    text = "hello world the fox and the dog"
    ids = sp_bpe.encode(text).ids
    # Precondition: decoding one token alone drops its leading space.
    assert "".join(sp_bpe.decode([i]) for i in ids) != text
    detok = IncrementalDetokenizer(sp_bpe)
    assert "".join(stream(detok, ids)) == sp_bpe.decode(ids) == text


def test_sentencepiece_first_output_token_after_prompt(sp_bpe: SentencePieceBPETokenizer) -> None:
    prompt = sp_bpe.encode("hello world").ids
    out = sp_bpe.encode("the fox").ids
    detok = IncrementalDetokenizer(sp_bpe, prompt_token_ids=prompt)
    deltas = stream(detok, out)
    assert "".join(deltas) == " the fox"  # the space before the first output word survives


def test_special_tokens_skipped_or_kept(byte_bpe: ByteLevelBPETokenizer) -> None:
    eos = byte_bpe.token_to_id("<|eos|>")
    ids = byte_bpe.encode("the fox").ids + [eos] + byte_bpe.encode(" ok").ids
    skipped = IncrementalDetokenizer(byte_bpe, skip_special_tokens=True)
    assert "".join(stream(skipped, ids)) == "the fox ok"
    kept = IncrementalDetokenizer(byte_bpe, skip_special_tokens=False)
    assert "".join(stream(kept, ids)) == "the fox<|eos|> ok"


def test_flush_returns_an_unfinished_character(byte_bpe: ByteLevelBPETokenizer) -> None:
    ids = byte_bpe.encode("ok 😀").ids
    detok = IncrementalDetokenizer(byte_bpe)
    deltas = [detok.push(i) for i in ids[:-1]]  # stop before the emoji's last byte
    assert "".join(deltas) == "ok "
    tail = detok.flush()
    assert tail.endswith("\ufffd") and detok.text == "ok " + tail


def test_window_stays_small(byte_bpe: ByteLevelBPETokenizer) -> None:
    ids = byte_bpe.encode("the fox " * 200).ids
    detok = IncrementalDetokenizer(byte_bpe, prompt_token_ids=ids[:50])
    for i in ids:
        detok.push(i)
        assert len(detok._ids) <= 4  # O(window) per token, whatever the length
    assert detok.text == byte_bpe.decode(ids)


# --- StopStringMatcher -----------------------------------------------------------------------


def feed_all(matcher: StopStringMatcher, deltas: list[str]) -> tuple[list[str], bool]:
    out = []
    for d in deltas:
        text, stopped = matcher.feed(d)
        out.append(text)
        if stopped:
            return out, True
    out.append(matcher.flush())
    return out, False


def test_stop_split_across_deltas() -> None:
    m = StopStringMatcher(["\n\nUser:"])
    out, stopped = feed_all(m, ["Sure.", "\n", "\nUs", "er:", " more"])
    assert stopped
    assert out == ["Sure.", "", "", ""]  # the partial stop string is held back, then dropped
    assert "".join(out) == "Sure."


def test_held_back_text_released_when_not_a_stop() -> None:
    m = StopStringMatcher(["\n\nUser:"])
    out, stopped = feed_all(m, ["a\n", "\nUs", "e it"])
    assert not stopped
    assert out == ["a", "", "\n\nUse it", ""]


def test_include_stop_str_in_output() -> None:
    m = StopStringMatcher(["\n\nUser:"], include_stop_str_in_output=True)
    out, stopped = feed_all(m, ["Sure.", "\n", "\nUs", "er: ignored"])
    assert stopped and "".join(out) == "Sure.\n\nUser:"


def test_text_after_the_stop_in_the_same_delta_is_dropped() -> None:
    m = StopStringMatcher(["END"])
    assert m.feed("abc END def") == ("abc ", True)
    assert m.feed("more") == ("", True)  # stays stopped


def test_overlapping_candidates_first_to_complete_wins() -> None:
    # "bc" completes before "abcd" would: stop at "bc", however the text is split.
    for deltas in (["abcd"], ["a", "b", "c", "d"], ["ab", "cd"]):
        out, stopped = feed_all(StopStringMatcher(["abcd", "bc"]), deltas)
        assert stopped and "".join(out) == "a", deltas
    # Same end: the one that starts first (the longer) wins.
    m = StopStringMatcher(["cd", "bcd"], include_stop_str_in_output=True)
    assert m.feed("abcde") == ("abcd", True)
    m = StopStringMatcher(["cd", "bcd"])
    assert m.feed("abcde") == ("a", True)


def test_overlapping_prefixes_hold_back_longest_candidate() -> None:
    m = StopStringMatcher(["xxy", "xy!"])
    assert m.feed("axx") == ("a", False)  # "xx" could start "xxy"
    assert m.feed("x") == ("x", False)  # "xxx": only "xx" can still matter
    assert m.feed("y") == ("", True)  # "xxy" completes


def test_no_stop_strings_passes_through() -> None:
    m = StopStringMatcher([])
    assert m.feed("hello\n\nUser:") == ("hello\n\nUser:", False)
    assert m.flush() == ""


def test_empty_stop_string_rejected() -> None:
    with pytest.raises(ValueError):
        StopStringMatcher(["ok", ""])


def test_detokenizer_and_matcher_together(byte_bpe: ByteLevelBPETokenizer) -> None:
    text = "hello 😀\n\nUser: the fox"
    ids = byte_bpe.encode(text).ids
    detok = IncrementalDetokenizer(byte_bpe)
    m = StopStringMatcher(["\n\nUser:"])
    emitted = ""
    for i in ids:
        out, stopped = m.feed(detok.push(i))
        emitted += out
        if stopped:
            break
    assert stopped and emitted == "hello 😀"
