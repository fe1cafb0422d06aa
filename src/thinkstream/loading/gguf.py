"""GGUF -> ``ModelConfig`` + canonical float32 tensors.

Hyper-parameters come from ``{arch}.*`` metadata; what GGUF leaves implicit is filled in as
llama.cpp does (Gemma 3: every 6th layer global, local RoPE base 10000, sqrt(hidden) embedding
scale). Tensors are dequantized with ``gguf.quants.dequantize``. Two storage quirks are undone:

* ``llama`` arch: llama.cpp's converter interleaves the two RoPE halves of each q/k head
  (rows ``[h, 2, d/2]`` stored as ``[h, d/2, 2]``); we restore Hugging Face order.
* Gemma: norms are stored as ``1 + w`` already, which is the multiplicative weight we want.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from gguf import GGMLQuantizationType
from gguf.quants import dequantize

from thinkstream.config import ARCHITECTURES, ModelConfig, RopeScaling
from thinkstream.loading.errors import CorruptModelError, UnsupportedArchitectureError
from thinkstream.loading.gguf_reader import GGUFFile
from thinkstream.loading.gguf_tokenizer import eos_token_ids
from thinkstream.loading.names import gguf_to_canonical

GEMMA3_SLIDING_PATTERN = 6  # layer i is global when (i + 1) % 6 == 0
GEMMA3_LOCAL_ROPE_THETA = 10000.0
DEQUANT_CHUNK_BYTES = 4 << 20  # float32 output dequantized per call


def _f32(value: Any) -> float:
    """GGUF stores floats as float32: 1e-5 reads back as 9.99999974e-06. Take the shortest
    decimal that rounds to the same float32, which is what the source config.json said."""
    return float(str(np.float32(value)))


def _rope_scaling(md: dict[str, Any], arch: str, path: Any) -> RopeScaling | None:
    kind = md.get(f"{arch}.rope.scaling.type")
    factor = md.get(f"{arch}.rope.scaling.factor")
    if kind in (None, "none") or factor in (None, 1.0, 0.0):
        return None
    if kind != "linear":
        raise UnsupportedArchitectureError(f"{path}: unsupported rope scaling {kind!r}")
    return RopeScaling("linear", _f32(factor))


def gguf_config(gf: GGUFFile) -> ModelConfig:
    md = gf.metadata
    arch = md.get("general.architecture")
    if arch not in ARCHITECTURES:
        raise UnsupportedArchitectureError(
            f"{gf.path}: architecture {arch!r} is not supported (supported: {', '.join(ARCHITECTURES)})")
    if "rope_freqs.weight" in gf.tensors:
        raise UnsupportedArchitectureError(f"{gf.path}: per-dimension rope_freqs (Llama 3.1 scaling) is not supported")

    def get(key: str, default: Any = None) -> Any:
        value = md.get(f"{arch}.{key}", default)
        if value is None:
            raise CorruptModelError(f"{gf.path}: missing metadata {arch}.{key}")
        return value

    hidden, heads, layers = int(get("embedding_length")), int(get("attention.head_count")), int(get("block_count"))
    kv_heads = get("attention.head_count_kv", heads)
    head_dim = int(get("attention.key_length", hidden // heads))
    fields: dict[str, Any] = {}
    if arch == "gemma3":
        window = int(get("attention.sliding_window"))
        fields = dict(
            hidden_act="gelu_tanh", embedding_scale=math.sqrt(hidden), qk_norm=True, sandwich_norms=True,
            sliding_window=window, rope_local_theta=GEMMA3_LOCAL_ROPE_THETA,
            layer_types=tuple("full" if (i + 1) % GEMMA3_SLIDING_PATTERN == 0 else "sliding" for i in range(layers)),
            # llama.cpp: Gemma 3 27B (62 layers) scales by (hidden/heads)^-0.5, the others by head_dim^-0.5
            query_scale=(hidden / heads) ** -0.5 if layers == 62 else head_dim**-0.5,
        )
    elif arch == "qwen3":
        fields = dict(qk_norm=True)
    if "blk.0.attn_q.bias" in gf.tensors:
        fields["attention_bias"] = True
    softcap = md.get(f"{arch}.final_logit_softcapping")
    if softcap:
        fields["final_logit_softcap"] = float(softcap)
    return ModelConfig(
        architecture=arch,
        vocab_size=len(md["tokenizer.ggml.tokens"]),
        hidden_size=hidden,
        intermediate_size=int(get("feed_forward_length")),
        num_layers=layers,
        num_heads=heads,
        num_kv_heads=int(np.max(kv_heads)),  # some files store one count per layer
        head_dim=head_dim,
        rms_norm_eps=_f32(get("attention.layer_norm_rms_epsilon")),
        rope_theta=_f32(get("rope.freq_base", 10000.0)),
        rope_scaling=_rope_scaling(md, arch, gf.path),
        max_position_embeddings=int(get("context_length", 2048)),
        tie_word_embeddings="output.weight" not in gf.tensors,
        bos_token_id=md.get("tokenizer.ggml.bos_token_id"),
        eos_token_ids=eos_token_ids(md),
        **fields,
    )


def _unpermute_rope(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Undo llama.cpp's q/k row permutation: rows (h, d/2, 2) -> (h, 2, d/2)."""
    rows, cols = w.shape
    return w.reshape(n_heads, rows // n_heads // 2, 2, cols).transpose(1, 2).reshape(rows, cols)


def _dequantize_rows(rows: np.ndarray, qtype: GGMLQuantizationType, k: int, what: str) -> np.ndarray:
    """rows (N, bytes per row) uint8 of ggml type ``qtype`` -> (N, k) float32, in chunks of
    rows: the dequantizer's temporaries stay small (an embedding's would be several times
    its float32 size). Raises UnsupportedArchitectureError for a type gguf cannot decode."""
    array = np.empty((rows.shape[0], k), dtype=np.float32)
    step = max(1, DEQUANT_CHUNK_BYTES // max(1, 4 * k))
    try:
        for i in range(0, rows.shape[0], step):
            array[i : i + step] = dequantize(np.asarray(rows[i : i + step]), qtype)
    except NotImplementedError as err:
        raise UnsupportedArchitectureError(f"{what} uses unsupported type {qtype.name}") from err
    return array


def _dequantize(gf: GGUFFile, name: str) -> torch.Tensor:
    info = gf.tensors[name]
    raw = gf.raw(name)
    if info.qtype == GGMLQuantizationType.F32:
        array = raw.view(np.float32).reshape(info.shape).copy()
    else:
        array = _dequantize_rows(raw.reshape(-1, raw.shape[-1]), info.qtype, info.shape[-1],
                                 f"{gf.path}: tensor {name}")
    return torch.from_numpy(array.reshape(info.shape))


@dataclass(frozen=True)
class GGUFBlocks:
    """A weight matrix as the GGUF file stores it: ``blocks`` (N, bytes per row) uint8 of
    ggml type ``qtype`` (an int, ``GGMLQuantizationType``), each row ``k`` values."""

    qtype: int
    blocks: torch.Tensor
    k: int

    @property
    def rows(self) -> int:
        return self.blocks.shape[0]


def gguf_blocks(gf: GGUFFile, config: ModelConfig, qtypes: frozenset[int]) -> dict[str, GGUFBlocks]:
    """The 2-D quantized weights of types ``qtypes`` (the ones the kernels decode), as
    stored, under canonical names; rows reordered as ``gguf_tensors`` reorders them."""
    out: dict[str, GGUFBlocks] = {}
    for name, info in gf.tensors.items():
        canonical = gguf_to_canonical(name)
        if canonical is None or len(info.shape) != 2 or int(info.qtype) not in qtypes:
            continue
        raw = torch.from_numpy(np.array(gf.raw(name)))  # (N, bytes per row), a copy
        if config.architecture == "llama" and canonical.endswith(("q_proj.weight", "k_proj.weight")):
            raw = _unpermute_rope(raw, config.num_heads if "q_proj" in canonical else config.num_kv_heads)
        out[canonical] = GGUFBlocks(int(info.qtype), raw.contiguous(), info.shape[1])
    return out


# decoder matrices whose dense copy ``gguf_tensors(lazy=...)`` leaves out: the GGUF-native
# linears (models/gguf_linear.py) compute on their blocks and mostly keep no dense copy
LINEAR_WEIGHTS = tuple(f".{m}.weight" for m in (
    "attn.q_proj", "attn.k_proj", "attn.v_proj", "attn.o_proj", "mlp.gate_proj", "mlp.up_proj",
    "mlp.down_proj"))


def dense_from_blocks(b: GGUFBlocks) -> torch.Tensor:
    """The (rows, k) float32 matrix of ``b``: what ``gguf_tensors`` gives for it (rows
    dequantize independently, so ``gguf_blocks``' row reorder commutes)."""
    rows = b.blocks.numpy()
    qtype = GGMLQuantizationType(b.qtype)
    return torch.from_numpy(_dequantize_rows(rows, qtype, b.k, f"GGUF blocks of type {qtype.name}"))


def dense_tensors(tensors: dict[str, torch.Tensor], blocks: dict[str, GGUFBlocks]) -> dict[str, torch.Tensor]:
    """``tensors`` with each placeholder (a meta tensor, ``gguf_tensors(lazy=...)``)
    dequantized from its ``blocks``; raises ValueError where its blocks are missing."""
    out = dict(tensors)
    for name, t in tensors.items():
        if t.is_meta:
            if name not in blocks:
                raise ValueError(f"weight {name} was not loaded and has no GGUF blocks")
            out[name] = dense_from_blocks(blocks[name])
    return out


def gguf_tensors(gf: GGUFFile, config: ModelConfig, keep: Callable[[str], bool] | None = None,
                 lazy: frozenset[int] = frozenset()) -> dict[str, torch.Tensor]:
    """Every tensor thinkstream uses (or those whose canonical name ``keep`` accepts: a
    weight streamer reads one layer), dequantized to float32 under its canonical name.
    The decoder matrices (``LINEAR_WEIGHTS``) of ggml types ``lazy`` are not read: a meta
    tensor of their shape stands in (``dense_tensors`` / ``dense_from_blocks`` make them
    from ``gguf_blocks`` where a dense copy turns out to be needed)."""
    out: dict[str, torch.Tensor] = {}
    for name, info in gf.tensors.items():
        canonical = gguf_to_canonical(name)
        if canonical is None or (keep is not None and not keep(canonical)):
            continue
        if (int(info.qtype) in lazy and len(info.shape) == 2 and canonical.startswith("layers.")
                and canonical.endswith(LINEAR_WEIGHTS)):
            out[canonical] = torch.empty(info.shape, dtype=torch.float32, device="meta")
            continue
        tensor = _dequantize(gf, name)
        if config.architecture == "llama" and canonical.endswith(("q_proj.weight", "k_proj.weight")):
            heads = config.num_heads if "q_proj" in canonical else config.num_kv_heads
            tensor = _unpermute_rope(tensor, heads)
        elif config.architecture == "llama" and canonical.endswith(("q_proj.bias", "k_proj.bias")):
            heads = config.num_heads if "q_proj" in canonical else config.num_kv_heads
            tensor = _unpermute_rope(tensor[:, None], heads)[:, 0]
        out[canonical] = tensor
    return out
