"""Weight streaming on the real default model (SmolLM2-135M, 30 layers, float32 weights
~540 MB) with a cap of one third of it: greedy tokens identical to the loaded model, and
the process's peak RSS while generating stays within the cap (+ activations): measured
in a subprocess, its peak reset once the engine is built (``/proc/self/clear_refs``) and
the always-resident weights (embedding = head, final norm) counted against the cap."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from thinkstream import LLM, SamplingParams
from thinkstream.loading.names import expected_shapes

pytestmark = pytest.mark.integration
MIB = 1 << 20
CHAT = [{"role": "user", "content": "What is the capital of France?"}]
MAX_TOKENS = 2
SLACK_MB = 24  # activations of a short prompt, one layer's memory-mapped GGUF bytes

CHILD = r"""
import json, sys, torch
torch.set_num_threads(1)
from thinkstream import LLM, SamplingParams

def status(key):
    return next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith(key))

llm = LLM(max_weight_memory_mb=int(sys.argv[1]), dtype="float32", num_threads=1, num_blocks=16)
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # the peak so far (the load) is forgotten: VmHWM = VmRSS
before = status("VmRSS:")
out = llm.chat(json.loads(sys.argv[2]), SamplingParams(temperature=0, max_tokens=int(sys.argv[3])))
print(json.dumps({"tokens": list(out[0].outputs[0].token_ids), "before": before,
                  "peak": status("VmHWM:"), "window": llm.engine.model.layers.window}))
"""


@pytest.mark.slow  # ~15 s quiet, 30 s loaded: every step dequantizes all 30 layers
def test_streamed_model_within_a_third_of_its_size(refs) -> None:
    if not os.path.exists("/proc/self/clear_refs"):
        pytest.skip("needs Linux's /proc/self/clear_refs to reset the peak RSS")
    ckpt = refs.checkpoint(None)
    cfg = ckpt.config
    weights = sum(4 * _numel(s) for s in expected_shapes(cfg).values())  # float32
    cap_mb = weights // 3 // MIB
    child = subprocess.run([sys.executable, "-c", CHILD, str(cap_mb), json.dumps(CHAT),
                            str(MAX_TOKENS)], capture_output=True, text=True, timeout=300)
    assert child.returncode == 0, child.stderr[-2000:]
    got = json.loads(child.stdout.strip().splitlines()[-1])
    loaded = LLM(checkpoint=ckpt, dtype="float32", quantization=None, num_threads=1,
                 num_blocks=16).chat(
        CHAT, SamplingParams(temperature=0, max_tokens=MAX_TOKENS))
    assert got["tokens"] == list(loaded[0].outputs[0].token_ids)
    assert 1 <= got["window"] < cfg.num_layers
    resident = 4 * (cfg.vocab_size * cfg.hidden_size + cfg.hidden_size)  # embedding=head, norm
    streamed = got["peak"] - got["before"]  # layers loaded, activations, while generating
    assert resident + streamed <= (cap_mb + SLACK_MB) * MIB, (resident / MIB, streamed / MIB)


def test_cap_below_resident_weights_is_refused(refs) -> None:
    with pytest.raises(ValueError, match="max_weight_memory_mb 64 is below"):
        LLM(refs.path(None), dtype="float32", max_weight_memory_mb=64, num_threads=1, num_blocks=16)


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n
