"""Model files -> ``ModelConfig`` + canonical float32 tensors + ``Tokenizer``.

Formats: GGUF (``gguf_reader``, ``gguf``, ``gguf_tokenizer``) and Hugging Face directories
(``hf``, ``tokenizer``). Checkpoint naming quirks end here (``names``); models see canonical
names only.
"""

from thinkstream.loading.chat_template import NoChatTemplateError
from thinkstream.loading.checkpoint import LoadedCheckpoint, load_checkpoint, load_tokenizer
from thinkstream.loading.default_model import resolve_model_path
from thinkstream.loading.tokenizer import Tokenizer

__all__ = [
    "LoadedCheckpoint",
    "NoChatTemplateError",
    "Tokenizer",
    "load_checkpoint",
    "load_tokenizer",
    "resolve_model_path",
]
