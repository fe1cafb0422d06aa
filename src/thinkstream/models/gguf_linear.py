"""GGUF-native linear layers: the GGUF file's quantized blocks used as stored.

Decode at small batch reads every weight once per step, so its speed is the weights' bytes:
a Q4_1 matrix is 5/32 of its float32 size. ``GGUFLinear`` keeps the blocks and, for up to
``max_rows`` rows, runs the native kernel (``kernels/gguf.py``): for few rows each weight
row decoded on the fly into registers and dotted with the activations, for many (13 and
more) a register-blocked GEMM over weight panels decoded once per call (``gguf_gemm.h``).
Float32 by default (``act = ACT_F32``: the dequantized float32 model's arithmetic up to
summation order, no rounding of the activations); the opt-in ``quantization="gguf-q16"`` /
``"gguf-q8"`` round them per 32-value block to int16 (one or two rows) / int8 and multiply
in integers (``act = ACT_I16`` / ``ACT_I8``; their accuracy and speed: docs/benchmarks.md).

Rows above ``max_rows`` use a dense copy of the dequantized weights in ``dense.dtype``. With
the GEMM (AVX2 / AVX-512 builds) and float32 activations the kernel beats a dense float32
matmul (MKL, and oneDNN prepacked) at every row count measured (Zen 4, 1 thread: 4 to 512
rows; docs/benchmarks.md), so ``kernel_rows`` puts no limit there and
``install_gguf_linears`` keeps no dense copy (~430 MB for SmolLM2-135M). The portable build
(dot products only), the int8 mode (int8 dot products at any row count) and a bfloat16 copy
(``dtype="bfloat16"``) keep the copy above ``MAX_ROWS`` rows.

A fused projection (q/k/v, gate/up) keeps one part per run of neighbouring source
matrices of one type (SmolLM2's all-Q4_1 q/k/v: one part, one kernel call; Gemma 3's q and k
Q5_0, v Q8_0: two) and writes each into its columns of the output.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from thinkstream.config import ModelConfig
from thinkstream.kernels.gguf import ACT_F32, ACT_I8, BLOCKS, GGUFKernels, load_gguf_kernels
from thinkstream.loading.gguf import GGUFBlocks, dense_from_blocks

# rows up to which the dot-product kernel (the portable build's only path) beats the dense
# path: measured on Zen 4 with SmolLM2, 1 thread, CPU time, a decode step at 16 rows 113.7 ms
# on the stack vs 132.9 dense, at 32 rows 213.1 vs 197.6 (before the GEMM)
MAX_ROWS = 16
# "no limit": the rows of any step
ALL_ROWS = 1 << 40


def kernel_rows(kernels: GGUFKernels, dense_dtype: torch.dtype | None, act: int = ACT_F32) -> int:
    """Rows up to which a GGUFLinear runs the kernel rather than a dense copy in
    ``dense_dtype`` (None: no copy): every row count where the kernel has its GEMM (float32
    activations; ``ACT_I16`` too, float32 from three rows) and would otherwise meet a float32
    copy, ``MAX_ROWS`` where the copy may be faster (int8 activations, a bfloat16 copy)."""
    if dense_dtype is None or (kernels.gemm and act != ACT_I8 and dense_dtype == torch.float32):
        return ALL_ROWS
    return MAX_ROWS


@torch.library.custom_op("thinkstream::gguf_matmul", mutates_args=())
def gguf_matmul_op(x: torch.Tensor, blocks: torch.Tensor, qtype: int, k: int, act: int) -> torch.Tensor:
    """x (M, K) float32 @ W^T -> (M, N) float32: the kernel as an operator torch.compile can
    trace (``compile_decode``; eager calls go to the kernel directly, without the dispatch)."""
    kernels = load_gguf_kernels()
    if kernels is None:
        raise RuntimeError("the GGUF kernels are not available in this process")
    return kernels.matmul(qtype, blocks, k, x.contiguous(), act=act)


@gguf_matmul_op.register_fake
def _(x: torch.Tensor, blocks: torch.Tensor, qtype: int, k: int, act: int) -> torch.Tensor:
    return x.new_empty(x.shape[0], blocks.shape[0])


class GGUFLinear(nn.Module):
    """y = x W^T (+ b), W the row-concatenation of ``parts`` (GGUF blocks as stored)."""

    def __init__(
        self, parts: list[GGUFBlocks], kernels: GGUFKernels, dense: torch.Tensor | None,
        bias: torch.Tensor | None = None, max_rows: int | None = None, act: int = ACT_F32,
    ) -> None:
        super().__init__()
        if not parts or any(p.k != parts[0].k for p in parts):
            raise ValueError("GGUFLinear: parts must share their input size")
        self.kernels = kernels
        self.in_features = parts[0].k
        self.out_features = sum(p.rows for p in parts)
        # rows up to which the kernel runs (default: ``kernel_rows``); the dense copy above
        self.max_rows = max_rows if max_rows is not None else kernel_rows(
            kernels, None if dense is None else dense.dtype, act)
        self.act = act  # the kernel's activations (``kernels/gguf.py``'s ACTS)
        parts = _merge_same_type(parts)
        self.qtypes = [p.qtype for p in parts]
        for i, p in enumerate(parts):
            self.register_buffer(f"blocks{i}", p.blocks.contiguous())
        if dense is not None and tuple(dense.shape) != (self.out_features, self.in_features):
            raise ValueError(f"GGUFLinear: dense weight {tuple(dense.shape)} does not match "
                             f"{(self.out_features, self.in_features)}")
        self.register_buffer("dense", dense)
        self.register_buffer("bias", bias)
        # (qtype, blocks, bytes per row, rows, first output column) per part: the arguments
        # of the kernel call, checked here once, not per call
        self._calls = [(q, b, b.shape[1], b.shape[0], sum(p.rows for p in parts[:i]))
                       for i, (q, b) in enumerate(zip(self.qtypes, self._blocks(), strict=True))]
        for q, _b, row_bytes, _n, _col in self._calls:
            values, nbytes = BLOCKS[q]
            if self.in_features % values or self.in_features // values * nbytes != row_bytes:
                raise ValueError(f"GGUFLinear: {row_bytes} bytes per row do not hold "
                                 f"{self.in_features} values of type {q}")

    def _blocks(self) -> list[torch.Tensor]:
        return [getattr(self, f"blocks{i}") for i in range(len(self.qtypes))]

    def _kernel(self, xf: torch.Tensor) -> torch.Tensor:
        """xf (M, K) float32 contiguous -> (M, N) float32: one kernel call per part, each
        into its columns (decode's hot path: no checks beyond the constructor's)."""
        m, k, n_all = xf.shape[0], self.in_features, self.out_features
        y = torch.empty(m, n_all, dtype=torch.float32)
        if m == 0:
            return y
        fn, threads, act = self.kernels.lib.gguf_matmul_ex, torch.get_num_threads(), self.act
        x_ptr, y_ptr = xf.data_ptr(), y.data_ptr()
        for qtype, blocks, row_bytes, n, col in self._calls:
            if fn(qtype, blocks.data_ptr(), row_bytes, n, k, x_ptr, m, k, y_ptr + 4 * col, n_all, threads, act):
                raise RuntimeError(f"gguf matmul failed for type {qtype}")
        return y

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, self.in_features)
        if self.dense is not None and x2.shape[0] > self.max_rows:
            y = F.linear(x2.to(self.dense.dtype), self.dense).to(x.dtype)
        elif torch.compiler.is_compiling():
            xf = x2.to(torch.float32)
            y = torch.cat([gguf_matmul_op(xf, b, q, self.in_features, self.act)
                           for q, b in zip(self.qtypes, self._blocks(), strict=True)], dim=-1)
            y = y.to(x.dtype)
        else:
            y = self._kernel(x2.to(torch.float32).contiguous()).to(x.dtype)
        if self.bias is not None:
            y = y + self.bias
        return y.view(*shape[:-1], self.out_features)


def _merge_same_type(parts: list[GGUFBlocks]) -> list[GGUFBlocks]:
    """Neighbouring parts of one type as one (their rows concatenated): one kernel call for
    SmolLM2's q/k/v or gate/up (all Q4_1) instead of three or two."""
    out: list[GGUFBlocks] = []
    for p in parts:
        if out and out[-1].qtype == p.qtype:
            last = out.pop()
            p = GGUFBlocks(p.qtype, torch.cat([last.blocks, p.blocks]), p.k)
        out.append(p)
    return out


# fused module -> the canonical weights it concatenates, in order (models/layers.py)
_FUSED = {"attn.qkv_proj": ("attn.q_proj", "attn.k_proj", "attn.v_proj"),
          "mlp.gate_up_proj": ("mlp.gate_proj", "mlp.up_proj")}
_FUSED_MODULES = ("attn.qkv_proj", "attn.o_proj", "mlp.gate_up_proj", "mlp.down_proj")


def _parts(blocks: dict[str, GGUFBlocks], layer: int, module: str) -> list[GGUFBlocks] | None:
    names = _FUSED.get(module, (module,))
    got = [blocks.get(f"layers.{layer}.{n}.weight") for n in names]
    return None if any(g is None for g in got) else got  # type: ignore[return-value]


def _dense(parts: list[GGUFBlocks]) -> torch.Tensor:
    """The (sum of rows, k) float32 matrix the ``parts`` store, dequantized."""
    return torch.cat([dense_from_blocks(p) for p in parts])


def load_unfused_weights(tensors: dict[str, torch.Tensor], cfg: ModelConfig,
                         blocks: dict[str, GGUFBlocks]) -> dict[str, torch.Tensor]:
    """``tensors`` with the meta placeholders dequantized in every module that will not
    become a GGUFLinear because a fused partner has no blocks (a q/k/v of mixed types, one
    of them unsupported): such a module keeps its dense weight."""
    out = dict(tensors)
    for i in range(cfg.num_layers):
        for module in _FUSED_MODULES:
            if _parts(blocks, i, module) is not None:
                continue
            for n in _FUSED.get(module, (module,)):
                name = f"layers.{i}.{n}.weight"
                if name in out and out[name].is_meta:
                    out[name] = dense_from_blocks(blocks[name])
    return out


def install_gguf_linears(
    layers: nn.ModuleList, cfg: ModelConfig, blocks: dict[str, GGUFBlocks], kernels: GGUFKernels,
    dense_dtype: torch.dtype | None = None, keep_dense: bool | None = None, act: int = ACT_F32,
) -> int:
    """Replace each decoder linear whose weights are all in ``blocks`` by a GGUFLinear
    (its dense copy cast to ``dense_dtype``, default: as it is; its kernel activations
    ``act``); returns how many. ``keep_dense`` None: keep the copy only where it can be
    faster than the kernel (``kernel_rows`` limits the kernel). A weight left on the meta
    device by the loader is dequantized from ``blocks`` only where a copy is kept."""
    count = 0
    for i in range(cfg.num_layers):
        for module in _FUSED_MODULES:
            parts = _parts(blocks, i, module)
            if parts is None:
                continue
            parent_name, attr = module.split(".")
            parent = getattr(layers[i], parent_name)
            old: nn.Linear = getattr(parent, attr)
            weight = old.weight.data  # meta: not loaded (``load_checkpoint(dense_linears=False)``)
            if not all(kernels.supports(p.qtype) for p in parts):
                if weight.is_meta:
                    old.weight = nn.Parameter(_dense(parts).to(weight.dtype), requires_grad=False)
                continue
            dtype = dense_dtype or weight.dtype
            keep = keep_dense if keep_dense is not None else kernel_rows(kernels, dtype, act) < ALL_ROWS
            dense = (_dense(parts) if weight.is_meta else weight).to(dtype) if keep else None
            bias = None if old.bias is None else old.bias.data
            setattr(parent, attr, GGUFLinear(parts, kernels, dense, bias, act=act))
            count += 1
    return count
