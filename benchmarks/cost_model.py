"""The cost model's FLOPs (`ptdist.orchestration.planning.cost_model.example_flops`, counted on the
meta device) beside the time one prompt-tuning step takes on this CPU, per model and shape.

If the count is right, time follows it where the matmuls dominate: the achieved FLOP/s (counted
FLOPs / measured seconds) is about the same for every model and shape that keeps the cores
busy, and a shape with r times the FLOPs of another takes about r times as long. Each step is
a forward of the training loss and a backward to the prompt (fp32, as CPU runs train), timed
after a warm-up, the shapes interleaved (common.interleaved), medians.

`python benchmarks/cost_model.py [--models ...] [--batch-size 32] [--prompt-length 20]
[--text-lengths 32 128] [--reps 5]`
"""

from __future__ import annotations

from common import MINILM, header, interleaved, parser, setup, table

MODELS = ["tiny-roberta", "tiny-t5", "tiny-t5-v1_1", MINILM]


def step(backbone, batch: dict, prompt):
    """A closure: one forward of the training loss and the backward to the prompt."""
    examples = batch["input_ids"].shape[0]

    def run() -> None:
        backbone.loss(prompt.expand(examples, -1, -1), batch).mean().backward()
        prompt.grad = None
    return run


def main() -> None:
    p = parser(__doc__.splitlines()[0], default_reps=5)
    p.add_argument("--models", nargs="+", default=MODELS)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--prompt-length", type=int, default=20)
    p.add_argument("--text-lengths", type=int, nargs="+", default=[32, 128])
    args = p.parse_args()
    import torch

    from ptdist.backbones import load_backbone
    from ptdist.orchestration.planning.cost_model import example_flops

    setup()
    header("cost model: counted FLOPs vs CPU step time", vars(args))
    results = []
    for model in args.models:
        cases, flops = {}, {}
        for text in args.text_lengths:
            backbone = load_backbone(model, max_length=text)
            rows = [{"text": " ".join(["the movie was good"] * text), "label": i % 2}
                    for i in range(args.batch_size)]
            batch = backbone.collate(rows, ["good", "bad"])
            prompt = torch.nn.Parameter(torch.randn(1, args.prompt_length, backbone.hidden_size))
            target = batch["target_ids"].shape[1] if "target_ids" in batch else 1
            count = example_flops(model, "fp32", args.prompt_length, batch["input_ids"].shape[1],
                                  target)
            cases[text] = step(backbone, batch, prompt)
            flops[text] = count.useful() * args.batch_size
        timed = interleaved(cases, args.reps, args.warmup)
        first = args.text_lengths[0]
        for text in args.text_lengths:
            seconds = timed[text].median
            results.append([model, text, flops[text] / 1e9, seconds, flops[text] / seconds / 1e9,
                            flops[text] / flops[first], seconds / timed[first].median])
    print(table(["model", "text", "GFLOP/step", "s/step", "GFLOP/s", "FLOPs ratio",
                 "time ratio"], results))


if __name__ == "__main__":
    main()
