"""Model files -> ``ModelConfig`` + canonical float32 tensors + ``Tokenizer``.

Formats: GGUF (``gguf_reader``, ``gguf``, ``gguf_tokenizer``) and Hugging Face directories
(``hf``, ``tokenizer``). Checkpoint naming quirks end here (``names``); models see canonical
names only.

The exports are lazy (``thinkstream.lazy``): importing ``loading.errors`` (the CLI does, to
report a bad model) loads no torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from thinkstream.lazy import lazy_exports

_EXPORTS = {
    "LoadedCheckpoint": "thinkstream.loading.checkpoint",
    "NoChatTemplateError": "thinkstream.loading.chat_template",
    "Tokenizer": "thinkstream.loading.tokenizer",
    "load_checkpoint": "thinkstream.loading.checkpoint",
    "load_tokenizer": "thinkstream.loading.checkpoint",
    "resolve_model_path": "thinkstream.loading.default_model",
}
__all__ = [
    "LoadedCheckpoint",
    "NoChatTemplateError",
    "Tokenizer",
    "load_checkpoint",
    "load_tokenizer",
    "resolve_model_path",
]

if TYPE_CHECKING:
    from thinkstream.loading.chat_template import NoChatTemplateError
    from thinkstream.loading.checkpoint import LoadedCheckpoint, load_checkpoint, load_tokenizer
    from thinkstream.loading.default_model import resolve_model_path
    from thinkstream.loading.tokenizer import Tokenizer

__getattr__ = lazy_exports(__name__, _EXPORTS)
