"""EngineConfig refuses bad values when it is made, before any model loads, with a
ValueError naming the field (the CLI prints it as ``thinkstream: error: ...``)."""

from __future__ import annotations

import pytest

from thinkstream.config import EngineConfig


@pytest.mark.parametrize("threads", [0, -2, 1.5, "2"])
def test_num_threads_below_one_or_not_an_integer_is_refused(threads: object) -> None:
    with pytest.raises(ValueError, match="num_threads"):
        EngineConfig(num_threads=threads)


@pytest.mark.parametrize("threads", [None, 1, 3])
def test_num_threads_none_or_positive_is_kept(threads: int | None) -> None:
    assert EngineConfig(num_threads=threads).num_threads == threads


def test_quantization_none_spelled_out() -> None:
    """"none" (the CLI's spelling) is None; anything else unknown is refused naming the field."""
    assert EngineConfig(quantization="none").quantization is None
    with pytest.raises(ValueError, match="quantization must be"):
        EngineConfig(quantization="q4")
