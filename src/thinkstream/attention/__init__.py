"""Attention over the paged KV cache, in three typed paths.

``metadata`` plans a step's attention once (slots, context, masks, and a typed group per
kind of work) under an explicit ``AttentionConfig`` (precision, short-chunk and cascade
thresholds); ``paged`` writes each layer's keys and values and runs every group on its
path: ``prefill`` (1: prompts and long chunks on SDPA), ``few_query`` (2: decode and short
chunks as grouped-query matmuls) and ``cascade`` (3: decode rows sharing a prefix read it
once)."""
