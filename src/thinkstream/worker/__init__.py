"""What runs a scheduled step on the device: ``runner`` (inputs, forward, logits rows,
prompt logprobs), ``sampling`` (pure sampling numerics with explicit generators) and
``graphs`` (the decode step under ``torch.compile`` and CUDA graph capture)."""
