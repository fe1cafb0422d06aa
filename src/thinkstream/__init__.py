"""thinkstream: an LLM inference engine for streaming input and parallel generation."""
