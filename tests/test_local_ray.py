"""The embedded local Ray and a lone training process are closed to the network: every socket
they listen on is on loopback, and Ray's servers refuse a client without Ray's token."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import child_env

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
from ptdist.orchestration.cluster import connect_ray

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


def _probe(script: str) -> dict:
    env = child_env()
    for var in ("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "RAY_AUTH_MODE"):
        env.pop(var, None)  # as a user's shell has them: unset
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, text=True,
                          capture_output=True, timeout=300)
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
import json, psutil
from ptdist.training.distributed import init_distributed
print(json.dumps({"group": init_distributed(), "listening": [
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
from ptdist.orchestration.cluster import connect_ray
connect_ray(None)
print("up", flush=True)
sys.stdin.read()  # until the test closes it
"""

# What Ray Train's placement-group cleaner does in its actor: ask the state API, with no
# address, whether the controller is alive.
CLEANER = """
import json
import ray
from ptdist.orchestration.cluster import connect_ray
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
