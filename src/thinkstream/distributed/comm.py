"""The collectives of a tensor-parallel group, on torch.distributed process groups built
per engine (no default group, so one process may hold several engines, as tests do).

Two groups share one ``TCPStore`` (hosted by rank 0):

- ``ctrl`` (gloo, CPU): rank 0 broadcasts each step's inputs (a pickled ``StepBatch``)
  or the stop signal. Workers wait on it between steps as long as the server idles, so
  its timeout is long; a peer that dies closes its sockets and the wait fails at once.
- ``compute`` (gloo on CPU, NCCL on CUDA): the all-reduces and all-gathers of the
  forward. Its timeout (``collective_timeout_s``) bounds a step whose peer hangs.

Any failure becomes ``RankFailedError``, and the group stays failed: every later call
raises the same error at once (no collective is retried on a broken group).
"""

from __future__ import annotations

import logging
import pickle
import time
from datetime import timedelta

import torch
import torch.distributed as dist

CTRL_TIMEOUT = timedelta(days=7)
log = logging.getLogger("thinkstream.distributed.comm")


class RankFailedError(RuntimeError):
    """A tensor-parallel rank died or stopped answering; the engine cannot step again.
    Its message (which rank, its exit code or the collective that failed) is shown to
    clients (``public_reason``)."""

    public_reason = True


class Comm:
    """One rank's view of its tensor-parallel group."""

    def __init__(self, store: dist.Store, rank: int, world: int, device: torch.device,
                 timeout_s: float) -> None:
        self.rank, self.world, self.device = rank, world, device
        self.timeout_s = timeout_s
        self.failure: str | None = None
        self.store = store
        self.ctrl = dist.ProcessGroupGloo(dist.PrefixStore("ctrl", store), rank, world, CTRL_TIMEOUT)
        timeout = timedelta(seconds=timeout_s)
        if device.type == "cuda":
            opts = dist.ProcessGroupNCCL.Options()
            opts._timeout = timeout
            self.compute = dist.ProcessGroupNCCL(dist.PrefixStore("nccl", store), rank, world, opts)
        else:
            self.compute = dist.ProcessGroupGloo(dist.PrefixStore("compute", store), rank, world,
                                                 timeout)
        self.reduce_seconds = 0.0  # time blocked on all-reduces (the benchmark reads it)
        self.deferred = False  # row-parallel layers leave their sums to the caller (overlap)

    # ------------------------------------------------------------------ failure
    def fail(self, reason: str) -> None:
        """Mark the group broken (a watchdog saw a rank die); later calls raise."""
        if self.failure is None:
            self.failure = reason

    def check(self) -> None:
        if self.failure is not None:
            raise RankFailedError(self.failure)

    def _wait(self, work: dist.Work, what: str) -> None:
        try:
            work.wait()
        except Exception as exc:  # gloo: peer closed / timeout; NCCL: watchdog abort
            self._broke(what, exc)
            raise RankFailedError(self.failure) from exc

    def _broke(self, what: str, exc: Exception) -> None:
        """Record a failed collective: the detail (addresses, gloo's text) goes to the log,
        the reason clients see names the collective and the rank."""
        log.error("tensor-parallel %s failed on rank %d: %s", what, self.rank, exc)
        self.fail(f"tensor-parallel {what} failed on rank {self.rank} (a peer died or timed "
                  f"out: {type(exc).__name__})")

    def _start(self, fn, what: str) -> dist.Work:
        self.check()
        try:
            return fn()
        except Exception as exc:
            self._broke(what, exc)
            raise RankFailedError(self.failure) from exc

    # -------------------------------------------------------------- collectives
    def all_reduce(self, t: torch.Tensor) -> torch.Tensor:
        """Sum ``t`` over the ranks, in place; returns it."""
        self.wait(self.all_reduce_async(t))
        return t

    def all_reduce_async(self, t: torch.Tensor) -> dist.Work:
        """Start a sum of ``t`` in place; ``wait`` the returned work before reading ``t``."""
        return self._start(lambda: self.compute.allreduce([t]), "all-reduce")

    def wait(self, work: dist.Work) -> None:
        """Block until ``work`` is done (the time blocked is counted in ``reduce_seconds``)."""
        start = time.perf_counter()
        self._wait(work, "all-reduce")
        self.reduce_seconds += time.perf_counter() - start

    def all_gather_last(self, t: torch.Tensor, padded: int, sizes: list[int]) -> torch.Tensor:
        """Concatenate every rank's ``t`` (N, size_r) along the last dim: (N, sum sizes).
        Slices are padded to ``padded`` columns for the collective and trimmed after."""
        if t.shape[-1] < padded:
            t = torch.nn.functional.pad(t, (0, padded - t.shape[-1]))
        t = t.contiguous()
        outs = [torch.empty_like(t) for _ in range(self.world)]
        work = self._start(lambda: self.compute.allgather([outs], [t]), "all-gather")
        self._wait(work, "all-gather")
        return torch.cat([o[..., :n] for o, n in zip(outs, sizes, strict=True)], dim=-1)

    def broadcast_object(self, obj: object = None) -> object:
        """Rank 0 sends ``obj`` (pickled) on the control group; every rank returns it."""
        if self.rank == 0:
            data = torch.frombuffer(bytearray(pickle.dumps(obj)), dtype=torch.uint8)
            size = torch.tensor([data.numel()], dtype=torch.int64)
        else:
            size = torch.zeros(1, dtype=torch.int64)
        self._wait(self._start(lambda: self.ctrl.broadcast(size, 0), "broadcast"), "broadcast")
        if self.rank != 0:
            data = torch.empty(int(size.item()), dtype=torch.uint8)
        self._wait(self._start(lambda: self.ctrl.broadcast(data, 0), "broadcast"), "broadcast")
        return obj if self.rank == 0 else pickle.loads(data.numpy().tobytes())

    def shutdown(self) -> None:
        for pg in (self.compute, self.ctrl):
            try:
                pg.shutdown()
            except Exception:  # already broken: nothing left to release
                pass
