"""The Responses API's stored responses: what ``GET /v1/responses/{id}``, its
``input_items``, ``previous_response_id`` and ``background`` read.

A ``StoredResponse`` holds one response object (``body``: the latest one; ``queued`` /
``in_progress`` while it runs, then its final object), the input items its request sent
(``input_items``, each with an ``id``, as OpenAI lists them) and the conversation before
them (``context``: the items of the ``previous_response_id`` chain, instructions left out).
The next turn's items are ``context + input_items + body["output"]``. A background response
that streams also keeps its events (``events``, sequence number == index) for a resumed
``GET ...?stream=true&starting_after=N``.

``ResponseStore`` is bounded twice: by count (``ServerConfig.responses_store_size``) and
by bytes (``responses_store_bytes``); past either, the least recently used responses
(created, read, continued) are forgotten until both hold. A response's bytes (``nbytes``)
are the length of its JSON: body, input items, context and events; the context is counted
in every response that continues it (their items are shared, so this overcounts, never
under). A response grows as it runs and is re-counted at each ``update``; one that is over
the whole budget on its own is forgotten alone (the others stay; those it pushed out while
it grew stay out): a later ``GET`` of it is a 404, as of any forgotten one, while it runs on
unseen to its end (its ``/cancel`` still works). Keys are ``(owner, id)`` as everywhere in the server: one API key never reaches
another's responses. One store per app (``ServerState.store``), used from the event loop
only.
"""

from __future__ import annotations

import asyncio
import json
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

Key = tuple[str, str]
DONE = ("completed", "incomplete", "cancelled", "failed")  # statuses a response ends in


def json_size(value: object) -> int:
    """What a stored value costs, as the store counts it: the length of its JSON."""
    return len(json.dumps(value))


@dataclass
class StoredResponse:
    body: dict
    input_items: list[dict]
    context: list[dict] = field(default_factory=list)
    events: list[dict] | None = None  # a streamed background response's events so far
    wake: asyncio.Event = field(default_factory=asyncio.Event)  # set on every change
    nbytes: int = field(init=False)  # the JSON length of all the above (``json_size``)
    _body_bytes: int = field(init=False, repr=False)
    resized: Callable[[], None] | None = field(default=None, repr=False)  # the store's hook

    def __post_init__(self) -> None:
        self._body_bytes = json_size(self.body)
        self.nbytes = (self._body_bytes + json_size(self.input_items) + json_size(self.context)
                       + sum(json_size(ev) for ev in self.events or ()))

    @property
    def done(self) -> bool:
        return self.body["status"] in DONE

    def conversation(self) -> list[dict]:
        """The items a ``previous_response_id`` naming this response continues."""
        return self.context + self.input_items + self.body["output"]

    def update(self, body: dict | None = None, event: dict | None = None) -> None:
        """A new response object and / or one more event; wakes whoever waits on it."""
        if body is not None:
            self.body, before, self._body_bytes = body, self._body_bytes, json_size(body)
            self.nbytes += self._body_bytes - before
        if event is not None and self.events is not None:
            self.events.append(event)
            self.nbytes += json_size(event)
        self.wake.set()
        self.wake = asyncio.Event()
        if self.resized is not None:
            self.resized()


class ResponseStore:
    def __init__(self, max_size: int, max_bytes: int = 256 * 1024 * 1024) -> None:
        if max_size < 0:
            raise ValueError(f"responses store size must be >= 0, got {max_size}")
        if max_bytes < 1:
            raise ValueError(f"responses store bytes must be >= 1, got {max_bytes}")
        self.max_size, self.max_bytes = max_size, max_bytes
        self.nbytes = 0  # sum of the stored responses' sizes as last counted
        self._items: OrderedDict[Key, StoredResponse] = OrderedDict()
        self._sizes: dict[Key, int] = {}

    @property
    def enabled(self) -> bool:
        return self.max_size > 0

    def __len__(self) -> int:
        return len(self._items)

    def keys(self) -> list[Key]:
        """Keys, least recently used first."""
        return list(self._items)

    def put(self, key: Key, entry: StoredResponse) -> None:
        """Store ``entry`` (replacing one of the same key) as the most recently used; then
        forget what the bounds say (``_fit``)."""
        self.pop(key)
        self._items[key] = entry
        self._sizes[key] = entry.nbytes
        self.nbytes += entry.nbytes
        entry.resized = lambda: self._resized(key, entry)
        self._fit(key)

    def _resized(self, key: Key, entry: StoredResponse) -> None:
        if self._items.get(key) is not entry:  # forgotten since (its hook is cleared then)
            return
        self.nbytes += entry.nbytes - self._sizes[key]
        self._sizes[key] = entry.nbytes
        self._fit(key)

    def _fit(self, changed: Key) -> None:
        """``changed`` alone over the byte budget: forget it alone. Then the least recently
        used until the count and the bytes are within bounds."""
        if self._sizes[changed] > self.max_bytes:
            self.pop(changed)
        while len(self._items) > self.max_size or self.nbytes > self.max_bytes:
            self.pop(next(iter(self._items)))

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
        entry = self._items.pop(key, None)
        if entry is not None:
            self.nbytes -= self._sizes.pop(key)
            entry.resized = None
        return entry

    def discard(self, key: Key, entry: StoredResponse) -> None:
        """Forget ``entry`` if ``key`` still holds it (not one stored since under its id)."""
        if self._items.get(key) is entry:
            self.pop(key)
