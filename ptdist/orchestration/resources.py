"""What the cluster can offer a run, and a check that every run of a sweep fits it.

Node types come from a Ray cluster config (`cluster.yaml`, or the copy `ray up` leaves on the
head node), or, for a cluster without an autoscaler such as the embedded local Ray, from the
nodes that are alive. A run counts everything its job holds: a one-worker run its worker's
bundle; a worker group all its workers on one node (groups are placed STRICT_PACK), plus the
coordinator's sliver of the job that starts it, on that node or another (on a fixed cluster,
another node that exists; on an autoscaling one, any node type).
"""

from __future__ import annotations

from pathlib import Path

from ptdist.errors import PtdistError
from ptdist.orchestration.spec import Resources, RunSpec
from ptdist.validation import read_yaml

# Written by `ray up` on the head node: the autoscaler's view of the node types.
HEAD_NODE_CONFIG = Path("~/ray_bootstrap_config.yaml").expanduser()
_BOOKKEEPING = ("memory", "object_store_memory")  # what Ray counts, not what runs ask for


def node_types_from_cluster_config(path: str | Path) -> dict[str, dict[str, float]]:
    """``{node type: {"CPU": n, "GPU": n, ...}}`` from an autoscaler config."""
    config = read_yaml(Path(path), "cluster config", ("available_node_types",))
    types = config.get("available_node_types") or {}
    if not types:
        raise PtdistError(f"cluster config {path} has no available_node_types to place runs on")
    return {name: {k: float(v) for k, v in (t.get("resources") or {}).items()}
            for name, t in types.items()}


def node_types_from_live_cluster() -> dict[str, dict[str, float]]:
    """The resources of each node alive in the connected Ray cluster."""
    import ray

    return {node["NodeManagerAddress"] + ":" + node["NodeID"][:8]:
            {k: float(v) for k, v in node["Resources"].items()}
            for node in ray.nodes() if node["Alive"]}


def check_runs_fit(runs: list[RunSpec], node_types: dict[str, dict[str, float]],
                   source: str, fixed: bool = False) -> None:
    """Stop, naming the model, if no node type can hold a run's job. ``fixed``: the node types
    are the nodes themselves (a cluster without an autoscaler), one of each."""
    for run in runs:
        res = run.resources
        if _placeable(res, node_types, fixed):
            continue
        offers = "; ".join(f"{name}: {describe(offer)}" for name, offer in node_types.items())
        if res.workers == 1:
            need = f"asks for {describe(res.per_worker())} (1 worker)"
        else:
            need = (f"runs a worker group of {res.workers} workers x "
                    f"{describe(res.per_worker())}, which needs {describe(res.group())} on one "
                    f"node, plus {describe(res.job_bundle())} for the job that starts it")
        raise PtdistError(
            f"model {run.config.model} {need}: no node of {source} can hold that ({offers}). "
            "Lower its resources in the sweep spec, use fewer workers, or add a node type "
            "that large")


def _placeable(res: Resources, nodes: dict[str, dict[str, float]], fixed: bool) -> bool:
    job = res.job_bundle()
    if res.workers == 1:
        return any(_fits(job, offer) for offer in nodes.values())
    group = res.group()
    for name, offer in nodes.items():
        if not _fits(group, offer):
            continue
        left = {k: v - group.get(k, 0.0) for k, v in offer.items()}
        others = [o for n, o in nodes.items() if n != name] if fixed else list(nodes.values())
        if _fits(job, left) or any(_fits(job, o) for o in others):
            return True
    return False


def _fits(bundle: dict[str, float], offer: dict[str, float]) -> bool:
    # A small tolerance: fractional shares (0.05 CPU, 0.001 accelerator) add up inexactly.
    return all(offer.get(k, 0.0) >= v - 1e-9 for k, v in bundle.items() if v > 0)


def describe(resources: dict[str, float]) -> str:
    """``"8 CPU, 1 GPU"`` and any resource pinning a kind of node: the resources runs are
    placed by (not Ray's memory and per-node bookkeeping)."""
    pins = sorted(k for k in resources if k not in ("CPU", "GPU") and k not in _BOOKKEEPING
                  and not k.startswith("node:"))
    return ", ".join([f"{resources.get(k, 0.0):g} {k}" for k in ("CPU", "GPU")]
                     + [f"{k}" if k.startswith("accelerator_type:") else
                        f"{resources[k]:g} {k}" for k in pins])
