"""Starting replicas on Ray and the router in front of them (``thinkstream serve
--replicas N``).

One machine: ``thinkstream serve --replicas 2`` starts a local Ray instance. Several:

    node1$ ray start --head --port 6379
    node2$ ray start --address node1:6379
    node1$ thinkstream serve --replicas 4 --ray-address auto --host 0.0.0.0

Each replica is a Ray actor reserving ``cpus_per_replica`` CPUs (Ray places them over the
nodes); it serves on its node's address, which the router reaches over HTTP.

Why Ray core actors and our own FastAPI router rather than Ray Serve: the routing needs
what Serve's request router does not give out of the box (affinity on a session id that
the *answer* of the open call assigns, prefix hashes over the prompt's tokens, a clean
410 for a dead replica's sessions), and a replica that is the unchanged thinkstream
server keeps every route (SSE streams, sessions, tokenizer, metrics) without a second
API layer. Ray still does what it is for: placing, starting, watching and killing the
processes across machines.
"""

from __future__ import annotations

import dataclasses
import logging
import subprocess
from dataclasses import dataclass

from thinkstream.config import EngineConfig
from thinkstream.distributed.replicas.proxy import ReplicaProxy, create_router_app
from thinkstream.distributed.replicas.reaper import descendants, watch
from thinkstream.distributed.replicas.replica import ReplicaServer
from thinkstream.distributed.replicas.routing import Router
from thinkstream.server.config import ServerConfig

log = logging.getLogger("thinkstream.distributed.replicas")


@dataclass
class Replicas:
    """Running replica actors and the router app over them."""

    actors: list
    urls: list[str]
    app: object  # the router's FastAPI app
    router: Router
    # the local Ray instance start_replicas started (None: Ray was up, or a cluster's): its
    # processes end with this process, however it ends (``reaper``)
    watcher: subprocess.Popen | None = None

    def kill(self, index: int) -> None:
        import ray

        ray.kill(self.actors[index], no_restart=True)

    def shutdown(self) -> None:
        """Kill the replicas, and stop the local Ray instance if ``start_replicas`` started it."""
        import ray

        for actor in self.actors:
            ray.kill(actor, no_restart=True)
        if self.watcher is not None:
            ray.shutdown()
            self.watcher.stdin.close()  # what ray.shutdown left, if anything
            self.watcher.wait(10)
            self.watcher = None


def _ray():
    try:
        import ray
    except ImportError as err:
        raise ValueError("--replicas needs Ray: pip install 'thinkstream[ray]'") from err
    return ray


def start_replicas(n: int, model: str | None, engine: EngineConfig, server: ServerConfig,
                   checkpoint=None, cpus_per_replica: float = 1.0, max_load: int = 256,
                   address: str | None = None) -> Replicas:
    """Start ``n`` replica actors (Ray is initialised here if it is not yet: a local
    instance, or the cluster at ``address``) and build the router app over them."""
    if n < 1:
        raise ValueError("replicas must be >= 1")
    if n > 1:  # a stored response lives in one replica, where the router cannot find it
        server = dataclasses.replace(server, responses_store_size=0)
    ray = _ray()
    local = not ray.is_initialized() and not address
    if not ray.is_initialized():
        ray.init(address=address or "local", include_dashboard=False, log_to_driver=False,
                 **({} if address else {"num_cpus": max(int(n * cpus_per_replica), 1)}))
    remote = ray.remote(num_cpus=cpus_per_replica, max_restarts=0)(ReplicaServer)
    host = "127.0.0.1" if address is None else "0.0.0.0"
    actors = [remote.options(name=None).remote(i, model, engine, server, checkpoint, host)
              for i in range(n)]
    urls = ray.get([a.url.remote() for a in actors])
    router = Router(urls, block_size=engine.block_size, max_load=max_load)
    tokenizer = checkpoint.tokenizer if checkpoint is not None else _tokenizer(model)
    proxy = ReplicaProxy(router, tokenizer, lambda i: actors[i].ping.remote())
    log.info("%d replicas: %s", n, ", ".join(urls))
    watcher = watch(descendants()) if local else None  # the instance ends with this process
    return Replicas(actors, urls, create_router_app(proxy), router, watcher)


def _tokenizer(model: str | None):
    from thinkstream.loading import load_checkpoint

    return load_checkpoint(model, tensors=False).tokenizer


def serve_replicas(n: int, model: str | None, engine: EngineConfig, server: ServerConfig,
                   address: str | None, log_level: str = "info") -> int:
    """``thinkstream serve --replicas N``: replicas on Ray, the router on host:port."""
    import uvicorn

    replicas = start_replicas(n, model, engine, server, address=address,
                              max_load=server.max_queue)
    try:
        uvicorn.run(replicas.app, host=server.host, port=server.port, log_level=log_level)
    finally:
        replicas.shutdown()
    return 0
