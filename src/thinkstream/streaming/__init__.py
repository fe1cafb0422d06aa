"""Streaming input: sessions whose prompt is still arriving while it is prefilled.

The pure parts (re-tokenization, session input state, errors; the scheduling policies live
in ``engine.policy``) are exported here; ``streaming.sessions.SessionManager`` drives an
``LLMEngine`` and is imported from its module, as is ``streaming.close_check`` (the
engine hook that confirms a closed input's ids beside the answer's first step).
"""

from thinkstream.engine.policy import POLICIES, policy_key
from thinkstream.streaming.errors import (
    SequenceGapError,
    SessionClosedError,
    SessionError,
    SessionLimitError,
    SessionNotFoundError,
    SessionTooLongError,
)
from thinkstream.streaming.retokenize import TailTokenizer, common_prefix_len
from thinkstream.streaming.state import Edit, SessionInput

__all__ = [
    "POLICIES", "Edit", "SequenceGapError", "SessionClosedError", "SessionError", "SessionInput",
    "SessionLimitError", "SessionNotFoundError", "SessionTooLongError", "TailTokenizer",
    "common_prefix_len", "policy_key",
]
