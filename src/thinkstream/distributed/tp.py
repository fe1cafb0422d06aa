"""Tensor-parallel ranks: started by the engine with torch.multiprocessing (spawn), or by
``torchrun`` (``worker_from_env``). Rank 0 owns the scheduler, the KV bookkeeping and
the server; each step it broadcasts the step's inputs (a ``StepBatch``: token ids,
positions, block tables, block copies) and every rank runs the same forward on its slice
of the model and of the KV cache (its KV heads; the block ids are rank 0's). The head's
all-gather gives every rank the full logits; only rank 0 samples.

A rank that dies breaks the group: the watchdog on rank 0 sees the process exit, the
pending collective fails (gloo: peer closed; otherwise ``collective_timeout_s``), and
every later step raises ``RankFailedError`` at once (the async engine then fails all
requests in flight and ``/health`` answers 503). Workers exit when rank 0 stops them, or
when their control channel breaks (rank 0 gone).
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import weakref
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from thinkstream.attention.metadata import AttentionConfig, build_attention_metadata
from thinkstream.config import EngineConfig, ModelConfig
from thinkstream.distributed.comm import CTRL_TIMEOUT, Comm, RankFailedError
from thinkstream.distributed.layers import parallelize, parallelize_layer
from thinkstream.distributed.overlap import overlapped_forward, split_batch
from thinkstream.distributed.plan import RankShard, local_config, plan_shards, shard_tensors
from thinkstream.models.registry import build_model
from thinkstream.worker.runner import DTYPES, ModelRunner, StepBatch

log = logging.getLogger("thinkstream.distributed.tp")
STOP = "stop"


@dataclass(frozen=True)
class RankSpec:
    """What a rank needs to build its slice: the engine config, the model's config, the
    KV pool size, and where the weights come from (a path it loads itself, or tensors
    handed over through shared memory, already sliced for it)."""

    config: EngineConfig
    model_config: ModelConfig
    num_blocks: int
    path: str | None
    tensors: dict[str, torch.Tensor] | None


def build_rank_runner(spec: RankSpec, rank: int, comm: Comm, cls: type = ModelRunner,
                      extra: dict | None = None) -> ModelRunner:
    """Rank ``rank``'s model (its slice, wrapped with the collectives) and runner (a
    ``cls``, built with ``extra`` keyword arguments besides a ``ModelRunner``'s)."""
    cfg, mcfg = spec.config, spec.model_config
    shards = plan_shards(mcfg, comm.world)
    dtype, device = DTYPES[cfg.dtype], rank_device(cfg.device, rank)
    local = local_config(mcfg, shards[rank])
    streamed = cfg.max_weight_memory_mb is not None
    if streamed:
        from thinkstream.distributed.streaming import build_streamed_model

        tp = comm.world > 1
        model = build_streamed_model(
            spec.path, mcfg, cfg, dtype, device, shards[rank] if tp else None,
            (lambda layer: parallelize_layer(layer, comm)) if tp else None)
    else:
        tensors = spec.tensors
        if tensors is None:
            from thinkstream.loading import load_checkpoint

            tensors = shard_tensors(load_checkpoint(spec.path).tensors, mcfg, shards[rank])
        model = build_model(local, tensors, dtype, device, cfg.quantization)
    if comm.world > 1:
        parallelize(model, shards, rank, comm, layers=not streamed)
    attention = AttentionConfig.for_engine(cfg.attention_precision, dtype)
    if comm.world > 1:
        extra = {"comm": comm, "overlap": cfg.tp_overlap, **(extra or {})}
        cls = cls if cls is not ModelRunner else RankRunner
    kv_dtype = DTYPES[cfg.resolved_kv_cache_dtype(cfg.dtype)]
    return cls(model, local, spec.num_blocks, cfg.block_size, dtype, device,
               False, cfg.max_num_seqs, attention, kv_dtype, **(extra or {}))


class RankRunner(ModelRunner):
    """A rank's runner; with ``overlap`` a step of 2+ tokens runs as two halves whose
    all-reduces overlap the other half's compute (``distributed.overlap``)."""

    def __init__(self, *args, comm: Comm, overlap: bool = False, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.comm = comm
        self.overlap = overlap

    @torch.inference_mode()
    def execute(self, batch: StepBatch) -> torch.Tensor:
        if not self.overlap or len(batch.ids) < 2:
            return super().execute(batch)
        self.copy_blocks(batch.block_copies)
        inputs = []
        for ids, positions, slices in split_batch(batch):
            meta = build_attention_metadata(slices, self.block_size, self.kv_caches,
                                            self.cfg.sliding_window, self.device, self.attention)
            inputs.append((torch.tensor(ids, dtype=torch.long, device=self.device),
                           torch.tensor(positions, dtype=torch.long, device=self.device), meta))
        hidden = overlapped_forward(self.model, inputs, self.comm)
        rows = torch.tensor(batch.rows, dtype=torch.long, device=self.device)
        return self.model.compute_logits(hidden[rows])


class TPRunner(RankRunner):
    """Rank 0's runner: each ``execute`` first sends the batch to the other ranks."""

    def __init__(self, *args, procs: list, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.procs = procs
        self._closed = threading.Event()
        self._watchdog = threading.Thread(target=_watch, args=(procs, self.comm, self._closed),
                                          name="thinkstream-tp-watchdog", daemon=True)
        self._watchdog.start()
        self._finalizer = weakref.finalize(self, _stop_workers, self.comm, procs, self._closed)

    def execute(self, batch: StepBatch) -> torch.Tensor:  # type: ignore[override]
        self.comm.check()
        self.comm.broadcast_object((batch, self.overlap))  # every rank splits alike
        return super().execute(batch)

    def check_health(self) -> None:
        self.comm.check()

    def close(self) -> None:
        """Stop the workers (they leave their loop) and release the groups."""
        self._finalizer()


def _watch(procs: list, comm: Comm, closed: threading.Event) -> None:
    """Rank 0's watchdog: a worker process that exits breaks the group."""
    while not closed.wait(0.1):
        for rank, proc in enumerate(procs, start=1):
            if not proc.is_alive():
                comm.fail(f"tensor-parallel rank {rank} (pid {proc.pid}) exited with code "
                          f"{proc.exitcode}")
                return


def _stop_workers(comm: Comm, procs: list, closed: threading.Event) -> None:
    closed.set()
    if comm.failure is None:
        try:
            comm.broadcast_object(STOP)
        except RankFailedError:
            pass
    for proc in procs:
        proc.join(5)
        if proc.is_alive():
            proc.kill()
            proc.join(5)
    comm.shutdown()


def _rank_spec(ckpt, cfg: EngineConfig, num_blocks: int, shards: list[RankShard],
               rank: int) -> RankSpec:
    """Rank ``rank``'s build: its slices of tensors rank 0 already holds (a spawned rank
    gets them through shared memory, no copy, no second parse of the file), or the path
    (weight streaming; a checkpoint loaded without tensors)."""
    path = ckpt.path if Path(ckpt.path).exists() else None
    reload = cfg.max_weight_memory_mb is not None or not ckpt.tensors or (
        rank != 0 and not _shm_fits(ckpt.tensors))  # a container's small /dev/shm
    if path is not None and reload:
        return RankSpec(cfg, ckpt.config, num_blocks, str(path), None)
    tensors = shard_tensors(ckpt.tensors, ckpt.config, shards[rank])
    return RankSpec(cfg, ckpt.config, num_blocks, None if path is None else str(path), tensors)


def _shm_fits(tensors: dict[str, torch.Tensor]) -> bool:
    """Whether /dev/shm can take the checkpoint's tensors twice over (they move there to
    reach a spawned rank; Docker's default of 64 MB cannot)."""
    need = 2 * sum(t.untyped_storage().nbytes() for t in tensors.values())
    try:
        return shutil.disk_usage("/dev/shm").free > need
    except OSError:
        return False


def start_tp_runner(ckpt, cfg: EngineConfig, num_blocks: int) -> ModelRunner:
    """Spawn ranks 1..N-1, join them in one group, and return rank 0's ``TPRunner``
    (with N == 1, and weight streaming, a plain runner over the streamed model)."""
    world = cfg.tensor_parallel_size
    shards = plan_shards(ckpt.config, world)  # raises ValueError before any process starts
    device = rank_device(cfg.device, 0)
    if world == 1:
        return build_rank_runner(_rank_spec(ckpt, cfg, num_blocks, shards, 0), 0, _Solo(device))
    if torchrun_env() is not None:  # the other ranks were started by torchrun
        _, env_world = torchrun_env()
        if env_world != world:
            raise ValueError(f"tensor_parallel_size {world} differs from torchrun's "
                             f"WORLD_SIZE {env_world}")
        comm = _torchrun_comm(0, world, cfg)
        comm.broadcast_object(RankSpec(cfg, ckpt.config, num_blocks, str(ckpt.path), None))
        return build_rank_runner(_rank_spec(ckpt, cfg, num_blocks, shards, 0), 0, comm,
                                 TPRunner, {"procs": []})
    store = dist.TCPStore("127.0.0.1", 0, world, is_master=True, wait_for_workers=False,
                          timeout=timedelta(seconds=cfg.collective_timeout_s))
    ctx = mp.get_context("spawn")
    procs = []
    for rank in range(1, world):
        spec = _rank_spec(ckpt, cfg, num_blocks, shards, rank)
        proc = ctx.Process(target=worker_main, args=(spec, rank, world, "127.0.0.1", store.port,
                                                     cfg.collective_timeout_s, os.getpid()),
                           name=f"thinkstream-tp-{rank}", daemon=True)
        proc.start()
        procs.append(proc)
    try:
        comm = Comm(store, 0, world, device, cfg.collective_timeout_s)
        comm.ctrl.set_timeout(CTRL_TIMEOUT)
        return build_rank_runner(_rank_spec(ckpt, cfg, num_blocks, shards, 0), 0, comm,
                                 TPRunner, {"procs": procs})
    except BaseException:
        for proc in procs:
            proc.kill()
        raise


def rank_device(device: str, rank: int) -> torch.device:
    """A rank's device: "cuda" means one GPU per rank (rank r on cuda:r, made current
    for NCCL); anything else is used as given."""
    d = torch.device(device)
    if d.type == "cuda" and d.index is None:
        d = torch.device("cuda", rank)
        torch.cuda.set_device(d)
    return d


class _Solo:
    """The group of one (weight streaming without tensor parallelism)."""

    world = 1

    def __init__(self, device: torch.device) -> None:
        self.device = device


def worker_main(spec: RankSpec, rank: int, world: int, host: str, port: int,
                timeout_s: float, parent_pid: int | None = None) -> None:
    """A worker rank: join the group, build the slice, run every step rank 0 sends."""
    torch.set_num_threads(spec.config.num_threads or 1)
    store = dist.TCPStore(host, port, world, is_master=False,
                          timeout=timedelta(seconds=timeout_s))
    comm = Comm(store, rank, world, rank_device(spec.config.device, rank), timeout_s)
    comm.ctrl.set_timeout(CTRL_TIMEOUT)
    if parent_pid is not None:
        threading.Thread(target=_exit_with_parent, args=(parent_pid,), daemon=True).start()
    runner = build_rank_runner(spec, rank, comm)
    del spec
    serve_steps(runner, comm)
    os._exit(0)  # nothing to flush; skips seconds of interpreter teardown


def serve_steps(runner: ModelRunner, comm: Comm) -> None:
    """Execute every batch rank 0 broadcasts until it sends ``STOP`` or the group breaks."""
    try:
        while True:
            msg = comm.broadcast_object()
            if msg == STOP:
                break
            batch, runner.overlap = msg
            runner.execute(batch)
    except RankFailedError as exc:
        log.error("rank %d leaves: %s", comm.rank, exc)
        os._exit(1)
    comm.shutdown()


def torchrun_env() -> tuple[int, int] | None:
    """(rank, world) when this process was started by ``torchrun`` with 2+ ranks."""
    if "TORCHELASTIC_RUN_ID" not in os.environ or int(os.environ.get("WORLD_SIZE", 1)) < 2:
        return None
    return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])


def _torchrun_comm(rank: int, world: int, cfg: EngineConfig) -> Comm:
    """Join the group torchrun set up (its agent hosts the store at MASTER_ADDR:PORT)."""
    agent = os.environ.get("TORCHELASTIC_USE_AGENT_STORE", "").lower() == "true"
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world,
                          is_master=rank == 0 and not agent,
                          timeout=timedelta(seconds=cfg.collective_timeout_s))
    comm = Comm(dist.PrefixStore("thinkstream", store), rank, world, rank_device(cfg.device, rank),
                cfg.collective_timeout_s)
    comm.ctrl.set_timeout(CTRL_TIMEOUT)
    return comm


def torchrun_worker(cfg: EngineConfig) -> None:
    """A rank > 0 under ``torchrun``: rank 0 sends what to build, then its steps."""
    rank, world = torchrun_env()
    torch.set_num_threads(cfg.num_threads or 1)
    comm = _torchrun_comm(rank, world, cfg)
    spec = comm.broadcast_object()
    serve_steps(build_rank_runner(spec, rank, comm), comm)


def _exit_with_parent(parent_pid: int) -> None:
    """A spawned worker must not outlive rank 0 (killed with SIGKILL, say)."""
    while True:
        if os.getppid() != parent_pid:
            os._exit(1)
        threading.Event().wait(0.5)
