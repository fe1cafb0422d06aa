"""Streaming input: sessions whose prompt is still arriving while it is prefilled.

The pure parts (re-tokenization, session input state, scheduling policies, errors) are
exported here; ``streaming.sessions.SessionManager`` drives an ``LLMEngine`` and is imported
from its module (it depends on the engine, which depends on ``streaming.policy``).
"""

from thinkstream.engine.policy import POLICIES, policy_key
from thinkstream.streaming.errors import (
    SequenceGapError,
    SessionClosedError,
    SessionError,
    SessionNotFoundError,
)
from thinkstream.streaming.retokenize import TailTokenizer, common_prefix_len
from thinkstream.streaming.state import Edit, SessionInput

__all__ = [
    "POLICIES", "Edit", "SequenceGapError", "SessionClosedError", "SessionError", "SessionInput",
    "SessionNotFoundError", "TailTokenizer", "common_prefix_len", "policy_key",
]
