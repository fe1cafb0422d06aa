"""Tensor-parallel ranks as two threads of this process (gloo works across threads), one
prefill step each, against the whole model: every architecture's slices (Gemma 3's
sandwich norms and sliding layers, Qwen2's q/k/v biases, Qwen3's q/k norms), a single KV
head replicated on both ranks, the TokenWeave overlap, and quantized linears built from
each rank's slice. No process is spawned, so each case takes well under a second."""

from __future__ import annotations

import threading

import pytest
import torch
import torch.distributed as dist
from helpers.tiny import tiny_checkpoint

from thinkstream.attention.metadata import SeqSlice
from thinkstream.config import EngineConfig
from thinkstream.distributed.comm import Comm
from thinkstream.distributed.plan import plan_shards, shard_tensors
from thinkstream.distributed.tp import RankSpec, build_rank_runner
from thinkstream.worker.runner import ModelRunner, StepBatch

IDS = [5, 17, 99, 3, 250, 41, 8, 77, 150, 12, 64]


def _batch(n: int) -> StepBatch:
    """One sequence's first ``n`` tokens in blocks 0.., every row's logits wanted."""
    return StepBatch(IDS[:n], list(range(n)), [SeqSlice(list(range(8)), 0, n)],
                     list(range(n)), [])


def _tp2(ckpt, cfg: EngineConfig, batch: StepBatch) -> list[torch.Tensor]:
    shards = plan_shards(ckpt.config, 2)
    store = dist.TCPStore("127.0.0.1", 0, 2, is_master=True, wait_for_workers=False)
    out: list = [None, None]

    def rank(r: int) -> None:
        try:
            own = store if r == 0 else dist.TCPStore("127.0.0.1", store.port, 2, is_master=False)
            comm = Comm(own, r, 2, torch.device("cpu"), 30.0)
            spec = RankSpec(cfg, ckpt.config, 16, None,
                            shard_tensors(ckpt.tensors, ckpt.config, shards[r]))
            out[r] = build_rank_runner(spec, r, comm).execute(batch)
        except BaseException as exc:  # surfaced below
            out[r] = exc

    threads = [threading.Thread(target=rank, args=(r,), daemon=True) for r in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads), "a rank hung"
    for o in out:
        if isinstance(o, BaseException):
            raise o
    return out


def _whole(ckpt, cfg: EngineConfig, batch: StepBatch) -> torch.Tensor:
    from thinkstream.models.registry import build_model

    model = build_model(ckpt.config, ckpt.tensors, torch.float32, "cpu", cfg.quantization)
    kv_dtype = getattr(torch, cfg.resolved_kv_cache_dtype("float32"))
    runner = ModelRunner(model, ckpt.config, 16, cfg.block_size, torch.float32, "cpu",
                         kv_dtype=kv_dtype)
    return runner.execute(batch)


CASES = {"gemma3": ("gemma3", {}), "qwen2": ("qwen2", {}), "qwen3": ("qwen3", {}),
         "one KV head, replicated": ("llama", {"num_kv_heads": 1})}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("overlap", [False, True])
def test_every_architecture_splits_exactly(case: str, overlap: bool) -> None:
    arch, overrides = CASES[case]
    ckpt = tiny_checkpoint(arch, 0, **overrides)
    cfg = EngineConfig(dtype="float32", block_size=4, num_blocks=16, tp_overlap=overlap)
    want = _whole(ckpt, cfg, _batch(11))
    for got in _tp2(ckpt, cfg, _batch(11)):  # every rank holds the full logits
        torch.testing.assert_close(got, want, atol=1e-4, rtol=0)


@pytest.mark.parametrize("kind", ["int8", "int4"])
def test_quantized_linears_are_built_from_the_slices(kind: str) -> None:
    # int4 groups of 32 input features: o_proj's 64 and down's 128 split on group bounds
    ckpt = tiny_checkpoint("llama", 0, intermediate_size=128)
    cfg = EngineConfig(dtype="float32", block_size=4, num_blocks=16, quantization=kind)
    batch = _batch(5)  # under 8 rows: the int kernels, not the dense copies
    want = _whole(ckpt, cfg, batch)
    got = _tp2(ckpt, cfg, batch)[0]
    # the int kernels round each partial sum to bfloat16: agreement at that precision
    torch.testing.assert_close(got.topk(3).values, want.topk(3).values, atol=0.25, rtol=0.02)
    top2 = want.topk(2).values
    clear = (top2[:, 0] - top2[:, 1]) > 0.5  # rows without a near-tie: the same choice
    assert clear.sum() >= 3 and torch.equal(got.argmax(-1)[clear], want.argmax(-1)[clear])


def test_a_bfloat16_kv_cache_on_every_rank() -> None:
    """``kv_cache_dtype="bfloat16"`` reaches the ranks: their logits are the whole model's
    with a bfloat16 cache, not its float32-cache logits."""
    ckpt = tiny_checkpoint("llama", 0)
    cfg = EngineConfig(dtype="float32", block_size=4, num_blocks=16, kv_cache_dtype="bfloat16")
    want = _whole(ckpt, cfg, _batch(11))
    f32 = _whole(ckpt, EngineConfig(dtype="float32", block_size=4, num_blocks=16), _batch(11))
    assert (want - f32).abs().max() > 1e-2
    for got in _tp2(ckpt, cfg, _batch(11)):
        torch.testing.assert_close(got, want, atol=1e-4, rtol=0)
