"""Hugging Face directory -> ``ModelConfig`` + canonical float32 tensors.

Reads ``config.json`` and ``model.safetensors`` (or the shards listed in
``model.safetensors.index.json``). Gemma stores each RMSNorm weight ``w`` used as ``1 + w``:
the loader adds the 1, so every canonical norm weight is multiplicative.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from thinkstream.config import ModelConfig, RopeScaling
from thinkstream.loading.errors import CorruptModelError, UnsupportedArchitectureError
from thinkstream.loading.names import hf_to_canonical

_ARCHITECTURES = {
    "LlamaForCausalLM": "llama",
    "Qwen2ForCausalLM": "qwen2",
    "Qwen3ForCausalLM": "qwen3",
    "Gemma3ForCausalLM": "gemma3",
    "MistralForCausalLM": "llama",  # Llama's layers; a sliding window on every layer if set
}
_MODEL_TYPES = {"llama": "llama", "qwen2": "qwen2", "qwen3": "qwen3", "gemma3_text": "gemma3",
                "mistral": "llama"}
_ACTIVATIONS = {"silu": "silu", "gelu_pytorch_tanh": "gelu_tanh", "gelu_tanh": "gelu_tanh"}


def read_config_json(directory: Path) -> dict[str, Any]:
    path = directory / "config.json"
    if not path.is_file():
        raise CorruptModelError(f"{directory}: missing config.json")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError as err:
        raise CorruptModelError(f"{path}: invalid JSON ({err})") from err


def _architecture(raw: dict[str, Any], directory: Path) -> str:
    for name in raw.get("architectures") or []:
        if name in _ARCHITECTURES:
            return _ARCHITECTURES[name]
    if not raw.get("architectures") and raw.get("model_type") in _MODEL_TYPES:
        return _MODEL_TYPES[raw["model_type"]]
    found = raw.get("architectures") or raw.get("model_type")
    raise UnsupportedArchitectureError(
        f"{directory / 'config.json'}: architecture {found!r} is not supported "
        f"(supported: {', '.join(_ARCHITECTURES)})")


def _rope(raw: dict[str, Any], key: str) -> tuple[float | None, RopeScaling | None]:
    """(theta, scaling) from old keys (rope_theta, rope_scaling) or transformers 5's rope_parameters,
    which Gemma 3 nests per layer type (``key`` picks "full_attention" or "sliding_attention")."""
    params = raw.get("rope_parameters") or {}
    if key in params:
        params = params[key]
    theta = params.get("rope_theta", raw.get("rope_theta"))
    scaling = raw.get("rope_scaling") or params
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    if kind == "default":
        return theta, None
    if kind == "linear":
        return theta, RopeScaling("linear", float(scaling["factor"]))
    if kind == "llama3":
        return theta, RopeScaling(
            "llama3", float(scaling["factor"]), float(scaling["low_freq_factor"]),
            float(scaling["high_freq_factor"]), int(scaling["original_max_position_embeddings"]))
    raise UnsupportedArchitectureError(f"rope scaling {kind!r} is not supported")


def hf_config(directory: Path, raw: dict[str, Any] | None = None) -> ModelConfig:
    """``config.json`` (or ``raw``, its contents) -> ``ModelConfig``. A required key
    missing or a value of the wrong type is a ``CorruptModelError`` naming the file and the
    key (it was a bare ``KeyError`` / ``TypeError``)."""
    raw = read_config_json(directory) if raw is None else raw
    path = directory / "config.json"
    try:
        return _hf_config(directory, raw)
    except KeyError as err:
        raise CorruptModelError(f"{path}: missing {err.args[0]!r}") from err
    except (TypeError, ValueError) as err:
        raise CorruptModelError(f"{path}: invalid configuration ({err})") from err


def _hf_config(directory: Path, raw: dict[str, Any]) -> ModelConfig:
    arch = _architecture(raw, directory)
    if "text_config" in raw:
        raw = {**raw, **raw["text_config"]}
    hidden, heads = raw["hidden_size"], raw["num_attention_heads"]
    eos = raw.get("eos_token_id")
    fields: dict[str, Any] = {}
    theta, scaling = _rope(raw, "full_attention")
    if arch == "gemma3":
        layers = raw["num_hidden_layers"]
        types = raw.get("layer_types") or [
            "full_attention" if (i + 1) % raw.get("sliding_window_pattern", 6) == 0 else "sliding_attention"
            for i in range(layers)]
        local_theta = _rope(raw, "sliding_attention")[0] if "sliding_attention" in (raw.get("rope_parameters") or {}) else None
        fields = dict(
            qk_norm=True, sandwich_norms=True, embedding_scale=math.sqrt(hidden),
            sliding_window=raw.get("sliding_window"),
            layer_types=tuple("sliding" if t == "sliding_attention" else "full" for t in types),
            rope_local_theta=float(local_theta or raw.get("rope_local_base_freq", 10000.0)),
            query_scale=float(raw.get("query_pre_attn_scalar", raw.get("head_dim", 256))) ** -0.5,
            final_logit_softcap=raw.get("final_logit_softcapping"),
        )
        if raw.get("attn_logit_softcapping"):
            raise UnsupportedArchitectureError(f"{directory}: attention logit soft-capping is not supported")
    elif arch == "qwen3":
        fields = dict(qk_norm=True)
    elif raw.get("model_type") == "mistral" and raw.get("sliding_window"):
        fields = dict(sliding_window=raw["sliding_window"],
                      layer_types=("sliding",) * raw["num_hidden_layers"])
    act = raw.get("hidden_activation") or raw.get("hidden_act") or "silu"
    if act not in _ACTIVATIONS:
        raise UnsupportedArchitectureError(f"{directory}: activation {act!r} is not supported")
    return ModelConfig(
        architecture=arch,
        vocab_size=raw["vocab_size"],
        hidden_size=hidden,
        intermediate_size=raw["intermediate_size"],
        num_layers=raw["num_hidden_layers"],
        num_heads=heads,
        num_kv_heads=raw.get("num_key_value_heads") or heads,
        head_dim=raw.get("head_dim") or hidden // heads,
        rms_norm_eps=float(raw.get("rms_norm_eps", 1e-6)),
        rope_theta=float(theta if theta is not None else 10000.0),
        rope_scaling=scaling,
        max_position_embeddings=raw.get("max_position_embeddings", 2048),
        tie_word_embeddings=bool(raw.get("tie_word_embeddings", arch == "gemma3")),
        attention_bias=bool(raw.get("attention_bias", arch == "qwen2")),
        hidden_act=_ACTIVATIONS[act],
        bos_token_id=raw.get("bos_token_id"),
        eos_token_ids=tuple(eos if isinstance(eos, list) else [eos] if eos is not None else []),
        **fields,
    )


def _shard_files(directory: Path) -> list[Path]:
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        except (ValueError, KeyError) as err:
            raise CorruptModelError(f"{index}: invalid index ({err})") from err
        files = [directory / f for f in dict.fromkeys(weight_map.values())]
    else:
        files = sorted(directory.glob("*.safetensors"))
    if not files:
        raise CorruptModelError(f"{directory}: no *.safetensors weights")
    for f in files:
        if not f.is_file():
            raise CorruptModelError(f"{f}: shard listed in the index is missing")
    return files


def hf_tensors(directory: Path, config: ModelConfig,
               keep: Callable[[str], bool] | None = None) -> dict[str, torch.Tensor]:
    """Every tensor thinkstream uses (or those whose canonical name ``keep`` accepts), as
    float32 under its canonical name (safetensors reads only the tensors asked for)."""
    gemma = config.architecture == "gemma3"
    out: dict[str, torch.Tensor] = {}
    for file in _shard_files(directory):
        try:
            with safe_open(str(file), framework="pt") as f:
                for name in f.keys():  # noqa: SIM118 - safe_open is not a mapping
                    canonical = hf_to_canonical(name, sandwich_norms=config.sandwich_norms)
                    if canonical is None or (keep is not None and not keep(canonical)):
                        continue
                    tensor = f.get_tensor(name).to(torch.float32)
                    if gemma and canonical.endswith("norm.weight"):
                        tensor = tensor + 1.0  # Gemma's RMSNorm multiplies by (1 + w)
                    out[canonical] = tensor
        except (OSError, ValueError, RuntimeError, SafetensorError) as err:
            raise CorruptModelError(f"{file}: cannot read safetensors ({err})") from err
    if config.tie_word_embeddings:
        out.pop("lm_head.weight", None)
    return out
