"""Structure in a model's output text: tool calls (``tool_calls``: formats behind a
registry, ``--tool-call-parser``), reasoning blocks (``reasoning``: ``--reasoning-parser``)
and both together per choice (``output``). Pure text in, events out: no torch, no server."""
