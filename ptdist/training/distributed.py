"""Process-group setup for one process (no launcher) or many (torchrun / deepspeed launcher)."""

from __future__ import annotations

import atexit
import os
import socket

import torch


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_distributed() -> tuple[int, int]:
    """Join (or create, for a lone process) the process group; returns (rank, world size).

    A lone process gets the rendezvous variables a launcher would set, on loopback, so the
    same DeepSpeed code path serves `ptdist train` and `torchrun -m ptdist train`.
    """
    import deepspeed
    import deepspeed.comm
    import torch.distributed as dist

    made_here = not dist.is_initialized()
    if made_here and "RANK" not in os.environ:
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1",
                          MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()))
    if not deepspeed.comm.is_initialized():
        # Also when the group exists already (a Ray Train worker made it): DeepSpeed's comm
        # must wrap it before any zero.Init, whose config otherwise reads world size 1
        # (DeepSpeed issue 3341) and fails its batch-size check.
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        deepspeed.init_distributed(dist_backend=backend, verbose=False)
    if made_here:
        # A group still alive at interpreter teardown can abort a rank after its work is done
        # ("terminate called without an active exception"). No barrier: a rank that failed
        # alone must still be able to exit.
        atexit.register(dist.destroy_process_group)
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    return dist.get_rank(), dist.get_world_size()


def finish_together(world: int) -> None:
    """Hold every rank of a successful run until all are done. A rank that tears its process
    group down while a peer is still finishing (rank 0 writing the prompt) can be aborted at
    exit ("terminate called without an active exception"): seen in about one ZeRO-3 run in six
    on two CPU processes without this."""
    import torch.distributed as dist

    if world > 1:
        dist.barrier()


def gather_lists(values: list) -> list:
    """Concatenate every rank's list, in rank order."""
    import torch.distributed as dist

    if not dist.is_initialized() or dist.get_world_size() == 1:
        return list(values)
    parts: list = [None] * dist.get_world_size()
    dist.all_gather_object(parts, values)
    return [v for part in parts for v in part]

