"""``load_checkpoint(dense_linears=False)``: the decoder matrices the GGUF-native linears take
as stored are never dequantized at load (~1.9 s of SmolLM2's 3.6 s), and every model built
from such a checkpoint holds exactly the weights of one built from the dense load."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from gguf import GGMLQuantizationType as Q
from test_loading_gguf import LAYERS, write_gguf

import thinkstream.loading.gguf as gguf_mod
from thinkstream.kernels.gguf import load_gguf_kernels
from thinkstream.loading import load_checkpoint
from thinkstream.loading.gguf import dense_tensors
from thinkstream.models.registry import build_model

KERNELS = load_gguf_kernels()
# q and k Q8_0 but v F32 (a fused q/k/v of mixed types: its dense weight is kept)
QUANT = {"attn_q.": Q.Q8_0, "attn_k.": Q.Q8_0, "attn_output.": Q.Q4_0, "ffn_": Q.Q8_0, "token_embd": Q.Q8_0}


@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("lazy") / "q.gguf"
    write_gguf(path, quant=QUANT)
    return path


def test_block_matrices_are_never_dequantized(model_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    read: list[str] = []
    real = gguf_mod._dequantize
    monkeypatch.setattr(gguf_mod, "_dequantize", lambda gf, name: read.append(name) or real(gf, name))
    lazy = load_checkpoint(model_file, dense_linears=False)
    skipped = {f"blk.{i}.{n}.weight" for i in range(LAYERS)
               for n in ("attn_q", "attn_k", "attn_output", "ffn_gate", "ffn_up", "ffn_down")}
    assert skipped.isdisjoint(read)
    assert {f"blk.{i}.attn_v.weight" for i in range(LAYERS)} | {"token_embd.weight"} <= set(read)
    meta = {n for n, t in lazy.tensors.items() if t.is_meta}
    assert meta == {f"layers.{i}.{m}.weight" for i in range(LAYERS) for m in (
        "attn.q_proj", "attn.k_proj", "attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")}
    dense = load_checkpoint(model_file)  # the default: every tensor dequantized
    got = dense_tensors(lazy.tensors, lazy.blocks)  # q/k rows unpermuted like the dense ones
    assert got.keys() == dense.tensors.keys()
    assert all(torch.equal(got[n], dense.tensors[n]) for n in got)


@pytest.mark.parametrize("quantization, dense_dtype", [
    (None, None), ("gguf", None), ("gguf", torch.bfloat16)])
def test_models_from_the_lazy_load_hold_the_same_weights(model_file: Path, quantization, dense_dtype) -> None:
    if quantization and KERNELS is None:
        pytest.skip("the native kernels cannot be built here")
    lazy, dense = load_checkpoint(model_file, dense_linears=False), load_checkpoint(model_file)
    models = [build_model(c.config, c.tensors, torch.float32, "cpu", quantization, c.blocks,
                          KERNELS, dense_dtype) for c in (lazy, dense)]
    a, b = (m.state_dict() for m in models)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[n], b[n]) for n in a)
    if dense_dtype is not None:  # the bfloat16 copy for big batches, made from the blocks
        assert a["layers.0.attn.o_proj.dense"].dtype == torch.bfloat16
    assert "layers.0.attn.qkv_proj.weight" in a  # v has no blocks: q/k/v stays dense
