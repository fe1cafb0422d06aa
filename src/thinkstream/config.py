"""Frozen configuration dataclasses: the model's hyper-parameters and the engine's knobs.

Everything a user can set is validated here with ``ValueError``; the CLI, the Python API
and the server all build these same dataclasses.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass

from thinkstream.speculative.config import SpeculativeConfig

# the GGUF-native quantization settings: the blocks as stored, and the activations in the
# kernels float32 ("gguf", exact), int16 or int8 per 32 values (opt-in, kernels/gguf.py)
GGUF_MODES = ("gguf", "gguf-q16", "gguf-q8")

ARCHITECTURES = ("llama", "qwen2", "qwen3", "gemma3")
ATTENTION_PRECISIONS = ("auto", "parity", "mixed", "float32")
KV_CACHE_DTYPES = ("auto", "float32", "bfloat16")
# set to 1 to let max_model_len pass the model's context (vLLM's VLLM_ALLOW_LONG_MAX_MODEL_LEN)
ALLOW_LONG_MAX_MODEL_LEN = "THINKSTREAM_ALLOW_LONG_MAX_MODEL_LEN"


@dataclass(frozen=True)
class RopeScaling:
    """RoPE frequency scaling. ``kind`` is "linear" or "llama3" (Llama 3.1+ style)."""

    kind: str
    factor: float
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192

    def __post_init__(self) -> None:
        if self.kind not in ("linear", "llama3"):
            raise ValueError(f"unsupported rope scaling kind {self.kind!r}")
        if self.factor <= 0:
            raise ValueError("rope scaling factor must be > 0")


@dataclass(frozen=True)
class ModelConfig:
    """Hyper-parameters of one decoder-only transformer, independent of the file format.

    Weight conventions every loader produces (canonical names, see ``loading/names.py``):
    Q/K rows in Hugging Face order (RoPE rotates the two halves of each head, "neox" style),
    norm weights multiplicative (Gemma's ``1 + w`` is folded in by the loader).
    """

    architecture: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_scaling: RopeScaling | None = None
    max_position_embeddings: int = 2048
    tie_word_embeddings: bool = False
    attention_bias: bool = False  # q/k/v projections carry a bias (Qwen2)
    qk_norm: bool = False  # RMSNorm over each head of q and k (Qwen3, Gemma 3)
    hidden_act: str = "silu"  # "silu" or "gelu_tanh"
    embedding_scale: float = 1.0  # Gemma multiplies embeddings by sqrt(hidden_size)
    sandwich_norms: bool = False  # extra norms after attention and MLP (Gemma 3)
    sliding_window: int | None = None
    layer_types: tuple[str, ...] = ()  # per layer "full" or "sliding"; empty = all full
    rope_local_theta: float | None = None  # RoPE base of sliding layers (Gemma 3)
    query_scale: float | None = None  # attention scale; None = head_dim ** -0.5
    final_logit_softcap: float | None = None
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.architecture not in ARCHITECTURES:
            raise ValueError(
                f"unknown architecture {self.architecture!r}; supported: {', '.join(ARCHITECTURES)}"
            )
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_layers",
                     "num_heads", "num_kv_heads", "head_dim"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0")
        if self.num_heads % self.num_kv_heads:
            raise ValueError("num_heads must be a multiple of num_kv_heads")
        if self.hidden_act not in ("silu", "gelu_tanh"):
            raise ValueError(f"unsupported hidden_act {self.hidden_act!r}")
        if self.layer_types:
            if len(self.layer_types) != self.num_layers:
                raise ValueError("layer_types must have one entry per layer")
            if any(t not in ("full", "sliding") for t in self.layer_types):
                raise ValueError("layer_types entries must be 'full' or 'sliding'")
            if "sliding" in self.layer_types and not self.sliding_window:
                raise ValueError("sliding layers need sliding_window")

    @property
    def scale(self) -> float:
        return self.query_scale if self.query_scale is not None else self.head_dim**-0.5

    def layer_is_sliding(self, layer: int) -> bool:
        return bool(self.layer_types) and self.layer_types[layer] == "sliding"


@dataclass(frozen=True)
class EngineConfig:
    """Knobs of the serving engine.

    ``kv_cache_memory`` (bytes) sizes the block pool unless ``num_blocks`` is given.
    """

    # "float32" | "bfloat16" | "float16" | "auto" (the hardware's fastest exact-enough
    # setting, models/precision.py; the default of LLM, the CLI and the server)
    dtype: str = "float32"
    # Weight-only quantization of the linear layers: None, "int8" or "int4" (activations
    # stay in ``dtype``; int kernels run in bfloat16 on CPU), "gguf" (a GGUF file's blocks
    # as stored, native kernels, float32 arithmetic: models/gguf_linear.py), "gguf-q16" /
    # "gguf-q8" (the same with activations rounded to int16 / int8 per 32 values in the
    # kernels: faster, less exact, opt-in; GGUF_MODES) or "auto" ("gguf" where the
    # checkpoint and this CPU allow it, else None).
    quantization: str | None = None
    device: str = "cpu"
    block_size: int = 16
    num_blocks: int | None = None
    kv_cache_memory: int = 256 * 1024 * 1024
    # The KV cache's element type: "auto" (the model's dtype, as resolved), "float32" or
    # "bfloat16" (half the bytes of float32: twice the blocks for the same kv_cache_memory,
    # half the bytes attention reads; keys and values rounded to nearest even when written,
    # widened to float32 where attention computes in it; llama.cpp's --cache-type-k/v,
    # vLLM's --kv-cache-dtype). Pool sizing uses its bytes.
    kv_cache_dtype: str = "auto"
    max_num_seqs: int = 64
    max_num_batched_tokens: int = 1024
    # The most sequences one request may ask for (SamplingParams.n; all n are made when it
    # is queued): past it a ParamError naming n (the server caps n lower, at its --max-n)
    max_n: int = 1024
    max_model_len: int | None = None  # default: the model's max_position_embeddings
    enable_prefix_caching: bool = True
    seed: int = 0
    num_threads: int | None = None  # torch intra-op threads; None = cores available
    session_policy: str = "fcfs"  # order among streaming sessions: "fcfs" | "lca" | "mcf"
    # Run pure decode steps as graphs (worker/graphs.py): torch.compile on CPU (each batch-size
    # range compiles on first use, 30-60 s for a 135M model on one core, cached on disk
    # afterwards; about 1.3-1.5x faster decode at batch 1 with int4, 1.1-1.2x at 32), CUDA
    # graphs per batch/context bucket on CUDA. Off by default: the first steps pay the
    # compile, and steps other than pure decode (prefill, mixed, cascade) stay eager anyway.
    compile_decode: bool = False
    # Special-token text inside chat messages (a user typing "<|im_end|>") is plain text
    # unless this is set; the template's own markers are the only control tokens
    # (loading/chat_encode.py).
    allow_special_tokens_in_content: bool = False
    # How attention computes (attention/metadata.py, Precision): "auto" = "parity" for
    # float32, "mixed" for bfloat16 / float16. "parity": every chunk of 2+ tokens on the
    # flash kernel (SDPA), the summation order the reference comparisons rely on; "mixed":
    # chunks of at most 32 tokens after cached context (streamed input) as grouped-query
    # matmuls in the model dtype, several times faster; "float32": every attention path
    # computes in float32 (keys and values upcast as read). Decode is float32 in all.
    attention_precision: str = "auto"
    # Distribution (distributed/): ranks of a tensor-parallel group (spawned by the engine),
    # how long one of its collectives may wait for a peer before the engine fails, and
    # TokenWeave-style overlap of a step's all-reduces with compute (two token halves).
    tensor_parallel_size: int = 1
    collective_timeout_s: float = 60.0
    tp_overlap: bool = False
    # Weight streaming (distributed/streaming.py): layers stay on disk, a window of them is
    # loaded ahead by a prefetch thread so the weights in memory stay under this many MiB.
    max_weight_memory_mb: int | None = None
    weight_window: int | None = None  # layers resident at once; None: as many as fit the cap
    # Speculative decoding (speculative/): None = off; a SpeculativeConfig, a dict of its
    # fields or a method name ("ngram", "early_exit", "fused").
    speculative: SpeculativeConfig | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "speculative", SpeculativeConfig.coerce(self.speculative))
        if self.quantization == "none":  # the CLI's spelling of None
            object.__setattr__(self, "quantization", None)
        if self.dtype not in ("auto", "float32", "bfloat16", "float16"):
            raise ValueError(f"dtype must be auto, float32, bfloat16 or float16, got {self.dtype!r}")
        if self.quantization not in (None, "int8", "int4", *GGUF_MODES, "auto"):
            raise ValueError(f"quantization must be int8, int4, {', '.join(GGUF_MODES)}, auto or None / \"none\", "
                             f"got {self.quantization!r}")
        if self.kv_cache_dtype not in KV_CACHE_DTYPES:
            raise ValueError(f"kv_cache_dtype must be one of {', '.join(KV_CACHE_DTYPES)}, "
                             f"got {self.kv_cache_dtype!r}")
        if self.block_size <= 0 or self.block_size & (self.block_size - 1):
            raise ValueError("block_size must be a positive power of two")
        if self.num_blocks is not None and self.num_blocks < 1:
            raise ValueError("num_blocks must be >= 1")
        if self.kv_cache_memory <= 0:
            raise ValueError("kv_cache_memory must be > 0")
        if self.max_num_seqs < 1:
            raise ValueError("max_num_seqs must be >= 1")
        if self.max_num_batched_tokens < 1:
            raise ValueError("max_num_batched_tokens must be >= 1")
        if self.max_n < 1:
            raise ValueError("max_n must be >= 1")
        if self.num_threads is not None and (not isinstance(self.num_threads, int) or self.num_threads < 1):
            raise ValueError(f"num_threads must be None or an integer >= 1, got {self.num_threads!r}")
        if self.max_model_len is not None and self.max_model_len < 1:
            raise ValueError("max_model_len must be >= 1")
        if self.attention_precision not in ATTENTION_PRECISIONS:
            raise ValueError(f"attention_precision must be one of {', '.join(ATTENTION_PRECISIONS)}, "
                             f"got {self.attention_precision!r}")
        if self.tensor_parallel_size < 1:
            raise ValueError("tensor_parallel_size must be >= 1")
        if self.collective_timeout_s <= 0:
            raise ValueError("collective_timeout_s must be > 0")
        if self.max_weight_memory_mb is not None and self.max_weight_memory_mb < 1:
            raise ValueError("max_weight_memory_mb must be >= 1")
        if self.weight_window is not None and (self.weight_window < 1
                                               or self.max_weight_memory_mb is None):
            raise ValueError("weight_window must be >= 1 and needs max_weight_memory_mb")
        if self.tp_overlap and self.max_weight_memory_mb is not None:
            raise ValueError("tp_overlap does not combine with max_weight_memory_mb")
        if self.compile_decode and (self.tensor_parallel_size > 1 or self.max_weight_memory_mb):
            raise ValueError("compile_decode does not combine with tensor_parallel_size > 1 "
                             "or max_weight_memory_mb")
        if self.session_policy not in ("fcfs", "lca", "mcf"):
            raise ValueError(f"session_policy must be fcfs, lca or mcf, got {self.session_policy!r}")

    def resolved_kv_cache_dtype(self, model_dtype: str) -> str:
        """The KV cache's dtype name for a model running in ``model_dtype`` (resolved:
        never "auto"): ``kv_cache_dtype``, or ``model_dtype`` for "auto"."""
        return model_dtype if self.kv_cache_dtype == "auto" else self.kv_cache_dtype


def context_len(max_model_len: int | None, model_max: int,
                env: Mapping[str, str] | None = None) -> int:
    """The context a request may use: ``max_model_len``, or (None) the model's
    ``model_max`` (its ``max_position_embeddings``, a GGUF's ``context_length``). Past the
    model's maximum is a ``ValueError``, as in vLLM (positions the model was never trained
    on: outputs degrade), unless ``env`` (default ``os.environ``) sets
    ``THINKSTREAM_ALLOW_LONG_MAX_MODEL_LEN=1`` (then it is taken as asked, with a warning)."""
    if max_model_len is None:
        return model_max
    if max_model_len <= model_max:
        return max_model_len
    env = os.environ if env is None else env
    if env.get(ALLOW_LONG_MAX_MODEL_LEN, "").strip().lower() in ("1", "true"):
        logging.getLogger("thinkstream").warning(
            "max_model_len %d is past the model's context of %d tokens (%s=1): outputs past it "
            "may be wrong", max_model_len, model_max, ALLOW_LONG_MAX_MODEL_LEN)
        return max_model_len
    raise ValueError(
        f"max_model_len: the requested {max_model_len} is greater than the model's maximum "
        f"context of {model_max} tokens (max_position_embeddings); positions past it are "
        f"untrained and outputs may be wrong. Set {ALLOW_LONG_MAX_MODEL_LEN}=1 to allow it")
