"""Joining a Ray cluster, or starting the embedded local one."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

from ptdist.runtime import ray_environment


def connect_ray(address: str | None) -> str:
    """Join the cluster at ``address`` (or $RAY_ADDRESS, which `ray job submit` sets), or start
    the embedded local Ray, bound to loopback. Returns where the work runs, in words."""
    ray_environment()
    import ray

    address = address or os.environ.get("RAY_ADDRESS")
    if ray.is_initialized():
        return "the Ray instance this process already joined"
    if address:
        ray.init(address=address)
        return f"the Ray cluster at {address}"
    # Ray Train's controller queries the state API, which the dashboard serves.
    ray.init(address="local", _node_ip_address="127.0.0.1", include_dashboard=True,
             dashboard_host="127.0.0.1")
    return "a local Ray on this machine"


@contextmanager
def ray_session(address: str | None) -> Iterator[str]:
    """`connect_ray` for the length of a block. If the block joined Ray, it leaves it at the
    end: an embedded local Ray stops, and no worker log line that Ray forwards can be printed
    after the caller's result (ptdist's --json must stay the last line)."""
    import ray

    joined = not ray.is_initialized()
    where = connect_ray(address)
    try:
        yield where
    finally:
        if joined:
            ray.shutdown()
