"""Weight-only quantized linear layers (int8 per output channel, int4 in groups of 32)
on PyTorch's CPU kernels, with a dense path (weights in the model's dtype) for large
batches and prefill. Only the linear layers change: inputs are cast to bfloat16 for the
int kernels and outputs back to the model's dtype, so with ``dtype="float32"`` the residual
stream, norms, attention and prefill stay float32.

Decode at small batch is bound by weight bytes, so 4- or 8-bit weights win there; large
batches (and prefill) are bound by arithmetic, where bfloat16 on AMX wins. A
``QuantLinear`` keeps both and dispatches on the number of rows.

int4 layout: ``w = (q - 8) * scale + zero`` per group of 32 input features, the form
``torch._weight_int4pack_mm_for_cpu`` computes. GGUF Q4_1 blocks (``d * q + m`` over 32
values) map onto it exactly: scale = d, zero = m + 8 d (up to bfloat16 rounding).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

INT4_GROUP = 32
INT4_INNER_K_TILES = 2
INT4_ROWS = 16  # torch's int4 packing takes N (output features) in multiples of 16


def quantize_int8(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-row int8: returns (q (N, K) int8, scale (N,) float32)."""
    w = w.float()
    scale = (w.abs().amax(dim=1) / 127.0).clamp_min(1e-12)
    q = torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8)
    return q, scale


def quantize_int4(w: torch.Tensor, group: int = INT4_GROUP) -> tuple[torch.Tensor, torch.Tensor]:
    """Asymmetric int4 per group: returns (q (N, K) int32 in 0..15, scales_and_zeros
    (K/group, N, 2) float32) with w ~= (q - 8) * scale + zero."""
    n, k = w.shape
    wg = w.float().view(n, k // group, group)
    lo, hi = wg.amin(dim=-1), wg.amax(dim=-1)
    scale = ((hi - lo) / 15.0).clamp_min(1e-12)
    q = torch.round((wg - lo[..., None]) / scale[..., None]).clamp(0, 15).to(torch.int32)
    zero = lo + 8.0 * scale
    return q.view(n, k), torch.stack([scale.t(), zero.t()], dim=-1).contiguous()


def dequantize_int4(q: torch.Tensor, scales_zeros: torch.Tensor, group: int = INT4_GROUP) -> torch.Tensor:
    n, k = q.shape
    scale = scales_zeros[..., 0].t()[..., None]  # (N, K/group, 1)
    zero = scales_zeros[..., 1].t()[..., None]
    return ((q.view(n, k // group, group).float() - 8.0) * scale + zero).view(n, k)


class QuantLinear(nn.Module):
    """y = x W^T (+ b) with W stored as int8 or int4; rows >= ``dense_min_rows`` use the
    dense copy (the model's dtype) when one is kept."""

    def __init__(
        self, weight: torch.Tensor, bias: torch.Tensor | None, kind: str,
        keep_dense: bool = True, dense_min_rows: int = 8,
    ) -> None:
        super().__init__()
        if kind not in ("int8", "int4"):
            raise ValueError(f"unknown quantization {kind!r}")
        if weight.device.type != "cpu":
            raise ValueError("weight-only int8/int4 kernels are CPU-only; use dtype on CUDA")
        self.kind = kind
        self.out_features, self.in_features = weight.shape
        self.dense_min_rows = dense_min_rows
        if kind == "int8":
            q, scale = quantize_int8(weight)
            self.register_buffer("qweight", q)
            self.register_buffer("scales", scale.to(torch.bfloat16))
        else:
            if self.in_features % INT4_GROUP or self.out_features % INT4_ROWS:
                raise ValueError(f"int4 needs in_features divisible by {INT4_GROUP} and "
                                 f"out_features by {INT4_ROWS}, got {tuple(weight.shape)}")
            q, sz = quantize_int4(weight)
            self.register_buffer("qweight", torch._convert_weight_to_int4pack_for_cpu(q, INT4_INNER_K_TILES))
            self.register_buffer("scales", sz.to(torch.bfloat16))
        self.register_buffer("dense", weight if keep_dense else None)
        self.register_buffer("bias", bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, self.in_features)
        if self.dense is not None and x2.shape[0] >= self.dense_min_rows:
            y = F.linear(x2.to(self.dense.dtype), self.dense)
        elif self.kind == "int8":
            y = torch._weight_int8pack_mm(x2.to(torch.bfloat16), self.qweight, self.scales)
        else:
            y = torch._weight_int4pack_mm_for_cpu(x2.to(torch.bfloat16), self.qweight, INT4_GROUP, self.scales)
        y = y.to(x.dtype)
        if self.bias is not None:
            y = y + self.bias
        return y.view(*shape[:-1], self.out_features)


def quantize_linears(model: nn.Module, kind: str, dense_min_rows: int = 8) -> int:
    """Replace every ``nn.Linear`` under ``model`` by a QuantLinear; returns how many."""
    targets = [(name, mod) for name, mod in model.named_modules() if isinstance(mod, nn.Linear)]
    for name, mod in targets:
        parent = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
        q = QuantLinear(mod.weight.data, None if mod.bias is None else mod.bias.data, kind,
                        dense_min_rows=dense_min_rows)
        setattr(parent, name.rsplit(".", 1)[-1], q)
    return len(targets)
