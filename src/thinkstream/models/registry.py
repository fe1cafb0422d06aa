"""Architecture name -> model class, and building a model from canonical weights."""

from __future__ import annotations

import torch

from thinkstream.config import ModelConfig
from thinkstream.kernels.gguf import ACT_OF_MODE, GGUFKernels
from thinkstream.loading.gguf import GGUFBlocks, dense_tensors
from thinkstream.models.fused_decode import FusedDecoder
from thinkstream.models.gemma3 import Gemma3ForCausalLM
from thinkstream.models.gguf_linear import GGUFLinear, install_gguf_linears, load_unfused_weights
from thinkstream.models.head import LMHead
from thinkstream.models.layers import fuse_canonical
from thinkstream.models.llama import LlamaForCausalLM
from thinkstream.models.quant import quantize_linears

MODEL_CLASSES: dict[str, type[LlamaForCausalLM]] = {
    "llama": LlamaForCausalLM,
    "qwen2": LlamaForCausalLM,
    "qwen3": LlamaForCausalLM,
    "gemma3": Gemma3ForCausalLM,
}


def _fused_name(name: str) -> str:
    """A canonical q/k/v or gate/up weight's name -> its fused module's (``fuse_canonical``)."""
    for part, fused in ((".q_proj.", ".qkv_proj."), (".k_proj.", ".qkv_proj."), (".v_proj.", ".qkv_proj."),
                        (".gate_proj.", ".gate_up_proj."), (".up_proj.", ".gate_up_proj.")):
        name = name.replace(part, fused)
    return name


def build_model(
    cfg: ModelConfig,
    tensors: dict[str, torch.Tensor],
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    quantization: str | None = None,
    blocks: dict[str, GGUFBlocks] | None = None,
    kernels: GGUFKernels | None = None,
    dense_dtype: torch.dtype | None = None,
) -> LlamaForCausalLM:
    """Construct on the meta device, then take the (fused, cast) weights by assignment.
    ``quantization="gguf"`` needs ``blocks`` (the checkpoint's, as stored) and ``kernels``;
    the GGUF linears' dense copies are then in ``dense_dtype`` (default ``dtype``).
    ``tensors`` may hold meta placeholders for matrices in ``blocks``
    (``load_checkpoint(dense_linears=False)``): dequantized here unless a GGUF linear
    takes them without a dense copy."""
    cls = MODEL_CLASSES.get(cfg.architecture)
    if cls is None:
        raise ValueError(f"no model class for architecture {cfg.architecture!r}")
    if quantization not in ACT_OF_MODE and any(t.is_meta for t in tensors.values()):
        tensors = dense_tensors(tensors, blocks or {})
    elif blocks is not None:
        tensors = load_unfused_weights(tensors, cfg, blocks)
    with torch.device("meta"):
        model = cls(cfg)
    # placeholders are left out (their modules' weights stay on meta until
    # install_gguf_linears replaces them; torch.cat on meta tensors imports torch._dynamo: 2 s)
    lazy = {_fused_name(k) for k, v in tensors.items() if v.is_meta}
    real = {k: v for k, v in tensors.items() if not v.is_meta}
    state = {k: v.to(device=device, dtype=dtype) for k, v in fuse_canonical(real, cfg).items()}
    state.pop("lm_head.weight", None)
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    missing = [k for k in missing if k not in lazy]
    if missing or unexpected:
        raise ValueError(f"weights do not match the model: missing {missing[:5]}, unexpected {unexpected[:5]}")
    model.init_rope(device)
    # The head stays float32 whatever the compute dtype (bfloat16 logits are rounded to steps
    # of 0.125 around 20, enough to flip near-tied greedy choices); in the fast modes an
    # approximate pass is refined exactly (models/head.py).
    head_name = "embed.weight" if cfg.tie_word_embeddings else "lm_head.weight"
    head = tensors[head_name]
    if quantization in ACT_OF_MODE:  # "gguf", "gguf-q16", "gguf-q8"
        if blocks is None or kernels is None:
            raise ValueError(f"quantization={quantization!r} needs the checkpoint's GGUF blocks and the kernels")
        act = ACT_OF_MODE[quantization]
        native = blocks.get(head_name)
        if native is not None and kernels.supports(native.qtype):
            native_head = GGUFLinear([native], kernels, None, act=act)
        else:
            native_head = None
        # rows above the kernel's: the bfloat16 approximation refined exactly (models/head.py)
        # when the dense copies are bfloat16, else the float32 head
        fast = dtype != torch.float32 or (dense_dtype or dtype) != torch.float32
        model.lm_head = LMHead(head.to(device), fast=fast, native=native_head)
        install_gguf_linears(model.layers, cfg, blocks, kernels, dense_dtype, act=act)
        left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
        if left:
            raise ValueError(f"weights {left[:5]} were not loaded")
        if dtype == torch.float32 and torch.device(device).type == "cpu":
            model.fused = FusedDecoder.build(model)
        return model.eval()
    fast = dtype != torch.float32 or quantization is not None
    model.lm_head = LMHead(head.to(device), fast=fast)
    if quantization is not None:
        quantize_linears(model.layers, quantization)
    return model.eval()
