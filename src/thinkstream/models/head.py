"""The LM head: float32 logits, optionally from a fast low-precision pass refined exactly.

The head is the largest matrix of a small model (SmolLM2-135M: 49,152 x 576, a quarter of a
decode step in float32). The fast path computes approximate logits with an int4 copy (few
rows) or a bfloat16 copy (many rows) of the weights, then recomputes the ``refine`` largest
logits of each row exactly in float32 and writes them back. Greedy choices, top-k and the
log-probabilities of the leading tokens are then those of the float32 head, as long as the
true top tokens rank within the approximate top ``refine`` (the approximation errs by about
0.4% of a logit); the rest of the distribution carries the approximation's rounding.

With GGUF blocks (``native``, the head or tied embedding as the file stores it, Q8_0 in both
default models) rows up to ``native_max_rows`` run on the GGUF-native kernel instead: the
exact float32 logits of the dequantized head, from a quarter of float32's bytes. Where the
kernel has its GEMM and the head is not ``fast``, that is every row count (on Zen 4, 1
thread, the 49,152 x 576 Q8_0 head at 32 rows: 21-23 ms against 35-37 ms float32 MKL and
27-31 ms oneDNN prepacked; docs/benchmarks.md); else up to ``MAX_ROWS``.
"""

from __future__ import annotations

import torch
from torch import nn

from thinkstream.kernels.gguf import ACT_I8
from thinkstream.models.gguf_linear import ALL_ROWS, MAX_ROWS, GGUFLinear
from thinkstream.models.quant import INT4_GROUP, INT4_INNER_K_TILES, INT4_ROWS, quantize_int4


class LMHead(nn.Module):
    def __init__(self, weight: torch.Tensor, fast: bool = False, refine: int = 16,
                 int4_max_rows: int = 8, native: GGUFLinear | None = None) -> None:
        super().__init__()
        self.register_buffer("weight", weight.float())  # (V, H) exact head
        self.refine = refine
        self.int4_max_rows = int4_max_rows
        self.native = native  # a GGUFLinear without a dense copy, or None
        self.fast = fast and weight.device.type == "cpu" and weight.shape[1] % INT4_GROUP == 0
        gemm = native is not None and native.kernels.gemm and native.act != ACT_I8
        self.native_max_rows = ALL_ROWS if gemm and not self.fast else MAX_ROWS
        # few rows: int4 (with native blocks: the kernel) where torch packs the shape (a
        # vocabulary of 32,001 does not: the bfloat16 copy serves every row count then)
        self.int4 = self.fast and native is None and weight.shape[0] % INT4_ROWS == 0
        if self.int4:
            q, sz = quantize_int4(weight)
            self.register_buffer("packed", torch._convert_weight_to_int4pack_for_cpu(q, INT4_INNER_K_TILES))
            self.register_buffer("scales", sz.to(torch.bfloat16))
        if self.fast:
            self.register_buffer("bf16", weight.to(torch.bfloat16))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """(N, H) -> (N, V) float32."""
        x = hidden.float()
        if self.native is not None and 0 < x.shape[0] <= self.native_max_rows:
            return self.native(x)
        if not self.fast or x.shape[0] == 0:
            return x @ self.weight.t()
        xb = x.to(torch.bfloat16)
        if x.shape[0] <= self.int4_max_rows and self.int4:
            approx = torch._weight_int4pack_mm_for_cpu(xb, self.packed, INT4_GROUP, self.scales)
        else:
            approx = xb @ self.bf16.t()
        logits = approx.float()
        top = logits.topk(min(self.refine, logits.shape[1]), dim=-1).indices  # (N, R)
        exact = torch.einsum("nh,nrh->nr", x, self.weight[top])  # (N, R)
        return logits.scatter_(1, top, exact)
