"""Weight streaming: a model whose layers stay on disk, for hosts smaller than the model
(TPI-LLM, Li et al. 2024: a sliding window of layers loaded ahead of use; DeepSpeed
ZeRO-Inference's weight offload).

The embedding, final norm and head stay in memory; the decoder layers are read from the
checkpoint (GGUF: memory-mapped, dequantized per tensor; safetensors: read per tensor)
when the forward reaches them. ``LayerStream`` stands in for ``model.layers``: iterating
it yields layer i once loaded, and meanwhile a prefetch thread loads the next ones, so at
most ``window`` layers are in memory (the one computing and those loaded ahead). A layer
is emptied (its tensors moved to the meta device) as soon as the forward asks for the
next one. The window wraps around: the end of one step loads the first layers of the
next. Output is identical to the loaded model: the same tensors, built the same way.

With tensor parallelism each rank streams its own slice (``plan.shard_tensors`` on each
layer as read), wrapped with the collectives by ``wrap``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from thinkstream.config import EngineConfig, ModelConfig
from thinkstream.distributed.plan import RankShard, local_config, shard_tensors
from thinkstream.loading.checkpoint import read_tensors
from thinkstream.loading.gguf_reader import read_gguf
from thinkstream.models.head import LMHead
from thinkstream.models.layers import DecoderLayer, fuse_canonical
from thinkstream.models.quant import quantize_linears
from thinkstream.models.registry import MODEL_CLASSES

log = logging.getLogger("thinkstream.distributed.streaming")
MIB = 1 << 20


class LayerStream(nn.Module):
    """The decoder layers, loaded on demand: ``load(i)`` builds layer i (on the prefetch
    thread), at most ``window`` are held at once."""

    def __init__(self, load: Callable[[int], nn.Module], num_layers: int, window: int) -> None:
        super().__init__()
        self._load = load
        self.num_layers = num_layers
        self.window = min(window, num_layers)
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="thinkstream-prefetch")
        self._pending: dict[int, Future] = {}
        self.loads = 0  # layers read from disk so far

    def __len__(self) -> int:
        return self.num_layers

    def _fetch(self, i: int) -> None:
        """Layers i .. i + window - 1 (wrapping) loaded or loading."""
        for j in range(i, i + self.window):
            k = j % self.num_layers
            if k not in self._pending:
                self._pending[k] = self._pool.submit(self._load, k)
                self.loads += 1

    def __iter__(self) -> Iterator[nn.Module]:
        resident = self.window == self.num_layers  # everything fits: load once, keep
        for i in range(self.num_layers):
            self._fetch(i)  # i (computing next) and the window - 1 after it
            module = self._pending[i].result()
            yield module
            if not resident:
                del self._pending[i]
                module.to("meta")  # release its tensors now (the forward holds a reference)
        self._fetch(0)  # the next step's first layers load while this step samples

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._pending.clear()


def _trim_malloc() -> None:
    """Fix glibc's mmap threshold so freed layer buffers go back to the OS (its dynamic
    threshold would otherwise serve them from the heap, which never shrinks). Best effort:
    other C libraries are left alone."""
    name = ctypes.util.find_library("c")
    if name is None:
        return
    try:
        libc = ctypes.CDLL(name)
        libc.mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD: 1 MiB
    except (OSError, AttributeError):
        pass


def _nbytes(module: nn.Module) -> int:
    seen, total = set(), 0
    for t in [*module.parameters(), *module.buffers()]:
        if t is not None and t.device.type != "meta" and t.untyped_storage().data_ptr() not in seen:
            seen.add(t.untyped_storage().data_ptr())
            total += t.untyped_storage().nbytes()
    return total


@dataclass(frozen=True)
class _Source:
    """Where a rank's weights come from and how one layer is built from them."""

    path: Path
    gguf: object | None  # the parsed GGUF header, or None for a Hugging Face directory
    mcfg: ModelConfig
    local: ModelConfig  # the rank's slice (== mcfg without tensor parallelism)
    shard: RankShard | None
    cfg: EngineConfig
    dtype: torch.dtype
    device: torch.device
    wrap: Callable[[nn.Module], None] | None

    def read(self, keep: Callable[[str], bool]) -> dict[str, torch.Tensor]:
        """Canonical float32 tensors (this rank's slices) whose names ``keep`` accepts."""
        t = read_tensors(self.path, self.mcfg, keep, self.gguf)
        return shard_tensors(t, self.mcfg, self.shard) if self.shard is not None else t

    def layer(self, i: int) -> nn.Module:
        """Decoder layer ``i``, read, fused, cast (quantized, wrapped) as ``build_model``
        would build it."""
        prefix = f"layers.{i}."
        tensors = fuse_canonical(self.read(lambda n: n.startswith(prefix)), self.local)
        state = {k.removeprefix(prefix): v.to(device=self.device, dtype=self.dtype)
                 for k, v in tensors.items()}
        del tensors
        with torch.device("meta"):
            layer = DecoderLayer(self.local, i)
        layer.load_state_dict(state, strict=True, assign=True)
        if self.cfg.quantization is not None:
            quantize_linears(layer, self.cfg.quantization)
        if self.wrap is not None:
            self.wrap(layer)
        return layer.eval()


def build_streamed_model(
    path: str | Path | None, mcfg: ModelConfig, cfg: EngineConfig, dtype: torch.dtype,
    device: torch.device, shard: RankShard | None = None,
    wrap: Callable[[nn.Module], None] | None = None,
) -> nn.Module:
    """A model whose layers stream from ``path`` within ``cfg.max_weight_memory_mb``.
    Raises ``ValueError`` when the resident weights and one layer exceed the cap."""
    if path is None or not Path(path).exists():
        raise ValueError("weight streaming reads the weights from a GGUF file or a Hugging "
                         "Face directory: give the model as a path")
    path = Path(path)
    _trim_malloc()
    local = local_config(mcfg, shard) if shard is not None else mcfg
    gguf = None if path.is_dir() else read_gguf(path)  # else a Hugging Face directory
    src = _Source(path, gguf, mcfg, local, shard, cfg, dtype, device, wrap)
    with torch.device("meta"):
        model = MODEL_CLASSES[mcfg.architecture](local)
    glob = src.read(lambda n: not n.startswith("layers."))
    head = glob["embed.weight" if mcfg.tie_word_embeddings else "lm_head.weight"]
    state = {k: v.to(device=device, dtype=dtype) for k, v in glob.items() if k != "lm_head.weight"}
    model.load_state_dict(state, strict=False, assign=True)
    model.init_rope(device)
    fast = dtype != torch.float32 or cfg.quantization is not None
    model.lm_head = LMHead(head.to(device), fast=fast)
    window = _window(cfg, _nbytes(model), src.layer(0), local.num_layers)
    model.layers = LayerStream(src.layer, local.num_layers, window)
    return model.eval()


def _window(cfg: EngineConfig, resident: int, layer: nn.Module, num_layers: int) -> int:
    """Layers held at once: what the cap leaves beside the resident weights and one
    layer's load buffers (its float32 copies), at most ``cfg.weight_window``."""
    per_layer = _nbytes(layer)
    scratch = sum(p.numel() for p in layer.parameters()) * 4
    budget = cfg.max_weight_memory_mb * MIB - resident - scratch
    fits = budget // per_layer if per_layer else num_layers
    if fits < 1:
        raise ValueError(
            f"max_weight_memory_mb {cfg.max_weight_memory_mb} is below the resident weights "
            f"({resident / MIB:.0f} MiB: embedding, head) plus one layer "
            f"({(per_layer + scratch) / MIB:.0f} MiB with its load buffers)")
    window = min(int(fits), cfg.weight_window or num_layers, num_layers)
    log.info("weight streaming: %d of %d layers resident (%.0f MiB each), %.0f MiB always "
             "resident", window, num_layers, per_layer / MIB, resident / MIB)
    return window
