"""Fixtures every test directory shares: the tiny random-weight checkpoint and its BPE
tokenizer, built once per session (``helpers.tiny`` caches the checkpoint and the trained
BPE, so a module-level ``CKPT = tiny_checkpoint()`` is the same object). Both are shared:
read them; a test that changes a tokenizer builds its own with ``tiny_tokenizer()``.
Imported lazily: tests that need no model (the scheduler's, the KV manager's) load no
torch."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tiny_ckpt():
    """The default tiny checkpoint (llama layout, seed 0)."""
    from helpers.tiny import tiny_checkpoint

    return tiny_checkpoint()


@pytest.fixture(scope="session")
def tiny_tok():
    """The tiny byte-level BPE tokenizer with ChatML specials (one for the session)."""
    from helpers.tiny import tiny_tokenizer

    return tiny_tokenizer()
