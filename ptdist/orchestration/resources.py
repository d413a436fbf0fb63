"""What the cluster can offer a run, and a check that every run of a sweep fits it.

Node types come from a Ray cluster config (`cluster.yaml`, or the copy `ray up` leaves on the
head node), or, for a cluster without an autoscaler such as the embedded local Ray, from the
nodes that are alive. A run's workers may land on different nodes, so each worker's bundle must
fit one node type.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from ptdist.errors import PtdistError
from ptdist.orchestration.spec import RunSpec

# Written by `ray up` on the head node: the autoscaler's view of the node types.
HEAD_NODE_CONFIG = Path("~/ray_bootstrap_config.yaml").expanduser()


def node_types_from_cluster_config(path: str | Path) -> dict[str, dict[str, float]]:
    """``{node type: {"CPU": n, "GPU": n, ...}}`` from an autoscaler config."""
    try:
        config = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise PtdistError(f"cannot read cluster config {path}: {exc}") from None
    types = (config or {}).get("available_node_types") or {}
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
                   source: str) -> None:
    """Stop, naming the model, if a run's worker needs more than any node type offers."""
    for run in runs:
        bundle = run.resources.per_worker()
        if any(_fits(bundle, offer) for offer in node_types.values()):
            continue
        offers = "; ".join(f"{name}: {describe(offer)}" for name, offer in node_types.items())
        raise PtdistError(
            f"model {run.config.model} asks for {describe(bundle)} per worker "
            f"({run.resources.workers} worker(s)), more than any node of {source} offers "
            f"({offers}). Lower its resources in the sweep spec, split it over more workers, or "
            "add a node type that large")


def _fits(bundle: dict[str, float], offer: dict[str, float]) -> bool:
    return all(offer.get(k, 0.0) >= v for k, v in bundle.items() if v > 0)


def describe(resources: dict[str, float]) -> str:
    """``"8 CPU, 1 GPU"``: the resources runs are placed by."""
    return ", ".join(f"{resources.get(k, 0.0):g} {k}" for k in ("CPU", "GPU"))
