"""Hand the C heap's free pages back to the operating system (glibc's ``malloc_trim``).

Loading a GGUF model dequantizes every tensor to float32 (``gguf.quants``) and then drops
the copies the GGUF kernels do not need (models/gguf_linear.py keeps no dense copy where
the kernel runs at every row count). Those buffers are a few MB each: glibc serves them from
its heap (its mmap threshold rises to 32 MB after the first large free), and freeing them
leaves the pages mapped, so the process kept the ~430 MB it no longer uses (SmolLM2-135M
on Zen 4: RSS 1,315 MB after ``LLM()``, 853 MB after a trim). ``LLMEngine`` trims once,
after its model is built and the loaded checkpoint dropped. Elsewhere (musl, macOS,
Windows) there is no such call and nothing happens.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools


@functools.cache
def _malloc_trim():
    """libc's ``malloc_trim`` or None where the C library has none."""
    name = ctypes.util.find_library("c")
    try:
        fn = ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):
        return None
    if fn is not None:
        fn.argtypes, fn.restype = [ctypes.c_size_t], ctypes.c_int
    return fn


def trim_heap() -> bool:
    """Release the heap's free pages; True if the C library released any (glibc), False
    where it released none or has no ``malloc_trim``. About 0.1 ms; no ``gc.collect()``
    (0.2 s in a process that imported transformers; the checkpoint has no cycles: reference
    counting frees it when the engine drops it)."""
    fn = _malloc_trim()
    return bool(fn(0)) if fn is not None else False
