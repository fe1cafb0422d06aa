"""Scheduling policies among streaming sessions (after Stream2LLM), as priority keys.

The scheduler sorts its running and waiting sequences by the key each step (smaller first):
first in line gets the token budget and blocks; under memory pressure the last is preempted
first (idle open sessions go before anything else, whatever the policy). An ordinary
request is a session whose input closed when it arrived, so every policy orders it too.

- ``fcfs``: finished input first, then first come first served. A closed input has a user
  waiting for its answer; an open one can be prefilled later, it is still arriving.
- ``lca``: last chunk arrival: the sequence whose newest input is oldest goes first (the
  backlog that has waited longest), closed or not.
- ``mcf``: most computed first: the sequence with the most tokens already in the cache goes
  first (closest to done, and the most KV to lose if preempted).

Pure functions of a ``Sequence``; no torch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from thinkstream.engine.request import Sequence

PriorityKey = Callable[[Sequence], Any]


def fcfs(seq: Sequence) -> tuple:
    return (not seq.input_closed, seq.arrival_time)


def last_chunk_arrival(seq: Sequence) -> tuple:
    return (seq.last_input_time, seq.arrival_time)


def most_computed_first(seq: Sequence) -> tuple:
    return (-seq.num_computed_tokens, seq.arrival_time)


POLICIES: dict[str, PriorityKey] = {"fcfs": fcfs, "lca": last_chunk_arrival, "mcf": most_computed_first}


def policy_key(name: str) -> PriorityKey:
    try:
        return POLICIES[name]
    except KeyError:
        raise ValueError(f"unknown session policy {name!r}; choose from {', '.join(POLICIES)}") from None
