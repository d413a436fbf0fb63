"""Placement of worker groups on a local multi-node Ray (`ray.cluster_utils.Cluster`: several
raylets on this machine, with fake GPU and GPU-type resources). Placement only: nothing trains
on the fake GPUs; the groups that start run CPU workers that report where they are."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from ptdist.errors import PtdistError
from ptdist.orchestration.execution import worker_group
from ptdist.orchestration.execution.worker_group import GroupNotStarted, on_worker_group
from ptdist.orchestration.planning.resources import check_runs_fit, node_types_from_live_cluster
from ptdist.orchestration.spec.sweep_spec import Resources, RunSpec
from ptdist.store import Store
from ptdist.training import TrainConfig
from tests.conftest import free_port

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster():
    """A head that offers nothing, two 1-GPU L40S nodes and one 2-GPU A100 node."""
    from ptdist.orchestration.execution.cluster import keep_ray_on_loopback

    keep_ray_on_loopback()  # else ray.init resolves 127.0.0.1 to the machine's own address
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 0, "include_dashboard": True, "dashboard_host": "127.0.0.1",
        "dashboard_port": free_port(), "node_ip_address": "127.0.0.1"})
    nodes = {}
    for name, cpus, gpus, kind in (("l40s-a", 1, 1, "L40S"), ("l40s-b", 1, 1, "L40S"),
                                   ("a100", 2, 2, "A100")):
        node = cluster.add_node(num_cpus=cpus, num_gpus=gpus, node_ip_address="127.0.0.1",
                                resources={f"accelerator_type:{kind}": 1})
        nodes[name] = node.node_id
    ray.init(address=cluster.address)
    cluster.wait_for_nodes()
    try:
        yield nodes
    finally:
        ray.shutdown()
        cluster.shutdown()


def _where(out: Path) -> None:
    """A worker's function: append the id of the node it runs on."""
    import ray

    with open(out, "a") as f:
        f.write(ray.get_runtime_context().get_node_id() + "\n")


def test_a_group_pinned_to_a_gpu_type_lands_on_one_node_of_that_type(cluster, tmp_path):
    out = tmp_path / "nodes.txt"
    group = Resources(workers=2, cpus=1, accelerator_type="A100")
    on_worker_group("placement", _where, {"out": out}, group, Store(tmp_path / "store"))
    assert out.read_text().split() == [cluster["a100"]] * 2


def test_the_spec_check_counts_the_whole_group_on_one_node(cluster):
    nodes = node_types_from_live_cluster()
    run = TrainConfig(model="tiny-t5-v1_1", task="sst2")
    fits = Resources(workers=2, gpus=2, cpus=1)
    check_runs_fit([RunSpec(run, fits)], nodes, "the test cluster", fixed=True)
    # Four GPUs exist, but on three nodes: a four-worker group fits none of them.
    wide = Resources(workers=4, gpus=4, cpus=0.5)
    with pytest.raises(PtdistError, match=r"worker group of 4 workers x 0.5 CPU, 1 GPU, which "
                                          r"needs 2 CPU, 4 GPU on one node"):
        check_runs_fit([RunSpec(run, wide)], nodes, "the test cluster", fixed=True)
    # Pinned to L40S, two one-GPU workers need two L40S on one node: no node has that.
    pinned = Resources(workers=2, gpus=2, cpus=0.5, accelerator_type="L40S")
    with pytest.raises(PtdistError, match="accelerator_type:L40S"):
        check_runs_fit([RunSpec(run, pinned)], nodes, "the test cluster", fixed=True)


def test_a_group_that_cannot_start_is_reported_and_fails_after_its_wait(cluster, tmp_path,
                                                                         capfd, monkeypatch):
    """The A100 node is busy (an actor holds one of its CPUs); the two L40S nodes have a CPU
    each, so a two-CPU group could only start split over them, which STRICT_PACK refuses."""
    import ray

    @ray.remote(num_cpus=1, resources={"accelerator_type:A100": 0.001})
    class Busy:
        def node(self) -> str:
            return ray.get_runtime_context().get_node_id()

    busy = Busy.remote()
    assert ray.get(busy.node.remote()) == cluster["a100"]
    monkeypatch.setattr(worker_group, "REPORT_EVERY_S", 5.0)  # 60 s on a real cluster
    group = Resources(workers=2, cpus=1, start_timeout_s=12)
    t0 = time.time()
    try:
        with pytest.raises(GroupNotStarted, match=r"did not start within 12 s \(resources."
                                                  r"start_timeout_s\): no node had room for its "
                                                  r"2 workers x 1 CPU, 0 GPU \(2 CPU, 0 GPU on "
                                                  r"one node\)"):
            on_worker_group("stuck", _where, {"out": tmp_path / "never.txt"}, group,
                            Store(tmp_path / "store"))
    finally:
        ray.kill(busy)
    elapsed = time.time() - t0
    assert 12 <= elapsed < 50, elapsed  # one wait, not retried by Ray Train
    err = capfd.readouterr().err
    assert "[ptdist] stuck: its worker group has not started after 5 s" in err
    assert not (tmp_path / "never.txt").exists()
