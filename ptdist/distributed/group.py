"""Process-group setup for one process (no launcher) or many (torchrun / deepspeed launcher, a
Ray Train worker group), the rendezvous of a group whose processes ptdist starts, a process's
place in its group (`Shard`) and the collectives ptdist uses."""

from __future__ import annotations

import atexit
import datetime
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import torch

from ptdist.distributed.op_builds import skip_unused_cpu_op, watched_builds

T = TypeVar("T")
LOOPBACK = "127.0.0.1"
_served: list = []  # the rendezvous stores this process serves, alive as long as it is


@dataclass(frozen=True)
class Shard:
    """A process's place in its process group, rank ``rank`` of ``world`` (by default a
    process alone), and its part of the work the group shares."""

    rank: int = 0
    world: int = 1

    @classmethod
    def of_group(cls) -> Shard:
        """This process's place in the process group it is in; a process alone outside one."""
        import torch.distributed as dist

        if not dist.is_initialized():
            return cls()
        return cls(dist.get_rank(), dist.get_world_size())

    @property
    def leads(self) -> bool:
        """Whether this process writes what its group computed: rank 0, or a process alone."""
        return self.rank == 0

    def batch_part(self, indices: list[int]) -> list[int]:
        """This rank's contiguous part of a global training batch (its size splits evenly)."""
        per = len(indices) // self.world
        return indices[self.rank * per: (self.rank + 1) * per]

    def rows(self, n: int) -> tuple[list[int], int]:
        """This rank's indices of ``n`` rows to run a frozen model on (every world-th row),
        padded so every rank runs the same number of forwards (ZeRO-3 gathers parameters
        collectively: a rank with one batch fewer would hang the rest). Returns the indices
        and how many of them are real."""
        mine = list(range(self.rank, n, self.world))
        per_rank = -(-n // self.world)
        real = len(mine)
        mine += [mine[-1] if mine else 0] * (per_rank - real)
        return mine, real


def _interface_of(address: str) -> str | None:
    """The name of the network interface that holds ``address`` (``lo`` for 127.0.0.1)."""
    import psutil

    return next((name for name, addrs in psutil.net_if_addrs().items()
                 if any(a.address.split("%")[0] == address for a in addrs)), None)


def serve_rendezvous(address: str, world: int, timeout_s: float) -> int:
    """Start, in the process that will be rank 0 of a group of ``world``, the TCP store its
    ranks meet at, listening on ``address`` only (a free port, returned). torch's own
    rendezvous (``env://``, what Ray Train uses) binds its store to every interface, with no
    option to choose; started on that port, it finds this one and serves from it instead
    (a multi-tenant store), so nothing listens beyond ``address``."""
    import torch.distributed as dist

    listener = socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET)
    listener.bind((address, 0))
    port = listener.getsockname()[1]
    _served.append(dist.TCPStore(address, port, world, True,
                                 timeout=datetime.timedelta(seconds=timeout_s),
                                 wait_for_workers=False, multi_tenant=True,
                                 master_listen_fd=listener.detach(), use_libuv=True))
    return port


def meet_at(address: str, port: int) -> None:
    """Point this process's ``env://`` rendezvous at ``address:port``, and its gloo and NCCL
    sockets at the interface holding ``address`` (unless the user chose one): by default gloo
    listens on the address the host name resolves to, NCCL on the first interface it likes."""
    os.environ.update(MASTER_ADDR=address, MASTER_PORT=str(port))
    interface = _interface_of(address)
    if interface is not None:
        os.environ.setdefault("GLOO_SOCKET_IFNAME", interface)
        os.environ.setdefault("NCCL_SOCKET_IFNAME", interface)


def init_distributed() -> Shard:
    """Join (or create, for a lone process) the process group; returns this process's place
    in it.

    A lone process gets the rank variables a launcher would set, so the same DeepSpeed code
    path serves `ptdist train` and `torchrun -m ptdist train`. It needs no rendezvous: its group
    is built on an in-memory store, where torch's TCP store would listen on every interface,
    and gloo's socket is bound to the loopback interface.
    """
    import deepspeed
    import deepspeed.comm
    import torch.distributed as dist

    # Before any DeepSpeed call: deepspeed.initialize also starts DeepSpeed's comm backend
    # (in a Ray Train worker, whose group Ray Train made), which would build the CPU op.
    skip_unused_cpu_op()
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    made_here = not dist.is_initialized()
    if made_here and "RANK" not in os.environ:
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1")
        loopback = _interface_of(LOOPBACK)
        if loopback is not None:
            os.environ.setdefault("GLOO_SOCKET_IFNAME", loopback)
        dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
    if not deepspeed.comm.is_initialized():
        # Also when the group exists already (a Ray Train worker made it): DeepSpeed's comm
        # must wrap it before any zero.Init, whose config otherwise reads world size 1
        # (DeepSpeed issue 3341) and fails its batch-size check.
        with watched_builds():
            deepspeed.init_distributed(dist_backend=backend, verbose=False)
    if made_here:
        # A group still alive at interpreter teardown can abort a rank after its work is done
        # ("terminate called without an active exception"). No barrier: a rank that failed
        # alone must still be able to exit.
        atexit.register(_tear_down)
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    return Shard.of_group()


def _tear_down() -> None:
    """The process group's end at exit, after the objects that still use it: a ZeRO-3 model
    that a refused load left in a reference cycle (its traceback's frames) was otherwise freed
    after the group, and both ranks aborted at exit ("terminate called without an active
    exception"): 3 of 20 two-rank refusals under torchrun here without this, 0 of 40 with it."""
    import gc

    import torch.distributed as dist

    gc.collect()
    dist.destroy_process_group()


def finish_together(world: int) -> None:
    """Hold every rank of a successful run until all are done. A rank that tears its process
    group down while a peer is still finishing (rank 0 writing the prompt) can be aborted at
    exit ("terminate called without an active exception"): seen in about one ZeRO-3 run in six
    on two CPU processes without this."""
    import torch.distributed as dist

    if world > 1:
        dist.barrier()


def leads() -> bool:
    """Whether this process leads the group it is in (`Shard.leads`)."""
    return Shard.of_group().leads


def from_leader(compute: Callable[[], T]) -> T:
    """``compute()`` run by rank 0 alone, its result handed to every rank: a decision that
    reads the store while rank 0 may change it (every rank must act on the same one)."""
    import torch.distributed as dist

    if Shard.of_group().world == 1:
        return compute()
    value = [compute() if leads() else None]
    dist.broadcast_object_list(value, src=0)
    return value[0]


def gather_lists(values: list) -> list:
    """Concatenate every rank's list, in rank order."""
    import torch.distributed as dist

    if Shard.of_group().world == 1:
        return list(values)
    parts: list = [None] * dist.get_world_size()
    dist.all_gather_object(parts, values)
    return [v for part in parts for v in part]


def mean_over_ranks(values: list[float]) -> list[float]:
    """Each value's mean over the ranks of the process group: a step's loss over the whole
    global batch, from each rank's loss over its slice (the slices are of equal size). The same
    on every rank, so a decision taken on it (a non-finite loss anywhere is non-finite here) is
    taken by all ranks together: a rank that stopped alone would leave the others waiting in a
    collective."""
    import torch.distributed as dist

    if not dist.is_initialized() or dist.get_world_size() == 1:
        return list(values)
    device = torch.device("cuda", torch.cuda.current_device()) \
        if dist.get_backend() == "nccl" else torch.device("cpu")
    total = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(total)
    return (total / dist.get_world_size()).tolist()
