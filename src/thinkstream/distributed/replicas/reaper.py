"""Ending a local Ray instance's processes when the router that started it dies unannounced.

``thinkstream serve --replicas N`` without ``--ray-address`` starts a local Ray instance
inside the router's process. Ray ties most of it to the router: the kernel kills its GCS
and raylet with it (``PR_SET_PDEATHSIG``) and the replica actors follow within seconds.
The raylet's agents (``ray::DashboardAgent``, ``ray::RuntimeEnvAgent``: started whatever
``include_dashboard`` says) notice their raylet's death in about 2 s, then spend 60 s
trying to report it to the dead GCS (Ray 2.60: ``publish_error_to_driver``'s fixed
timeout) before they exit. A SIGKILLed router runs no code of its own, so a watcher does
it: a small process that holds the read end of a pipe whose write end only the router
holds. When the pipe closes (the router exited or was killed, whatever the signal) the
watcher sends SIGTERM to the processes the router had started (its descendants when the
replicas were up, each recorded with its start time so that a reused pid is left alone),
then SIGKILL to any still alive 5 s later, and exits. Linux only (``/proc``); elsewhere no
watcher is started.

    router  --(pipe: the descendants' (pid, start time), then nothing)-->  watcher
    router dies: the pipe reads EOF  ->  SIGTERM ... 5 s ... SIGKILL the survivors
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable

Proc = tuple[int, int]  # (pid, start time in clock ticks after boot, /proc/<pid>/stat)


def _stat(pid: int) -> tuple[str, int, int] | None:
    """(state, parent pid, start time) of ``pid`` from ``/proc``; None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8", errors="replace") as f:
            raw = f.read()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2 :].split()  # after "pid (comm) ": the name may hold spaces
    return fields[0], int(fields[1]), int(fields[19])


def descendants(pid: int | None = None) -> list[Proc]:
    """Every live descendant of ``pid`` (default this process), with its start time."""
    root = os.getpid() if pid is None else pid
    kids: dict[int, list[Proc]] = {}
    for name in os.listdir("/proc"):
        st = _stat(int(name)) if name.isdigit() else None
        if st is not None:
            kids.setdefault(st[1], []).append((int(name), st[2]))
    out, todo = [], [root]
    while todo:
        for proc in kids.get(todo.pop(), []):
            out.append(proc)
            todo.append(proc[0])
    return out


def alive(proc: Proc) -> bool:
    """Whether ``proc`` runs (the same process: its start time; a zombie has ended)."""
    st = _stat(proc[0])
    return st is not None and st[2] == proc[1] and st[0] not in ("Z", "X")


def _signal(procs: Iterable[Proc], sig: int) -> list[Proc]:
    """Send ``sig`` to each of ``procs`` still alive (the same process: its start time);
    returns those signalled."""
    sent = []
    for proc in procs:
        if alive(proc):
            try:
                os.kill(proc[0], sig)
            except OSError:
                continue
            sent.append(proc)
    return sent


def watch(procs: list[Proc], grace_s: float = 5.0) -> subprocess.Popen | None:
    """Start a watcher that ends ``procs`` once this process is gone (module docstring).
    Keep the returned handle for as long as they should live: the watcher acts when its
    pipe closes (``handle.stdin.close()`` ends them now). None off Linux or for no procs."""
    if not sys.platform.startswith("linux") or not procs:
        return None
    handle = subprocess.Popen(
        [sys.executable, "-m", "thinkstream.distributed.replicas.reaper", str(grace_s)],
        stdin=subprocess.PIPE, start_new_session=True)  # a terminal's Ctrl-C spares it
    assert handle.stdin is not None
    handle.stdin.write(json.dumps(procs).encode() + b"\n")
    handle.stdin.flush()
    return handle


def main(grace_s: float) -> None:
    """The watcher: read the processes, wait for EOF, then end them."""
    procs = [(int(p), int(t)) for p, t in json.loads(sys.stdin.buffer.readline() or b"[]")]
    while sys.stdin.buffer.read(65536):  # the router writes nothing more: EOF when it is gone
        pass
    left = _signal(procs, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while left and time.monotonic() < deadline:
        time.sleep(0.05)
        left = [p for p in left if alive(p)]
    _signal(left, signal.SIGKILL)


if __name__ == "__main__":
    main(float(sys.argv[1]) if len(sys.argv) > 1 else 5.0)
