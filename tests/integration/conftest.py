"""Real models shared by the integration tests: each file is loaded once per session
(transformers' GGUF loading is slow: ~20 s for SmolLM2, ~30-90 s for Gemma 3)."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")


class References:
    """Loads on first use and keeps: our checkpoints, transformers' models and tokenizers."""

    def __init__(self) -> None:
        self._loaded: dict[tuple[str, str | None], Any] = {}

    def _get(self, kind: str, name: str | None, load: Callable[[], Any]) -> Any:
        if (kind, name) not in self._loaded:
            self._loaded[kind, name] = load()
        return self._loaded[kind, name]

    def path(self, name: str | None):
        from thinkstream.loading import resolve_model_path

        return self._get("path", name, lambda: resolve_model_path(name))

    def checkpoint(self, name: str | None):
        from thinkstream.loading import load_checkpoint

        return self._get("checkpoint", name, lambda: load_checkpoint(name))

    def hf_model(self, name: str | None):
        import torch
        import transformers

        path = self.path(name)
        return self._get("hf_model", name, lambda: transformers.AutoModelForCausalLM.from_pretrained(
            str(path.parent), gguf_file=path.name, dtype=torch.float32).eval())

    def hf_tokenizer(self, name: str | None):
        import transformers

        path = self.path(name)
        return self._get("hf_tokenizer", name, lambda: transformers.AutoTokenizer.from_pretrained(
            str(path.parent), gguf_file=path.name))


@pytest.fixture(scope="session")
def refs() -> References:
    pytest.importorskip("transformers")
    return References()
