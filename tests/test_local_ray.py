"""The embedded local Ray and a lone training process are closed to the network: every socket
they listen on is on loopback, and Ray's servers refuse a client without Ray's token."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import child_env
from tests.listeners import beyond_loopback

REPO = Path(__file__).resolve().parents[1]

# Run in a fresh interpreter, as a user's program would: `import ray` first (before ptdist sets
# anything, the repro), then the local Ray with workers started, then the listening
# sockets of this process and every process it started (GCS, raylet, dashboard, agents,
# workers), and an unauthenticated gRPC call and HTTP request to Ray's servers.
PROBE = """
import json, os, urllib.request, urllib.error
import ray
import grpc, psutil
from ray.core.generated import gcs_service_pb2, gcs_service_pb2_grpc
from ptdist.orchestration.execution.cluster import connect_ray

where = connect_ray(None)
pid = ray.remote(lambda: os.getpid())
assert ray.get([pid.remote() for _ in range(2)])  # workers started
gcs = ray.get_runtime_context().gcs_address
me = psutil.Process()
listening = []
for proc in [me] + me.children(recursive=True):
    try:
        listening += [[proc.name(), c.laddr.ip, c.laddr.port]
                      for c in proc.net_connections("inet") if c.status == psutil.CONN_LISTEN]
    except psutil.NoSuchProcess:
        pass
stub = gcs_service_pb2_grpc.NodeInfoGcsServiceStub(grpc.insecure_channel(gcs))
try:
    stub.GetAllNodeInfo(gcs_service_pb2.GetAllNodeInfoRequest(), timeout=30)
    grpc_answer = "OK"
except grpc.RpcError as exc:
    grpc_answer = exc.code().name
dashboard = ray._private.worker._global_node.address_info["webui_url"]
try:
    http_answer = urllib.request.urlopen(f"http://{dashboard}/api/jobs/", timeout=30).status
except urllib.error.HTTPError as exc:
    http_answer = exc.code
nodes = len(ray.nodes())  # the driver itself holds the token
ray.shutdown()
print(json.dumps(dict(where=where, gcs=gcs, listening=listening, grpc=grpc_answer,
                      http=http_answer, nodes=nodes)))
"""

LOOPBACK = {"127.0.0.1", "::1", "::ffff:127.0.0.1"}


def _probe(script: str, *args: str) -> dict:
    env = child_env()
    for var in ("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "RAY_AUTH_MODE"):
        env.pop(var, None)  # as a user's shell has them: unset
    proc = subprocess.run([sys.executable, "-c", script, *args], cwd=REPO, env=env, text=True,
                          capture_output=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_the_local_ray_listens_on_loopback_only_and_refuses_clients_without_the_token():
    seen = _probe(PROBE)
    names = {name for name, _, _ in seen["listening"]}
    # the servers Ray starts for a local instance, as psutil names their processes
    assert {"gcs_server", "raylet"} <= names and any("IDLE" in n for n in names), names
    assert [s for s in seen["listening"] if s[1] not in LOOPBACK] == []
    assert seen["gcs"].startswith("127.0.0.1:")
    assert "listening on 127.0.0.1 only; token authentication on" in seen["where"]
    assert seen["grpc"] == "UNAUTHENTICATED" and seen["http"] == 401
    assert seen["nodes"] == 1


LONE = """
import dataclasses, json, psutil
from ptdist.distributed.group import init_distributed
print(json.dumps({"group": dataclasses.astuple(init_distributed()), "listening": [
    c.laddr.ip for c in psutil.Process().net_connections("inet")
    if c.status == psutil.CONN_LISTEN]}))
"""


def test_a_lone_training_process_opens_no_port_beyond_loopback():
    """`ptdist train` without a launcher: no TCP rendezvous store (torch binds it to every
    interface), gloo on the loopback interface."""
    seen = _probe(LONE)
    assert seen["group"] == [0, 1]
    assert seen["listening"] and set(seen["listening"]) <= LOOPBACK, seen


# Another Ray instance on the host (as other users' local Rays, or a `ray start`, may be).
OTHER_RAY = """
import sys, time
from ptdist.orchestration.execution.cluster import connect_ray
connect_ray(None)
print("up", flush=True)
sys.stdin.read()  # until the test closes it
"""

# What Ray Train's placement-group cleaner does in its actor: ask the state API, with no
# address, whether the controller is alive.
CLEANER = """
import json
import ray
from ptdist.orchestration.execution.cluster import connect_ray
from ray._private.services import find_gcs_addresses

connect_ray(None)

@ray.remote(num_cpus=0)
class Controller:
    def ping(self):
        return True

@ray.remote(num_cpus=0)
def cleaner_check(actor_id):
    from ray.train.v2._internal.state.util import is_actor_alive
    try:
        return str(is_actor_alive(actor_id=actor_id, timeout=60))
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"

controller = Controller.remote()
ray.get(controller.ping.remote())
seen = dict(instances=len(find_gcs_addresses()),
            alive=ray.get(cleaner_check.remote(controller._actor_id.hex())))
ray.shutdown()
print(json.dumps(seen))
"""


@pytest.mark.slow
def test_ray_trains_placement_group_cleaner_finds_this_ray_beside_another_on_the_host():
    """With two Ray instances on a host, the state API called without an address from a
    worker fails ("Found multiple active Ray instances"), and Ray Train's cleaner with it;
    the local Ray names its own state API server to its workers."""
    other = subprocess.Popen([sys.executable, "-c", OTHER_RAY], cwd=REPO, env=child_env(),
                             text=True, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL)
    try:
        assert other.stdout.readline().strip() == "up"
        seen = _probe(CLEANER)
    finally:
        other.stdin.close()
        other.wait(timeout=120)
    assert seen["instances"] >= 2
    assert seen["alive"] == "True"


# A 2-worker group as ptdist starts one (a Ray Train worker group with gloo, on the embedded
# local Ray): once every rank has joined, each worker's listening sockets and the rendezvous
# port (MASTER_PORT) it was given.
GROUP = """
import json, os, sys
import psutil
from ptdist.orchestration.execution.cluster import ray_session
from ptdist.orchestration.execution.worker_group import on_worker_group
from ptdist.orchestration.spec.sweep_spec import Resources
from ptdist.store import Store

def listening(out):
    import torch.distributed as dist
    dist.barrier()  # every rank has joined: rank 0's store and each gloo socket are up
    seen = [c.laddr.ip for c in psutil.Process().net_connections("inet")
            if c.status == psutil.CONN_LISTEN]
    store = [c.laddr.ip for c in psutil.Process().net_connections("inet")
             if c.status == psutil.CONN_LISTEN and c.laddr.port == int(os.environ["MASTER_PORT"])]
    with open(out, "a") as f:
        f.write(json.dumps({"rank": dist.get_rank(), "listening": seen, "store": store}) + "\\n")
    dist.barrier()

store, out = sys.argv[1:]
with ray_session(None):
    on_worker_group("probe", listening, {"out": out}, Resources(workers=2, cpus=0.5),
                    Store(store))
print(json.dumps({"ranks": sorted((json.loads(line) for line in open(out)),
                                  key=lambda r: r["rank"])}))
"""


@pytest.mark.slow
def test_a_two_worker_group_meets_on_loopback_only(tmp_path):
    """torch's rendezvous store (rank 0) listened on every interface (``::``) before; now it and
    every other socket of both workers are on loopback."""
    seen = _probe(GROUP, str(tmp_path / "store"), str(tmp_path / "sockets.jsonl"))["ranks"]
    assert [r["rank"] for r in seen] == [0, 1]
    assert seen[0]["store"] == ["127.0.0.1"] and seen[1]["store"] == []
    for rank in seen:
        assert rank["listening"] and set(rank["listening"]) <= LOOPBACK, rank


LISTENER = """
import socket, sys
listener = socket.socket()
sys.stdin.readline()
listener.bind((sys.argv[1], 0))
listener.listen()
print(listener.getsockname()[1], flush=True)
sys.stdin.readline()
"""


@pytest.mark.parametrize("address,beyond", [("0.0.0.0", True), ("127.0.0.1", False)])
def test_the_suite_names_a_process_of_its_own_that_listens_beyond_loopback(listener_watch,
                                                                            address, beyond):
    """The check conftest runs through every test (`tests/listeners.py`) finds a child that
    listens on every interface, and not one that listens on loopback."""
    child = subprocess.Popen([sys.executable, "-c", LISTENER, address], text=True,
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    listener_watch.allow(child.pid)  # opened on purpose: this test's own check leaves it out
    try:
        child.stdin.write("\n")
        child.stdin.flush()
        port = child.stdout.readline().strip()
        found = beyond_loopback(os.getpid())
        mine = f"(pid {child.pid}) listens on {address}:{port}"
        assert any(line.endswith(mine) for line in found) == beyond, found
    finally:
        child.kill()
        child.wait()
