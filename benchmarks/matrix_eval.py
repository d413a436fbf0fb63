"""Transfer-matrix evaluation: K prompts scored on one task's evaluation rows, pair by pair
(`scoring.predict` once per prompt, as one `ptdist eval` per prompt would) vs batched (one
`scoring.predict` of the K prompts ``[K, L, d]``: the prompts as a batch dimension, the data
read and tokenized once), under the same bound on the forward batch (examples x prompts).

    python benchmarks/matrix_eval.py [--model tiny-t5] [--prompts 8] [--rows 256]
"""

from __future__ import annotations

import torch

from common import (TWEETS, Hotspot, header, interleaved, load, mlm_head, parser,
                    profile_shares, setup, table, task_rows)


def main() -> None:
    p = parser("transfer-matrix evaluation: predict per prompt vs of K prompts", default_reps=5)
    p.add_argument("--task", default=TWEETS, help="a classification or generation task")
    p.add_argument("--prompts", type=int, default=8, help="K prompts scored")
    p.add_argument("--prompt-length", type=int, default=20)
    p.add_argument("--rows", type=int, default=256, help="evaluation rows")
    p.add_argument("--batch-size", type=int, default=64,
                   help="bound on the forward batch of both sides (examples x prompts)")
    p.add_argument("--max-length", type=int, default=128, help="text tokens (as `ptdist eval`)")
    p.add_argument("--max-new-tokens", type=int, default=16, help="generation tasks only")
    p.add_argument("--profile", action="store_true",
                   help="also cProfile one run of each side and print where time goes")
    args = p.parse_args()
    setup()
    from ptdist.tasks import get_task
    from ptdist.backbones import load_backbone
    from ptdist.scoring import check_task_fits, inference_device, predict

    task = get_task(args.task)
    # as `scoring.load` holds a whole model, for the whole benchmark
    backbone = load_backbone(args.model, max_length=args.max_length).to(inference_device(None))
    check_task_fits(task, backbone)
    rows = task_rows("eval", args.rows, args.task)
    generator = torch.Generator().manual_seed(0)
    # ptdist's random init (uniform in [-0.5, 0.5]): prompts of a plausible scale.
    prompts = torch.rand(args.prompts, args.prompt_length, backbone.hidden_size,
                         generator=generator) - 0.5
    results: dict[str, list[list]] = {}

    def pair_by_pair() -> None:
        results["pairs"] = [predict(backbone, lambda b, q=q: q.expand(b, -1, -1), task, rows,
                                    args.batch_size, args.max_new_tokens)[0] for q in prompts]

    def batched() -> None:
        results["batched"] = predict(backbone, prompts, task, rows, args.batch_size,
                                     args.max_new_tokens)

    header("transfer-matrix evaluation: pair by pair vs batched", dict(
        model=args.model, task=task.name, kind=task.kind, prompts=args.prompts,
        prompt_length=args.prompt_length, rows=len(rows), batch_bound=args.batch_size,
        reps=args.reps, warmup=args.warmup))
    timings = interleaved({"pair by pair: predict x K": pair_by_pair,
                           "batched: predict of K prompts": batched}, args.reps, args.warmup)
    same = sum(a == b for pa, pb in zip(results["pairs"], results["batched"])
               for a, b in zip(pa, pb))
    total = len(prompts) * len(rows)
    pairs = {name: total / t.median for name, t in timings.items()}
    print(table(["case", "s/matrix (median)", "prompt-pairs/s", "identical predictions"],
                [[name, t.median, pairs[name], f"{same}/{total}"]
                 for name, t in timings.items()]))
    print(f"ratio batched/pair-by-pair prompt-pairs/s: "
          f"{pairs['batched: predict of K prompts'] / pairs['pair by pair: predict x K']:.3f}")
    load()
    assert results["pairs"] == results["batched"], f"predictions differ: {same}/{total} equal"
    if args.profile:
        collate = f"{'mlm' if backbone.kind == 'mlm' else 'seq2seq'}.py"
        spots = [Hotspot(collate, "collate", "collate (tokenize, pad)"),
                 Hotspot("tokenization_utils_base.py", "__call__", "  of which the tokenizer"),
                 Hotspot(collate, "class_logits", "class scores (model forward)")]
        if backbone.kind == "mlm":
            spots.append(mlm_head(backbone, "  "))
        profile_shares(pair_by_pair, 1, spots, "pair-by-pair matrices")
        profile_shares(batched, 1, spots, "batched matrices")


if __name__ == "__main__":
    main()
