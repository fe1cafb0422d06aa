"""``background: true`` responses: generation detached from the HTTP request that made it.

``start`` runs an admitted job as an ``asyncio`` task of the app (``ServerState.background``
while it runs), not of the connection: the create returns at once (``status: "queued"``)
or, with ``stream``, tails the events, and a client that leaves stops only its own tail.
The task feeds the job's outputs through the same event builder a stream uses and writes
each response object it carries into the stored response (``in_progress``, then
``completed`` / ``incomplete`` / ``cancelled``; ``failed`` with its ``error`` when the
engine fails); a streamed one keeps the events too, for ``tail`` (a resumed
``GET /v1/responses/{id}?stream=true&starting_after=N``). Cancels (``/cancel``, ``DELETE``,
a drain's end) abort the job like any other: its task then records ``cancelled``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

from thinkstream.server.errors import to_api_error
from thinkstream.server.responses_format import ResponsesView
from thinkstream.server.responses_store import Key, StoredResponse
from thinkstream.server.serving import Job, ServerState


def start(state: ServerState, job: Job, view: ResponsesView, entry: StoredResponse) -> None:
    """Run admitted ``job`` in the background, recording into ``entry`` (stored under the
    job's key); the ledger learns its end, so ``/cancel`` works on it."""
    key: Key = (job.owner, job.public_id)
    final = state.responses.begin(key)
    task = asyncio.ensure_future(_run(job, view, entry))
    state.background[key] = task

    def ended(_: asyncio.Task) -> None:
        if state.background.get(key) is task:
            del state.background[key]
        state.responses.end(key, final, entry.body if entry.done else None)

    task.add_done_callback(ended)


async def _run(job: Job, view: ResponsesView, entry: StoredResponse) -> None:
    seq = 0
    try:
        async for ev in view.events(job.outputs()):
            seq = ev["sequence_number"] + 1
            entry.update(ev.get("response"), ev)
    except Exception as exc:  # noqa: BLE001 - recorded as the response's failure
        err = to_api_error(exc)
        body = {**entry.body, "status": "failed",
                "error": {"code": err.code or "server_error", "message": err.message}}
        entry.update(body, {"type": "response.failed", "sequence_number": seq,
                            "response": body})
    if not entry.done:  # the outputs ended without a last event: nothing more will come
        entry.update({**entry.body, "status": "failed",
                      "error": {"code": "server_error", "message": "the response ended early"}})


async def tail(entry: StoredResponse, after: int = -1) -> AsyncIterator[str]:
    """A streamed background response's events after sequence number ``after`` as SSE,
    those recorded and then those to come, until its last."""
    events = entry.events if entry.events is not None else []
    i = max(after + 1, 0)
    while True:
        wake = entry.wake  # taken before looking: an update after it sets this one
        while i < len(events):
            ev = events[i]
            i += 1
            yield f"event: {ev['type']}\ndata: {json.dumps(ev, ensure_ascii=False)}\n\n"
        if entry.done:
            return
        await wake.wait()
