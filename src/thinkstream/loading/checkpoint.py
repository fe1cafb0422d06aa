"""``load_checkpoint`` / ``load_tokenizer``: one entry point for every format."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from thinkstream.config import ModelConfig
from thinkstream.loading.default_model import resolve_model_path
from thinkstream.loading.errors import CorruptModelError, MissingWeightError, ModelLoadError
from thinkstream.loading.gguf import GGUFBlocks, gguf_blocks, gguf_config, gguf_tensors
from thinkstream.loading.gguf_reader import GGUFFile, read_gguf
from thinkstream.loading.gguf_tokenizer import build_gguf_tokenizer
from thinkstream.loading.hf import hf_config, hf_tensors
from thinkstream.loading.names import expected_shapes
from thinkstream.loading.tokenizer import Tokenizer, load_hf_tokenizer

# ggml types the GGUF-native kernels decode (kernels/gguf.py BLOCKS): Q4_0, Q4_1, Q5_0,
# Q5_1, Q8_0, Q4_K, Q5_K, Q6_K
BLOCK_TYPES = frozenset({2, 3, 6, 7, 8, 12, 13, 14})


@dataclass(frozen=True)
class LoadedCheckpoint:
    config: ModelConfig
    tensors: dict[str, torch.Tensor]  # canonical names, float32, CPU
    tokenizer: Tokenizer
    path: Path
    # GGUF files: the quantized weights as stored (canonical names), for the GGUF-native
    # linears (models/gguf_linear.py); empty for other formats
    blocks: dict[str, GGUFBlocks] = field(default_factory=dict)


def _check_tensors(config: ModelConfig, tensors: dict[str, torch.Tensor], path: Path) -> None:
    shapes = expected_shapes(config)
    missing = [name for name in shapes if name not in tensors]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise MissingWeightError(f"{path}: missing weights {shown}")
    for name, shape in shapes.items():
        if tuple(tensors[name].shape) != shape:
            raise CorruptModelError(
                f"{path}: tensor {name} has shape {tuple(tensors[name].shape)}, expected {shape}")


def _is_gguf(path: Path) -> bool:
    if path.is_dir():
        return False
    if path.suffix == ".gguf":
        return True
    with open(path, "rb") as f:
        return f.read(4) == b"GGUF"


def load_checkpoint(model: str | Path | None, tensors: bool = True,
                    block_types: frozenset[int] = BLOCK_TYPES,
                    dense_linears: bool = True) -> LoadedCheckpoint:
    """Config, canonical float32 tensors and tokenizer of a GGUF file or HF directory;
    for a GGUF file also its quantized matrices of ``block_types`` as stored.
    ``tensors=False``: no tensor is read (``tensors`` and ``blocks`` are empty; a weight
    streamer reads them later with ``read_tensors``). ``dense_linears=False`` (GGUF): the
    decoder matrices that are in ``blocks`` are not dequantized, a meta tensor stands in
    (``build_model`` makes the dense copies it needs from the blocks: the GGUF-native
    linears need none but on the portable build; ~1.9 s of SmolLM2's load)."""
    path = resolve_model_path(model)
    blocks: dict[str, GGUFBlocks] = {}
    if _is_gguf(path):
        gf = read_gguf(path)
        config, tokenizer = gguf_config(gf), build_gguf_tokenizer(gf.metadata, str(path))
        lazy = frozenset() if dense_linears else block_types
        weights = gguf_tensors(gf, config, lazy=lazy) if tensors else {}
        blocks = gguf_blocks(gf, config, block_types) if tensors else {}
    elif path.is_dir():
        config, tokenizer = hf_config(path), load_hf_tokenizer(path)
        weights = hf_tensors(path, config) if tensors else {}
    else:
        raise ModelLoadError(f"{path}: neither a GGUF file nor a Hugging Face model directory")
    if tensors:
        _check_tensors(config, weights, path)
    return LoadedCheckpoint(config=config, tensors=weights, tokenizer=tokenizer, path=path,
                            blocks=blocks)


def read_tensors(path: Path, config: ModelConfig, keep: Callable[[str], bool],
                 gguf: GGUFFile | None = None) -> dict[str, torch.Tensor]:
    """The canonical float32 tensors of ``path`` whose names ``keep`` accepts (``gguf``:
    the file's parsed header, to skip parsing it again)."""
    if gguf is not None or _is_gguf(path):
        return gguf_tensors(gguf or read_gguf(path), config, keep)
    return hf_tensors(path, config, keep)


def load_tokenizer(model: str | Path | None) -> Tokenizer:
    """The tokenizer alone (no tensor is read)."""
    path = resolve_model_path(model)
    if _is_gguf(path):
        return build_gguf_tokenizer(read_gguf(path).metadata, str(path))
    if path.is_dir():
        return load_hf_tokenizer(path)
    raise ModelLoadError(f"{path}: neither a GGUF file nor a Hugging Face model directory")
