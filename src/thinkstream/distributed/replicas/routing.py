"""Which replica serves a request: session affinity, prefix routing, least-loaded fallback.

- A session's every call goes to the replica that opened it (its KV lives there); when
  that replica is dead the session is lost (the router answers 410 with the reason).
- A plain request goes to the replica that served the longest known prefix of its
  prompt, counted in whole KV blocks (up to ``prefix_blocks``), so shared prompts hit
  one replica's prefix cache (SGLang's cache-aware router does this with a radix tree;
  a table of chained block hashes is enough here). Unknown prefixes, and replicas at
  their cap, fall back to the least-loaded replica, which then owns the prefix.
- Load is requests in flight plus open sessions; a replica at ``max_load`` takes no new
  work, and with every replica there the request is refused (429).

This module imports no torch, no Ray: the policy tests in milliseconds.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field


class NoReplicaError(Exception):
    """No live replica can take the request: ``overloaded`` (429) or all dead (503)."""

    def __init__(self, message: str, overloaded: bool) -> None:
        super().__init__(message)
        self.overloaded = overloaded


class SessionLostError(Exception):
    """The replica holding a session died (410)."""


@dataclass
class ReplicaState:
    index: int
    url: str
    in_flight: int = 0
    sessions: set[str] = field(default_factory=set)
    dead: str | None = None  # why it is dead
    routed: int = 0  # requests sent to it so far

    @property
    def load(self) -> int:
        return self.in_flight + len(self.sessions)


def prefix_keys(token_ids: Sequence[int], block_size: int, max_blocks: int) -> list[str]:
    """Chained hashes of the prompt's first full blocks, longest first."""
    keys, h = [], hashlib.blake2b(digest_size=16)
    for b in range(min(len(token_ids) // block_size, max_blocks)):
        h.update(repr(tuple(token_ids[b * block_size : (b + 1) * block_size])).encode())
        keys.append(h.copy().hexdigest())
    return keys[::-1]


class Router:
    """The routing state of one endpoint (touched from its event loop only)."""

    def __init__(self, urls: Sequence[str], block_size: int = 16, prefix_blocks: int = 4,
                 max_load: int = 256, max_prefixes: int = 65536) -> None:
        self.replicas = [ReplicaState(i, u) for i, u in enumerate(urls)]
        self.block_size, self.prefix_blocks = block_size, prefix_blocks
        self.max_load = max_load
        self.affinity: dict[str, int] = {}  # session id -> replica
        self.lost: dict[str, str] = {}  # session id -> why it was lost
        self._prefixes: OrderedDict[str, int] = OrderedDict()  # LRU: prefix key -> replica
        self._max_prefixes = max_prefixes

    def live(self) -> list[ReplicaState]:
        return [r for r in self.replicas if r.dead is None]

    def least_loaded(self) -> ReplicaState:
        live = self.live()
        if not live:
            raise NoReplicaError("no replica is alive", overloaded=False)
        best = min(live, key=lambda r: (r.load, r.routed))
        if best.load >= self.max_load:
            raise NoReplicaError("every replica is at capacity; retry later", overloaded=True)
        return best

    def for_prompt(self, token_ids: Sequence[int] | None) -> ReplicaState:
        """The replica for a plain request with these prompt ids (None: unknown)."""
        keys = prefix_keys(token_ids or (), self.block_size, self.prefix_blocks)
        for key in keys:
            i = self._prefixes.get(key)
            if i is not None:
                r = self.replicas[i]
                if r.dead is None and r.load < self.max_load:
                    self._remember(keys, r.index)
                    return r
                break
        r = self.least_loaded()
        self._remember(keys, r.index)
        return r

    def _remember(self, keys: list[str], index: int) -> None:
        for key in keys:
            self._prefixes[key] = index
            self._prefixes.move_to_end(key)
        while len(self._prefixes) > self._max_prefixes:
            self._prefixes.popitem(last=False)

    def for_session(self, session_id: str) -> ReplicaState | None:
        """The replica holding ``session_id``; None if unknown; ``SessionLostError`` if
        its replica died."""
        if session_id in self.lost:
            raise SessionLostError(self.lost[session_id])
        i = self.affinity.get(session_id)
        return None if i is None else self.replicas[i]

    def opened(self, session_id: str, replica: ReplicaState) -> None:
        self.affinity[session_id] = replica.index
        replica.sessions.add(session_id)

    def ended(self, session_id: str) -> None:
        i = self.affinity.pop(session_id, None)
        if i is not None:
            self.replicas[i].sessions.discard(session_id)

    def mark_dead(self, replica: ReplicaState, reason: str) -> None:
        """The replica is gone: its sessions are lost, its prefixes forgotten."""
        if replica.dead is not None:
            return
        replica.dead = reason
        for sid in list(replica.sessions):
            self.affinity.pop(sid, None)
            self.lost[sid] = (f"session {sid} is lost: replica {replica.index} that held its "
                              f"KV cache died ({reason})")
        replica.sessions.clear()
        for key in [k for k, i in self._prefixes.items() if i == replica.index]:
            del self._prefixes[key]
