"""What the load check (`ptdist.backbones.weights.check_load`) costs beside the load it checks.

For each model and precision: the load (`from_pretrained` as ptdist runs it, no check) and the
check (every distinct tensor's sha256 against the file tensor's, cast to the loaded dtype),
interleaved, medians; and the two rates a large checkpoint's check is made of on this machine:
sha256 and the fp32 -> bf16 cast, in GB/s of one core.

`python benchmarks/load_check.py [--models ...] [--reps 3]`
"""

from __future__ import annotations

import hashlib
import time

from common import MINILM, header, interleaved, parser, setup, table

MODELS = ["tiny-roberta", "tiny-t5", "tiny-t5-v1_1", MINILM]


def rate(step, nbytes: int, reps: int) -> float:
    """GB/s of ``step()`` over ``nbytes``, the best of ``reps``."""
    best = float("inf")
    for _ in range(reps):
        start = time.perf_counter()
        step()
        best = min(best, time.perf_counter() - start)
    return nbytes / best / 1e9


def main() -> None:
    p = parser("the load check beside the load", default_reps=3)
    p.add_argument("--models", nargs="+", default=MODELS)
    args = p.parse_args()
    setup()
    import torch

    from ptdist.backbones.loading import _load
    from ptdist.backbones.weights import check_load

    header("load check", {"reps": args.reps, "warmup": args.warmup})
    rows = []
    for model in args.models:
        for precision, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
            loaded = {}

            def load(model=model, dtype=dtype):
                loaded["last"] = _load(model, dtype, 128)

            def check():
                backbone, missing, checkpoint = loaded["last"]
                loaded["check"] = check_load(backbone.model, checkpoint, missing)

            times = interleaved({"load": load, "check": check}, args.reps, args.warmup)
            checkpoint, result = loaded["last"][2], loaded["check"]
            size = sum(f.stat().st_size for f in set(checkpoint.keys.values()))
            rows.append((model, precision, f"{size / 1e6:.1f}", result.checked,
                         result.initialised, times["load"].median, times["check"].median,
                         times["check"].median / times["load"].median))
    print(table(["model", "precision", "file MB", "checked", "initialised", "load s", "check s",
                 "check/load"], rows))
    tensor = torch.randn(64 * 2 ** 20)  # 256 MB of fp32
    raw = tensor.view(torch.uint8).numpy()
    print(f"sha256: {rate(lambda: hashlib.sha256(raw).digest(), raw.nbytes, args.reps):.2f} "
          f"GB/s; fp32 -> bf16 cast: "
          f"{rate(lambda: tensor.to(torch.bfloat16), raw.nbytes, args.reps):.2f} GB/s of fp32")


if __name__ == "__main__":
    main()
