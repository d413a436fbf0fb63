"""What the cluster can offer a run: its node types, how many nodes of each it can have at
once, the GPU each carries, and a check that every run of a sweep fits a node.

Node types come from a Ray cluster config (`cluster.yaml`, or the copy `ray up` leaves on the
head node: each type up to its ``max_workers`` nodes, the head type one), or, for a cluster
without an autoscaler, from the nodes that are alive (the Ray cluster ptdist joins, or the
embedded local Ray's one node: this machine). A run counts everything its job holds: a
one-worker run its worker's bundle; a worker group all its workers on one node (groups are
placed STRICT_PACK), plus the coordinator's sliver of the job that starts it, on that node or
another (on a fixed cluster, another node that exists; on an autoscaling one, any node type).

A node type names its GPU by Ray's ``accelerator_type:<T>`` resource and its GPU memory by
``gpu_memory_gb:<N>`` (`ptdist.training.hardware`): Ray's type alone does not tell a 40 GB A100
from an 80 GB one, and the memory planner needs the size.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from ptdist.errors import PtdistError
from ptdist.orchestration.spec.sweep_spec import Resources, RunSpec
from ptdist.training.hardware import DEFAULT_CARD, GPU_MEMORY_RESOURCE, Card, card
from ptdist.validation import read_yaml

# Written by `ray up` on the head node: the autoscaler's view of the node types.
HEAD_NODE_CONFIG = Path("~/ray_bootstrap_config.yaml").expanduser()
_BOOKKEEPING = ("memory", "object_store_memory")  # what Ray counts, not what runs ask for
ACCELERATOR = "accelerator_type:"
NodeTypes = dict[str, dict[str, float]]


def node_types_from_cluster_config(path: str | Path) -> NodeTypes:
    """``{node type: {"CPU": n, "GPU": n, ...}}`` from an autoscaler config."""
    return {name: dict(t["resources"]) for name, t in _config_types(path).items()}


def _config_types(path: str | Path) -> dict[str, dict]:
    config = read_yaml(Path(path), "cluster config", ("available_node_types",))
    types = config.get("available_node_types") or {}
    if not types:
        raise PtdistError(f"cluster config {path} has no available_node_types to place runs on")
    head = config.get("head_node_type")
    return {name: {"resources": {k: float(v) for k, v in (t.get("resources") or {}).items()},
                   "nodes": max(int(t.get("max_workers", 0)), 1 if name == head else 0)}
            for name, t in types.items()}


def node_types_from_live_cluster() -> NodeTypes:
    """The resources of each node alive in the connected Ray cluster."""
    import ray

    return {node["NodeManagerAddress"] + ":" + node["NodeID"][:8]:
            {k: float(v) for k, v in node["Resources"].items()}
            for node in ray.nodes() if node["Alive"]}


@dataclass(frozen=True)
class Cluster:
    """Node types, the most nodes of each the cluster has at once, and where they came from.
    ``fixed``: the node types are the nodes themselves (no autoscaler)."""

    types: Mapping[str, Mapping[str, float]]
    nodes: Mapping[str, int]
    source: str
    fixed: bool = False

    @classmethod
    def from_config(cls, path: str | Path) -> Cluster:
        types = _config_types(path)
        return cls({n: t["resources"] for n, t in types.items()},
                   {n: t["nodes"] for n, t in types.items()}, str(path))

    @classmethod
    def live(cls, where: str) -> Cluster:
        types = node_types_from_live_cluster()
        return cls(types, dict.fromkeys(types, 1), where, fixed=True)

    @classmethod
    def this_machine(cls) -> Cluster:
        """The embedded local Ray's one node, as Ray will see it: the CPUs and GPUs Ray detects
        on this machine (its cgroup's CPU limit and CUDA_VISIBLE_DEVICES honoured)."""
        from ray._private.accelerators import get_accelerator_manager_for_resource
        from ray._private.utils import get_num_cpus

        gpus = get_accelerator_manager_for_resource("GPU").get_current_node_num_accelerators()
        offer = {"CPU": float(get_num_cpus()), "GPU": float(gpus)}
        return cls({"this machine": offer}, {"this machine": 1}, "this machine's local Ray",
                   fixed=True)

    def check(self, runs: list[RunSpec]) -> None:
        """`check_runs_fit` on these node types."""
        check_runs_fit(runs, {n: dict(t) for n, t in self.types.items()}, self.source,
                       self.fixed)

    def holding(self, bundle: Mapping[str, float]) -> list[str]:
        """The node types one node of which holds ``bundle``."""
        return [name for name, offer in self.types.items() if bundle_fits(bundle, offer)]

    def slots(self, bundle: Mapping[str, float]) -> int:
        """How many jobs that each hold ``bundle`` on one node run at once on the cluster."""
        return sum(self.nodes[name] * _copies(bundle, self.types[name])
                   for name in self.holding(bundle))

    def gpus(self) -> int:
        return int(sum(self.nodes[n] * t.get("GPU", 0.0) for n, t in self.types.items()))

    def card_of(self, name: str) -> Card | None:
        """The GPU of a node type (None: it has none, or does not say which)."""
        return node_card(self.types[name])

    def card_for(self, resources: Resources) -> Card | None:
        """The GPU a run of ``resources`` is planned on: of the node types that can hold it,
        the one with the least memory (Ray may place it on any of them). None for a run
        without GPUs, or one no node type holds (`check` says so)."""
        if not resources.gpus:
            return None
        cards = [node_card(self.types[n]) for n in self.holding(resources.group())]
        known = [c for c in cards if c is not None]
        if not known:
            return pinned_card(resources) if cards else None
        return min(known, key=lambda c: c.memory_gb)


def node_card(offer: Mapping[str, float]) -> Card | None:
    """The card a node offering ``offer`` carries, from its accelerator type and GPU memory
    resources (a type without its memory: the type's smallest card)."""
    family = next((k[len(ACCELERATOR):] for k in offer if k.startswith(ACCELERATOR)), None)
    if not offer.get("GPU") or family is None:
        return None
    return card(family, declared_memory(offer))


def declared_memory(resources: Mapping[str, float]) -> float | None:
    prefix = f"{GPU_MEMORY_RESOURCE}:"
    return next((float(k[len(prefix):]) for k in resources if k.startswith(prefix)), None)


def pinned_card(resources: Resources) -> Card:
    """The card a run is planned on when no cluster is known: the GPU type and memory it is
    pinned to (a type alone: the type's smallest card), else `DEFAULT_CARD`."""
    if resources.accelerator_type is None:
        return card(DEFAULT_CARD[0], resources.gpu_memory_gb or DEFAULT_CARD[1])
    return card(resources.accelerator_type, resources.gpu_memory_gb)


def _copies(bundle: Mapping[str, float], offer: Mapping[str, float]) -> int:
    """How many ``bundle``s one node offering ``offer`` holds at once. A label resource (a
    sliver of ``accelerator_type:...`` every worker asks) does not limit it."""
    limits = [offer.get(k, 0.0) / v for k, v in bundle.items()
              if v > 0 and not _is_label(k)]
    return int(math.floor(min(limits, default=1.0) + 1e-9))


def _is_label(resource: str) -> bool:
    return ":" in resource


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
        return any(bundle_fits(job, offer) for offer in nodes.values())
    group = res.group()
    for name, offer in nodes.items():
        if not bundle_fits(group, offer):
            continue
        left = {k: v - group.get(k, 0.0) for k, v in offer.items()}
        others = [o for n, o in nodes.items() if n != name] if fixed else list(nodes.values())
        if bundle_fits(job, left) or any(bundle_fits(job, o) for o in others):
            return True
    return False


def bundle_fits(bundle: Mapping[str, float], offer: Mapping[str, float]) -> bool:
    """Whether one node offering ``offer`` has room for ``bundle``."""
    # A small tolerance: fractional shares (0.05 CPU, 0.001 accelerator) add up inexactly.
    return all(offer.get(k, 0.0) >= v - 1e-9 for k, v in bundle.items() if v > 0)


def describe(resources: dict[str, float]) -> str:
    """``"8 CPU, 1 GPU"`` and any resource pinning a kind of node (a label such as
    ``accelerator_type:A100`` by its name): the resources runs are placed by (not Ray's memory
    and per-node bookkeeping)."""
    pins = sorted(k for k in resources if k not in ("CPU", "GPU") and k not in _BOOKKEEPING
                  and not k.startswith("node:"))
    return ", ".join([f"{resources.get(k, 0.0):g} {k}" for k in ("CPU", "GPU")]
                     + [f"{k}" if _is_label(k) else f"{resources[k]:g} {k}" for k in pins])
