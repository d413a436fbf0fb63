"""Joining a Ray cluster, or starting the embedded local one on loopback.

The local Ray's servers (GCS, raylet, workers and the driver's core worker, dashboard, dashboard
and runtime-env agents) all listen on 127.0.0.1, and its clients authenticate with Ray's token
(docs/reliability.md). One listener of a local run is not Ray's: a job of several workers (a Ray
Train worker group) rendezvouses through torch's TCP store, which ptdist binds to the node's
address (127.0.0.1 here) for the length of that job (`ptdist.orchestration.execution.rendezvous`). A
cluster given with --address or $RAY_ADDRESS is the user's: ptdist joins it as configured.

Ray's state API, called without an address from inside a worker, guesses which Ray to ask
among the instances running on the host; with several (other users' local Rays, or a local
Ray beside a `ray start`) it fails with "Found multiple active Ray instances". Ray Train's
placement-group cleaner, an actor every worker group starts, calls it that way, so its
monitor died and a group whose controller crashed would have kept its GPUs. The local Ray's
dashboard (which serves the state API) is therefore started on a port ptdist picks, and that
address is put in $RAY_API_SERVER_ADDRESS, which every process of the local Ray inherits and
the state API reads first. A joined cluster's job gets the address it joined as $RAY_ADDRESS
(`_joined_address`), for the same reason.
"""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stdout

from ptdist.logs import library_level
from ptdist.orchestration.planning.resources import HEAD_NODE_CONFIG, Cluster
from ptdist.runtime import RAY_AUTH_MODE, ray_environment

LOOPBACK = "127.0.0.1"
LOCAL_RAY = "a local Ray on this machine"
API_SERVER = "RAY_API_SERVER_ADDRESS"
_named_api_server: list[str] = []  # the $API_SERVER this process set for its local Ray


def connect_ray(address: str | None) -> str:
    """Join the cluster at ``address`` (or $RAY_ADDRESS, which `ray job submit` sets), or start
    the embedded local Ray on loopback. Returns where the work runs, in words."""
    address = address or os.environ.get("RAY_ADDRESS")
    ray_environment(local=not address)
    import ray

    if ray.is_initialized():
        return "the Ray instance this process already joined"
    if _named_api_server and os.environ.get(API_SERVER) == _named_api_server[-1]:
        del os.environ[API_SERVER]  # an earlier local Ray's, gone with it
    if address:
        ray.init(address=address, logging_level=library_level(),
                 runtime_env=_joined_address(address))
        return f"the Ray cluster at {address}"
    keep_ray_on_loopback()
    # Ray Train's controller and its placement-group cleaner query the state API, which the
    # dashboard serves: on a port of ours, named to every process (the module's docstring).
    port = _free_port()
    _named_api_server.append(f"http://{LOOPBACK}:{port}")
    os.environ[API_SERVER] = _named_api_server[-1]
    ray.init(address="local", _node_ip_address=LOOPBACK, include_dashboard=True,
             dashboard_host=LOOPBACK, dashboard_port=port, logging_level=library_level())
    gcs = ray.get_runtime_context().gcs_address
    if not gcs.startswith(f"{LOOPBACK}:"):
        ray.shutdown()
        raise RuntimeError(f"the local Ray came up at {gcs}, not on loopback: this Ray version "
                           "does not honour RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0; please report "
                           "it with `ray --version`")
    auth = os.environ.get(RAY_AUTH_MODE)
    return (f"{LOCAL_RAY} (listening on {LOOPBACK} only; token authentication "
            + ("on" if auth == "token" else f"OFF: {RAY_AUTH_MODE}={auth}") + ")")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def _joined_address(address: str) -> dict:
    """The job's processes get the address it joined. Ray Train's controller and its
    placement-group cleaner find the state API through $RAY_ADDRESS, else through the latest
    `ray start` on their node: with two Rays on one machine they would watch the other one (and
    log that they do, every few seconds). A `ray://` client address or `auto` is no address
    they could use, so those are left to Ray."""
    if address == "auto" or "://" in address:
        return {}
    return {"env_vars": {"RAY_ADDRESS": address}}


def keep_ray_on_loopback() -> None:
    """Make a Ray started or joined from this process stay on 127.0.0.1. Ray reads
    RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER when it is imported; a program that imported ray before
    ptdist set it would still resolve 127.0.0.1 to the external address, so the loaded module
    gets the setting too (the address check after ray.init catches a Ray that no longer reads
    it from there)."""
    ray_environment(local=True)
    from ray._private import ray_constants

    if hasattr(ray_constants, "ENABLE_RAY_CLUSTER"):
        ray_constants.ENABLE_RAY_CLUSTER = False


@contextmanager
def ray_session(address: str | None) -> Iterator[str]:
    """`connect_ray` for the length of a block. If the block joined Ray, it leaves it at the
    end: an embedded local Ray stops, and no worker log line that Ray forwards can be printed
    after the caller's result (ptdist's --json must stay the last line). Within the block the
    driver's stdout is its stderr: what Ray forwards from its workers' stdout (a library's
    print) is not the command's result, which is printed after the block."""
    ray = sys.modules.get("ray")  # imported by connect_ray, after Ray's settings are made
    joined = ray is None or not ray.is_initialized()
    with redirect_stdout(sys.stderr):
        where = connect_ray(address)
        try:
            yield where
        finally:
            if joined:
                import ray

                ray.shutdown()


def cluster_for(config: str | None, address: str | None, local: bool) -> Cluster:
    """The cluster a command's jobs will run on, as the planner sees it: the Ray cluster config
    ``config`` (a spec's ``cluster:``), else the one `ray up` left on the head node, else the
    Ray cluster at ``address`` or $RAY_ADDRESS (joined to read its nodes), else this machine
    (the embedded local Ray, or ``local``: the jobs run in this process)."""
    if config:
        return Cluster.from_config(config)
    if HEAD_NODE_CONFIG.exists():
        return Cluster.from_config(HEAD_NODE_CONFIG)
    address = address or os.environ.get("RAY_ADDRESS")
    if address and not local:
        with ray_session(address) as where:
            return Cluster.live(where)
    return Cluster.this_machine()
