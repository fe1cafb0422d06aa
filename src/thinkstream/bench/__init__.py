"""The benchmark harness behind ``thinkstream bench``: seeded workloads (``workloads``), the
engines compared (``peers``: thinkstream, HF transformers, llama.cpp), a driver that runs
every peer in its own worker process and interleaves their repetitions (``runner``), the
report (``report``: medians, ratios thinkstream / peer, JSON, PNG) and a decode-step
profile (``profile``). Nothing here is imported by the engine; the peers' libraries are the
optional ``[bench]`` extra."""
