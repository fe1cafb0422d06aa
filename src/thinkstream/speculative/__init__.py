"""Speculative decoding: proposers guess a sequence's next tokens, the target verifies
them in the step's one forward, beside the rest of the batch, and keeps what it agrees
with, exactly (greedy: token for token; sampling: the target's distribution).

``config.py`` the settings; ``proposer.py`` the interface (``Draft``, ``Proposer``);
``ngram.py`` prompt lookup; ``early_exit.py`` the target's first layers as a drafter;
``fused.py`` several proposers, the most confident per position; ``verify.py`` the
acceptance rule; ``adaptive.py`` each request's length and the batch's budget;
``decoder.py`` the engine hook. Draft tokens are pending tokens of their sequence
(``Sequence.draft_token_ids``); the rejected ones are rolled back by
``Scheduler.settle_drafts``.

Lazy: ``thinkstream.speculative.config`` imports without torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from thinkstream.lazy import lazy_exports

_EXPORTS = {"SpeculativeConfig": "thinkstream.speculative.config",
            "SpeculativeDecoder": "thinkstream.speculative.decoder",
            "Draft": "thinkstream.speculative.proposer",
            "Proposer": "thinkstream.speculative.proposer",
            "NgramProposer": "thinkstream.speculative.ngram"}
__all__ = ["Draft", "NgramProposer", "Proposer", "SpeculativeConfig", "SpeculativeDecoder"]

if TYPE_CHECKING:
    from thinkstream.speculative.config import SpeculativeConfig
    from thinkstream.speculative.decoder import SpeculativeDecoder
    from thinkstream.speculative.ngram import NgramProposer
    from thinkstream.speculative.proposer import Draft, Proposer


__getattr__ = lazy_exports(__name__, _EXPORTS)
