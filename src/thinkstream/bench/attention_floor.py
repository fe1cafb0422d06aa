"""What the answer step's attention costs over a long context, and how close to the core's
limit it runs (docs/benchmarks.md, "Streaming input": why TTFT is not flat in input length).

SmolLM2-135M shapes (9 query heads, 3 key/value heads, head dim 64, 30 layers), a 16-token
chunk (the question), bfloat16, 1 thread:
1. one grouped-query score matmul, (48 x 64) . (64 x L), and a 1024^3 matmul: GFLOP/s;
2. 30 layers of attention with the keys cold in cache, in the cache's layout (slots, heads,
   dim) and head-major (heads, slots, dim);
3. ``short_chunk`` against the flash kernel (SDPA) per layer at several context lengths;
4. the softmax of one layer's scores (3 x 48 x L), native kernel against torch's, and
   ``short_chunk`` at L = 4,096 with each.

    python -m thinkstream.bench.attention_floor
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from thinkstream.attention.few_query import short_chunk
from thinkstream.attention.metadata import open_columns
from thinkstream.kernels import load_softmax_bf16, softmax_last

Q, H, KVH, D, LAYERS, L = 16, 9, 3, 64, 30, 4113


def timed_us(fn, n: int = 100) -> float:
    for _ in range(3):
        fn()
    t = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t) / n * 1e6


def causal_tail(length: int) -> torch.Tensor:
    mask = torch.ones(Q, length, dtype=torch.bool)
    mask[:, length - Q:] = torch.ones(Q, Q, dtype=torch.bool).tril()
    return mask


def layers_cold(layout: str, caches, q: torch.Tensor, junk: torch.Tensor, reps: int = 5) -> float:
    """ms for the attention of all layers (scores, softmax, values), caches evicted first."""
    times = []
    for _ in range(reps):
        junk.mul_(1.0)  # 256 MB touched: the caches are cold
        t = time.perf_counter()
        for k, v in caches:
            s = torch.empty(KVH, Q * H // KVH, L, dtype=q.dtype)
            for i in range(KVH):
                kh = k[:L, i] if layout == "slots-first" else k[i, :L]
                torch.mm(q[i], kh.t(), out=s[i])
            p = softmax_last(s)  # in place (the native kernel) where it applies
            o = torch.empty(KVH, Q * H // KVH, D, dtype=q.dtype)
            for i in range(KVH):
                torch.mm(p[i], v[:L, i] if layout == "slots-first" else v[i, :L], out=o[i])
        times.append(time.perf_counter() - t)
    return sorted(times)[reps // 2] * 1e3


def main() -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    bf = torch.bfloat16
    q48, k = torch.randn(48, D, dtype=bf), torch.randn(L, D, dtype=bf)
    us = timed_us(lambda: q48 @ k.t(), 200)
    print(f"score matmul (48 x 64) . (64 x {L}): {us:.0f} us, {2 * 48 * D * L / us / 1e3:.0f} GFLOP/s")
    big = torch.randn(1024, 1024, dtype=bf)
    us = timed_us(lambda: big @ big, 20)
    print(f"1024^3 matmul: {2 * 1024**3 / us / 1e3:.0f} GFLOP/s")

    caches = [(torch.randn(L + 8, KVH, D, dtype=bf), torch.randn(L + 8, KVH, D, dtype=bf))
              for _ in range(LAYERS)]
    head_major = [(k.transpose(0, 1).contiguous(), v.transpose(0, 1).contiguous()) for k, v in caches]
    qg = torch.randn(KVH, Q * H // KVH, D, dtype=bf)
    junk = torch.randn(64 << 20)
    for _ in range(2):
        print(f"{LAYERS} layers of attention over {L} keys, cold: slots-first "
              f"{layers_cold('slots-first', caches, qg, junk):.1f} ms, head-major "
              f"{layers_cold('head-major', head_major, qg, junk):.1f} ms")

    kc, vc = torch.randn(10_000, KVH, D, dtype=bf), torch.randn(10_000, KVH, D, dtype=bf)
    q = torch.randn(Q, H, D, dtype=bf)
    for length in (128, 256, 1024, 4096):
        short, flash = per_layer(q, kc, vc, length)
        print(f"one layer, {length} keys: short_chunk {short:.0f} us, flash kernel {flash:.0f} us")

    scores = torch.randn(KVH, Q * H // KVH, L, dtype=bf) * 4
    torch_softmax = timed_us(lambda: scores.softmax(-1), 200)
    native = timed_us(lambda: softmax_last(scores), 200) if load_softmax_bf16() else float("nan")
    print(f"softmax of one layer's scores: native {native:.0f} us, torch {torch_softmax:.0f} us")
    with_native = per_layer(q, kc, vc, 4096)[0]
    with_torch = per_layer(q, kc, vc, 4096, native_softmax=False)[0]
    print(f"short_chunk at 4096 keys: native softmax {with_native:.0f} us, torch's {with_torch:.0f} us")


def per_layer(q: torch.Tensor, kc: torch.Tensor, vc: torch.Tensor, length: int,
              native_softmax: bool = True) -> tuple[float, float]:
    """us per layer: ``short_chunk`` on a view of the cache, the flash kernel on a gather."""
    slots, mask = torch.arange(100, 100 + length), causal_tail(length)
    cols = open_columns(mask)

    def flash() -> torch.Tensor:
        kg = kc.index_select(0, slots).transpose(0, 1)[None]
        vg = vc.index_select(0, slots).transpose(0, 1)[None]
        return F.scaled_dot_product_attention(q.transpose(0, 1)[None], kg, vg, attn_mask=mask,
                                              scale=0.125, enable_gqa=True)

    return (timed_us(lambda: short_chunk(q, kc, vc, slots, ((100, length),), mask, cols, 0.125,
                                         native_softmax)),
            timed_us(flash))

if __name__ == "__main__":
    main()
