"""The parity prompts shared by the integration tests (fidelity is judged on the same set)."""

PARITY_PROMPTS = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "List three prime numbers.",
    "Explain what a KV cache is in one sentence.",
    "Translate 'good morning' into Spanish.",
]
