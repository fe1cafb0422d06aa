"""The watcher that ends a local Ray instance's processes once the router is gone
(``distributed.replicas.reaper``), without Ray: a stand-in "agent" process that would
outlive a SIGKILLed router is ended by the watcher; a recorded pid whose start time no
longer matches (a reused pid) is left alone."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from thinkstream.distributed.replicas.reaper import alive, descendants

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc")

ROUTER = """
import subprocess, sys, time
from thinkstream.distributed.replicas.reaper import descendants, watch
# stands in for a raylet's agent: its own session, so the router's death alone spares it
agent = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"],
                         start_new_session=True)
watcher = watch(descendants(), grace_s=1.0)
print(agent.pid, flush=True)
time.sleep(120)
"""


def test_a_killed_routers_processes_are_ended_by_its_watcher() -> None:
    router = subprocess.Popen([sys.executable, "-c", ROUTER], stdout=subprocess.PIPE, text=True)
    agent = None
    try:
        pid = int(router.stdout.readline())
        agent = next(p for p in descendants(router.pid) if p[0] == pid)
        assert alive(agent)
        router.send_signal(signal.SIGKILL)  # no code of the router's runs
        router.wait()
        deadline = time.monotonic() + 30  # the watcher acts at once; the agent would sleep 120 s
        while alive(agent) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not alive(agent)
    finally:
        router.kill()
        if agent is not None and alive(agent):
            os.kill(agent[0], signal.SIGKILL)


def test_a_reused_pid_is_left_alone() -> None:
    from thinkstream.distributed.replicas.reaper import _signal

    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        pid, start = next(p for p in descendants() if p[0] == sleeper.pid)
        assert _signal([(pid, start + 1)], signal.SIGTERM) == []  # another start: not it
        assert alive((pid, start)) and sleeper.poll() is None
        assert _signal([(pid, start)], signal.SIGTERM) == [(pid, start)]
        assert sleeper.wait(10) == -signal.SIGTERM
    finally:
        sleeper.kill()
