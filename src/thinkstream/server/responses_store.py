"""The Responses API's stored responses: what ``GET /v1/responses/{id}``, its
``input_items``, ``previous_response_id`` and ``background`` read.

A ``StoredResponse`` holds one response object (``body``: the latest one; ``queued`` /
``in_progress`` while it runs, then its final object), the input items its request sent
(``input_items``, each with an ``id``, as OpenAI lists them) and the conversation before
them (``context``: the items of the ``previous_response_id`` chain, instructions left out).
The next turn's items are ``context + input_items + body["output"]``. A background response
that streams also keeps its events (``events``, sequence number == index) for a resumed
``GET ...?stream=true&starting_after=N``.

``ResponseStore`` is bounded (``ServerConfig.responses_store_size``): past its size the
least recently used response (created, read, continued) is forgotten. Keys are ``(owner,
id)`` as everywhere in the server: one API key never reaches another's responses. One store
per app (``ServerState.store``), used from the event loop only.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from dataclasses import dataclass, field

Key = tuple[str, str]
DONE = ("completed", "incomplete", "cancelled", "failed")  # statuses a response ends in


@dataclass
class StoredResponse:
    body: dict
    input_items: list[dict]
    context: list[dict] = field(default_factory=list)
    events: list[dict] | None = None  # a streamed background response's events so far
    wake: asyncio.Event = field(default_factory=asyncio.Event)  # set on every change

    @property
    def done(self) -> bool:
        return self.body["status"] in DONE

    def conversation(self) -> list[dict]:
        """The items a ``previous_response_id`` naming this response continues."""
        return self.context + self.input_items + self.body["output"]

    def update(self, body: dict | None = None, event: dict | None = None) -> None:
        """A new response object and / or one more event; wakes whoever waits on it."""
        if body is not None:
            self.body = body
        if event is not None and self.events is not None:
            self.events.append(event)
        self.wake.set()
        self.wake = asyncio.Event()


class ResponseStore:
    def __init__(self, max_size: int) -> None:
        if max_size < 0:
            raise ValueError(f"responses store size must be >= 0, got {max_size}")
        self.max_size = max_size
        self._items: OrderedDict[Key, StoredResponse] = OrderedDict()

    @property
    def enabled(self) -> bool:
        return self.max_size > 0

    def __len__(self) -> int:
        return len(self._items)

    def keys(self) -> list[Key]:
        """Keys, least recently used first."""
        return list(self._items)

    def put(self, key: Key, entry: StoredResponse) -> None:
        """Store ``entry`` (replacing one of the same key) as the most recently used;
        forget the least recently used past the size."""
        self._items[key] = entry
        self._items.move_to_end(key)
        while len(self._items) > self.max_size:
            self._items.popitem(last=False)

    def get(self, key: Key) -> StoredResponse | None:
        """The response, now the most recently used; None if unknown or forgotten."""
        entry = self._items.get(key)
        if entry is not None:
            self._items.move_to_end(key)
        return entry

    def find_item(self, owner: str, item_id: str) -> dict | None:
        """An input or output item of ``owner``'s stored responses by its id (the most
        recently used response first), for an ``item_reference``; None if none has it."""
        for (who, _), entry in reversed(self._items.items()):
            if who == owner:
                for item in entry.input_items + entry.body["output"]:
                    if item.get("id") == item_id:
                        return item
        return None

    def pop(self, key: Key) -> StoredResponse | None:
        return self._items.pop(key, None)

    def discard(self, key: Key, entry: StoredResponse) -> None:
        """Forget ``entry`` if ``key`` still holds it (not one stored since under its id)."""
        if self._items.get(key) is entry:
            del self._items[key]
