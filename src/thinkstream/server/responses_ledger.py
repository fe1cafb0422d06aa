"""What ``POST /v1/responses/{id}/cancel`` needs to know of the Responses API's responses:
those running (a future that gets each one's final body) and those lately finished (their
status; a cancelled one's body too, for a repeated cancel returns it, as OpenAI's cancel
is idempotent). Stored responses (``responses_store``) are a separate, optional record.

Keys are ``(owner, public id)``, as ``ServerState.live``: one API key cannot reach another's
responses. One ledger per app (``ServerState.responses``), used from the event loop only.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from dataclasses import dataclass, field

Key = tuple[str, str]


@dataclass
class ResponsesLedger:
    max_finished: int = 1024  # finished responses remembered (oldest forgotten first)
    running: dict[Key, asyncio.Future] = field(default_factory=dict)
    finished: OrderedDict[Key, tuple[str, dict | None]] = field(default_factory=OrderedDict)

    def begin(self, key: Key) -> asyncio.Future:
        """A future for a new response's final body; registered unless ``key`` is already
        running (then the new request is refused as a duplicate id at admission, and its
        future is nobody's)."""
        future = asyncio.get_running_loop().create_future()
        self.running.setdefault(key, future)
        return future

    def end(self, key: Key, future: asyncio.Future, body: dict | None) -> None:
        """The response of ``future`` ended: ``body`` its final response object (None when
        none was built: refused at admission, client gone, engine failure)."""
        if not future.done():
            future.set_result(body)
        if self.running.get(key) is not future:
            return
        del self.running[key]
        if body is not None:
            self.finished[key] = (body["status"], body if body["status"] == "cancelled" else None)
            self.finished.move_to_end(key)
            while len(self.finished) > self.max_finished:
                self.finished.popitem(last=False)
