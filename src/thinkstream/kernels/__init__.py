"""Native CPU kernels (C, built on first use; torch fallbacks where they cannot run)."""

from thinkstream.kernels.native import load_softmax_bf16, softmax_last

__all__ = ["load_softmax_bf16", "softmax_last"]
