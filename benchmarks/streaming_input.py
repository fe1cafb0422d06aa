"""Streaming input benchmark: now ``thinkstream bench streaming`` (thinkstream.bench.streaming).

    python benchmarks/streaming_input.py --lengths 256,1024 --sessions 8   # same flags
"""

from thinkstream.bench.streaming import main

if __name__ == "__main__":
    raise SystemExit(main())
