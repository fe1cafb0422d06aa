"""A real server process on the tiny model, for tests that send it signals or read its log.

    python serve_tiny.py '{"api_keys": ["k"], ...ServerConfig fields}' [seconds per step]

It serves exactly as ``thinkstream serve`` does (``lifecycle.serve``, ``--log-level info``
logging to stderr), on a port it picks and prints as ``PORT <n>`` before serving.
"""

from __future__ import annotations

import json
import logging
import socket
import sys
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).parent), str(Path(__file__).parents[1])]

from conftest import tiny_llm  # noqa: E402

from thinkstream.server.app import create_app  # noqa: E402
from thinkstream.server.config import ServerConfig  # noqa: E402
from thinkstream.server.lifecycle import serve  # noqa: E402


def main() -> int:
    fields = json.loads(sys.argv[1]) if len(sys.argv) > 1 else {}
    delay = float(sys.argv[2]) if len(sys.argv) > 2 else 0.0
    logging.basicConfig(level="INFO", format="%(levelname)s %(name)s: %(message)s")
    llm = tiny_llm()
    if delay:
        forward = llm.engine.runner.forward

        def slow(*args, **kwargs):
            time.sleep(delay)
            return forward(*args, **kwargs)

        llm.engine.runner.forward = slow
    app = create_app(llm, ServerConfig(served_model_name="tiny", **fields))
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    print(f"PORT {sock.getsockname()[1]}", flush=True)
    return serve(app, "info", [sock])


if __name__ == "__main__":
    sys.exit(main())
