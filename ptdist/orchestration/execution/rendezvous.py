"""Where the processes of a Ray Train worker group meet: Ray Train's torch setup, except that
rank 0's rendezvous store listens on its node's address (127.0.0.1 on the embedded local Ray,
the node's address on a cluster) instead of on every interface, and gloo's and NCCL's sockets
keep to the interface of that address.

Ray Train starts torch.distributed with ``env://``: it picks a free port on worker 0's node and
every worker calls ``init_process_group``, whose rank 0 starts torch's TCP store bound to every
interface (``::``), with no authentication, for the group's lifetime; torch offers no option to
bind it elsewhere. Here worker 0 first starts the store itself on a socket bound to the node's
address (`distributed.group.serve_rendezvous`), and the workers' ``env://`` rendezvous, given
its port, serves from that store.
"""

from __future__ import annotations

import ray
import ray.util
from ray.train.torch import TorchConfig
from ray.train.torch.config import (_set_torch_distributed_env_vars, _setup_torch_process_group,
                                    _TorchBackend)

from ptdist.distributed.group import meet_at, serve_rendezvous


class BoundTorchConfig(TorchConfig):
    """`TorchConfig` whose groups listen on their node's address only."""

    @property
    def backend_cls(self):
        return _BoundTorchBackend


class _BoundTorchBackend(_TorchBackend):
    def on_start(self, worker_group, backend_config: TorchConfig) -> None:
        world = len(worker_group)
        address, port = worker_group.execute_single(0, _serve, world, backend_config.timeout_s)
        worker_group.execute(meet_at, address=address, port=port)
        worker_group.execute(_set_torch_distributed_env_vars)
        ray.get([worker_group.execute_single_async(
            rank, _setup_torch_process_group, backend=backend_config.backend, world_rank=rank,
            world_size=world, init_method="env://", timeout_s=backend_config.timeout_s)
            for rank in range(world)])


def _serve(world: int, timeout_s: float) -> tuple[str, int]:
    """In worker 0: its node's address, and the port of the store started there."""
    address = ray.util.get_node_ip_address()
    return address, serve_rendezvous(address, world, timeout_s)
