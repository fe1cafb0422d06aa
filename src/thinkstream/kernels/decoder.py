"""The native decoder stack (``decoder.c``): its C structures and the loaded library.

``decoder.c`` holds no matmul or attention of its own: the model descriptor carries the
entry points of the GGUF matmul library (``kernels/gguf.py``) and of the fused attention
library (``kernels/attention.py``), so the stack runs exactly the kernels the eager path
calls. Built with the system compiler for the instruction set the GGUF kernels use
(``native.open_isa_library``: the elementwise loops, SiLU's exp among them, vectorise to
its width); where it cannot be (no compiler, ``THINKSTREAM_NATIVE=0``, a forced build this
CPU cannot run) ``load_decoder`` returns None and the model keeps its eager layers.
"""

from __future__ import annotations

import ctypes
import functools
from pathlib import Path

from thinkstream.kernels.native import open_isa_library, wanted_isa

_SRC = Path(__file__).with_name("decoder.c")

_f32p = ctypes.POINTER(ctypes.c_float)
_i64 = ctypes.c_int64
_ptr = ctypes.c_void_p


class Part(ctypes.Structure):
    """One GGUF matrix of a projection: output columns ``col`` .. ``col + rows``."""

    _fields_ = [("qtype", _i64), ("w", _ptr), ("row_bytes", _i64), ("rows", _i64), ("col", _i64)]


class Linear(ctypes.Structure):
    _fields_ = [("parts", Part * 3), ("nparts", _i64), ("k", _i64), ("n", _i64), ("bias", _ptr)]


class Layer(ctypes.Structure):
    _fields_ = [("attn_norm", _ptr), ("mlp_norm", _ptr), ("post_attn_norm", _ptr),
                ("post_mlp_norm", _ptr), ("q_norm", _ptr), ("k_norm", _ptr),
                ("qkv", Linear), ("o", Linear), ("gate_up", Linear), ("down", Linear),
                ("k_cache", _ptr), ("v_cache", _ptr), ("rope", _i64), ("sliding", _i64)]


class Model(ctypes.Structure):
    _fields_ = [("hidden", _i64), ("heads", _i64), ("kv_heads", _i64), ("head_dim", _i64),
                ("inter", _i64), ("gelu", _i64), ("num_layers", _i64), ("eps", ctypes.c_double),
                ("scale", ctypes.c_double), ("layers", ctypes.POINTER(Layer)), ("matmul", _ptr),
                ("attention", _ptr), ("timers", ctypes.POINTER(ctypes.c_double)), ("clock_id", _i64),
                ("kv_bf16", _i64), ("attention_keys", _ptr), ("attention_merge", _ptr)]


class Group(ctypes.Structure):
    """One attention group: ``b`` sequences x ``nq`` queries; query i is packed row
    ``index[i]`` (NULL: ``start + i``) and keeps its output where ``real[i]`` (NULL: all)."""

    _fields_ = [("b", _i64), ("nq", _i64), ("start", _i64), ("index", _ptr), ("real", _ptr),
                ("slots", _ptr), ("slot_b_stride", _i64), ("length", _i64), ("mask", _ptr * 2),
                ("mask_b", _i64 * 2), ("mask_q", _i64 * 2)]


class Step(ctypes.Structure):
    """One step of ``t`` packed rows and its attention groups."""

    _fields_ = [("t", _i64), ("ngroups", _i64), ("cos", _ptr * 2), ("sin", _ptr * 2),
                ("slot_mapping", _ptr), ("groups", ctypes.POINTER(Group))]


@functools.cache
def _load(isa: str) -> ctypes.CDLL | None:
    lib = open_isa_library(_SRC, isa, "td_isa")  # with OpenMP: one parallel region per step
    if lib is None:
        return None
    lib.td_forward.restype = ctypes.c_int
    lib.td_forward.argtypes = [ctypes.POINTER(Model), ctypes.POINTER(Step), _ptr, ctypes.c_int]
    return lib


def load_decoder() -> ctypes.CDLL | None:
    """The library (``td_forward(model*, step*, x, threads) -> int``), or None where it
    cannot be built or ``THINKSTREAM_NATIVE=0``."""
    isa = wanted_isa()
    return None if isa is None else _load(isa)
