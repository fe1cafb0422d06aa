"""Attention over the paged KV cache: ``paged`` plans a step's attention (metadata: slots,
context, masks, groups) and runs its paths (prefill / extend with SDPA, decode, cascade
decode, short chunks); ``short`` holds the few-query kernels over gathered context."""
