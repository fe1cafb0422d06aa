"""The block pool, KV manager and scheduler import without torch (the package is lazy)."""

from __future__ import annotations

import subprocess
import sys


def test_kv_and_scheduler_import_without_torch() -> None:
    code = ("import sys\n"
            "import thinkstream.kv.block_pool, thinkstream.kv.manager, thinkstream.engine.scheduler\n"
            "loaded = sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.'))\n"
            "print(len(loaded))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "0", out.stdout


def test_the_package_still_exports_the_api_lazily() -> None:
    import thinkstream

    assert thinkstream.LLM.__module__ == "thinkstream.llm"
    assert thinkstream.SamplingParams.__name__ == "SamplingParams"
    assert sorted(thinkstream.__all__) == sorted([
        "LLM", "LLMEngine", "SamplingParams", "EngineConfig", "ModelConfig", "RequestOutput",
        "CompletionOutput", "Logprob", "RequestError", "ParamError"])
