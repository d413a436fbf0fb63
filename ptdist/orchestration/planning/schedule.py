"""When a study's jobs would run on the named cluster: the jobs placed on its nodes as Ray would
place them, each starting as soon as what it needs is done and a node has room, for the time
the estimate gives it on that node's card (`estimate.JobCost.seconds`).

Every node type is there from the start with all the nodes it may have (its ``max_workers``;
the autoscaler's minutes of boot are not counted); a job takes the first node that holds it,
in the graph's order, and one that holds no GPU avoids GPU nodes when another has room (Ray's
scheduler does the same). A TPT plan is its runs, each placed like a job. What comes out, per
stage and in all: when it starts and ends (wall-clock), the GPUs' busy fraction, the critical
path (the longest chain of jobs by what they need: no cluster can be faster), and the GPU time
left idle while runs waited for a GPU of the kind they need: a waiting run is a job not yet
placed, or a run packed behind another in a pack of a compute-bound model (one that fills a
GPU alone: it waits for its pack's GPU as much as a queued job does).
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field

from ptdist.orchestration.planning.estimate import STAGES, JobCost
from ptdist.orchestration.planning.resources import Cluster, bundle_fits

HOUR = 3600.0


@dataclass
class _Node:
    type: str
    free: dict[str, float]
    cluster: Cluster

    @property
    def has_gpus(self) -> bool:
        return bool(self.cluster.types[self.type].get("GPU"))


@dataclass
class _Piece:
    cost: JobCost
    index: int  # order in the graph
    start: float = 0.0
    end: float = 0.0
    node: _Node | None = None

    @property
    def waiting_runs(self) -> int:
        return self.cost.runs if self.cost.gpus else 0


@dataclass(frozen=True)
class Span:
    stage: str
    start: float
    end: float
    gpu_seconds: float

    @property
    def wall(self) -> float:
        return self.end - self.start


@dataclass(frozen=True)
class Schedule:
    cluster: Cluster
    gpus: int
    spans: list[Span]
    makespan: float
    critical_path: float
    critical_jobs: list[str]
    busy: float  # fraction of the cluster's GPU-seconds held by jobs over the makespan
    idle_while_waiting: float  # GPU-seconds idle on GPUs a waiting run could have used
    unplaced: list[str] = field(default_factory=list)  # jobs no node of the cluster holds


def simulate(costs: list[JobCost], cluster: Cluster) -> Schedule:
    """Place the jobs not yet stored on ``cluster`` (see the module's docstring)."""
    nodes = [_Node(name, dict(offer), cluster) for name, offer in cluster.types.items()
             for _ in range(cluster.nodes[name])]
    todo = {c.job.id: c for c in costs if not c.job.stored()}
    pieces = {job_id: [_Piece(c, i) for _ in range(c.pieces)]
              for i, (job_id, c) in enumerate(todo.items())}
    left = {job_id: len(p) for job_id, p in pieces.items()}
    needs = {job_id: {n for n in c.job.needs if n in todo} for job_id, c in todo.items()}
    ready = [p for job_id in todo if not needs[job_id] for p in pieces[job_id]]
    running: list[tuple[float, int, _Piece]] = []
    done_pieces: list[_Piece] = []
    now, idle, serial = 0.0, 0.0, 0
    while ready or running:
        ready.sort(key=lambda p: p.index)
        for piece in list(ready):
            node = _node_for(piece, nodes)
            if node is None:
                continue
            ready.remove(piece)
            for k, v in piece.cost.holds.items():
                node.free[k] = node.free.get(k, 0.0) - v
            piece.node, piece.start = node, now
            piece.end = now + piece.cost.seconds(cluster.card_of(node.type))
            serial += 1
            heapq.heappush(running, (piece.end, serial, piece))
        if not running:
            break  # what is left waits for nodes the cluster does not have
        until = running[0][0]
        idle += (until - now) * _idle_while_waiting(ready, running, nodes, cluster)
        now = until
        while running and running[0][0] <= now:
            _, _, piece = heapq.heappop(running)
            for k, v in piece.cost.holds.items():
                piece.node.free[k] += v
            done_pieces.append(piece)
            job_id = piece.cost.job.id
            left[job_id] -= 1
            if left[job_id]:
                continue
            for other, waits in needs.items():
                if job_id in waits:
                    waits.discard(job_id)
                    if not waits:
                        ready += pieces[other]
    gpus = cluster.gpus()
    held = sum(p.cost.gpus * (p.end - p.start) for p in done_pieces)
    path, chain = _critical_path(todo)
    return Schedule(cluster, gpus, _spans(done_pieces), now, path, chain,
                    held / (gpus * now) if gpus and now else 0.0, idle,
                    sorted({p.cost.job.id for p in ready}))


def _node_for(piece: _Piece, nodes: list[_Node]) -> _Node | None:
    holds = piece.cost.holds
    fitting = [n for n in nodes if bundle_fits(holds, n.free)]
    if not holds.get("GPU"):
        fitting.sort(key=lambda n: n.has_gpus)  # stable: CPU-only nodes first
    return fitting[0] if fitting else None


def _idle_while_waiting(ready: list[_Piece], running: list, nodes: list[_Node],
                        cluster: Cluster) -> float:
    """GPUs idle now that a waiting run could use: free GPUs on nodes of a type that holds a
    waiting run's job, at most as many as the waiting runs need."""
    waiting = [(p.cost.holds, p.waiting_runs) for p in ready if p.cost.gpus]
    waiting += [(p.cost.holds, p.cost.runs - 1) for *_, p in running
                if p.cost.compute_bound and p.cost.runs > 1]
    idle = 0.0
    for holds, runs in waiting:
        if not runs:
            continue
        types = set(cluster.holding(holds))
        free = sum(n.free.get("GPU", 0.0) for n in nodes if n.type in types)
        idle = max(idle, min(free, runs * holds.get("GPU", 0.0)))
    return idle


def _spans(pieces: list[_Piece]) -> list[Span]:
    by_stage: dict[str, list[_Piece]] = {}
    for p in pieces:
        by_stage.setdefault(p.cost.stage, []).append(p)
    return [Span(stage, min(p.start for p in mine), max(p.end for p in mine),
                 sum(p.cost.gpus * (p.end - p.start) for p in mine))
            for stage in STAGES if (mine := by_stage.get(stage))]


def _critical_path(todo: dict[str, JobCost]) -> tuple[float, list[str]]:
    """The longest chain of jobs by their needs, each for its planned time (a plan: one of its
    runs, since its runs may run at once)."""
    finish: dict[str, float] = {}
    before: dict[str, str | None] = {}
    for job_id in todo:  # the graph lists a job after every job it needs
        c = todo[job_id]
        prior = max((n for n in c.job.needs if n in finish), key=finish.get, default=None)
        finish[job_id] = c.seconds() + (finish[prior] if prior else 0.0)
        before[job_id] = prior
    if not finish:
        return 0.0, []
    last = max(finish, key=finish.get)
    chain = [last]
    while before[chain[-1]]:
        chain.append(before[chain[-1]])
    return finish[last], chain[::-1]


def describe_schedule(schedule: Schedule) -> str:
    """The dry run's wall-clock section."""
    c = schedule.cluster
    kinds = "; ".join(f"{c.nodes[n]} x {n} ({_node(c, n)})" for n in c.types if c.nodes[n])
    lines = [f"schedule on {c.source}: {kinds}; {schedule.gpus} GPUs (every node up from the "
             "start; docs/scale.md)",
             f"  {'stage':<12}{'start (h)':>10}{'end (h)':>10}{'wall-clock (h)':>16}"
             f"{'GPUs busy':>11}"]
    for s in schedule.spans:
        busy = s.gpu_seconds / (schedule.gpus * s.wall) if schedule.gpus and s.wall else 0.0
        lines.append(f"  {s.stage:<12}{s.start / HOUR:>10.1f}{s.end / HOUR:>10.1f}"
                     f"{s.wall / HOUR:>16.1f}{busy:>11.0%}")
    lines.append(f"  the study: {schedule.makespan / HOUR:,.1f} h wall-clock "
                 f"({schedule.makespan / HOUR / 24:.1f} days); GPUs busy {schedule.busy:.0%} "
                 f"of it; idle GPU-hours while runs waited for a GPU: "
                 f"{schedule.idle_while_waiting / HOUR:,.1f}")
    chain = " -> ".join(schedule.critical_jobs)
    lines.append(f"  critical path {schedule.critical_path / HOUR:,.1f} h: {chain}")
    if schedule.unplaced:
        lines.append(f"  never placed (no node holds them): {', '.join(schedule.unplaced)}")
    return "\n".join(lines)


def _node(cluster: Cluster, name: str) -> str:
    offer = cluster.types[name]
    card = cluster.card_of(name)
    gpus = f"{offer.get('GPU', 0):g} x {card.name}" if card else f"{offer.get('GPU', 0):g} GPU"
    return f"{offer.get('CPU', 0):g} CPU, {gpus}"
