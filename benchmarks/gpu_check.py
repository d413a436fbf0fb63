"""The GPU check: T5-XL- and T5-XXL-shaped T5 v1.1 models built from their configs (random
weights, bf16, nothing downloaded) on one GPU, through ptdist's own training, capture and
evaluation code:

- prompt tuning (the DeepSpeed engine ptdist trains with: `training.engine.prompt_engine`) at
  ZeRO-0, ZeRO-0 with activation checkpointing, and ZeRO-3: tokens/s, model FLOPs utilisation
  against the card's bf16 peak (4 x parameters FLOPs per token: a forward and the backward to
  the prompt, encoder parameters for the input tokens, the rest for the target tokens;
  recomputation is not counted as useful work), and peak memory
  (`torch.cuda.max_memory_allocated`) against the memory planner's estimate;
- FFN activation capture (the paper's prompt protocol, `neurons.capture`): prompts/s;
- transfer-matrix evaluation (`training.evaluation.evaluate_each`: prompts as a batch
  dimension): prompt-examples/s.

It writes one JSON (``--out``) and prints a table. Meant for one GPU in under 8 minutes
(sized for it, not yet timed on one). ``--smoke`` runs the same code on CPU with the tiny T5 v1.1
preset's shapes in a few seconds (the test suite does, tests/test_gpu_check.py).

    python benchmarks/gpu_check.py [--out gpu_check.json] [--models t5-xl t5-xxl]
    python benchmarks/gpu_check.py --smoke
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass

from common import machine, setup, single_process_group

import torch  # noqa: E402  (common sets the offline environment first)

MODELS = {"t5-xl": "google/t5-v1_1-xl", "t5-xxl": "google/t5-v1_1-xxl",
          "tiny": "tiny-t5-v1_1"}
# Dense bf16 peaks (TFLOP/s) by the name torch gives the card; --peak-tflops overrides.
PEAKS = {"H200": 989, "H100": 989, "A100": 312, "L40S": 362, "L4": 121, "A10G": 125,
         "RTX 6000 Ada": 364}
CASES = (("zero0", 0, False), ("zero0+ckpt", 0, True), ("zero3", 3, False))
WORDS = ("the movie was good bad great awful plot story acting music really very it this "
         "and film scene ending quite").split()


@dataclass
class TrainCase:
    model: str
    case: str
    micro_batch: int
    tokens_per_s: float
    mfu: float | None
    peak_gb: float
    planned_gb: float
    step_s: float


@dataclass
class Throughput:
    model: str
    what: str
    per_s: float
    unit: str
    peak_gb: float


def rows(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    return [{"text": " ".join(rng.choices(WORDS, k=400)), "label": rng.randint(0, 1)}
            for _ in range(n)]


@contextmanager
def random_backbone(model: str, ds_config: dict, device: torch.device, text_length: int):
    """``model``'s architecture from its config with random bf16 weights, built where the
    run's DeepSpeed config says (partitioned by zero.Init under ZeRO-3), with the tiny T5
    preset's tokenizer (any ids below the vocabulary size do for random weights)."""
    from transformers import AutoTokenizer
    from transformers.integrations import HfDeepSpeedConfig

    from ptdist.backbones import dtype_of, random_model, resolve_model_path
    from ptdist.backbones.seq2seq import Seq2SeqBackbone
    from ptdist.training.engine import precision_of, zero_stage

    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path("tiny-t5-v1_1"))
    marker = HfDeepSpeedConfig(ds_config) if zero_stage(ds_config) == 3 else None
    try:
        with torch.device(device):
            built = random_model(model, dtype_of(precision_of(ds_config)))
        yield Seq2SeqBackbone(model, built, tokenizer, max_length=text_length)
    finally:
        del marker


def train_case(model: str, name: str, stage: int, checkpointing: bool, args,
               device: torch.device, peak_flops: float | None) -> TrainCase:
    from ptdist.backbones import SoftPrompt
    from ptdist.training import TrainConfig
    from ptdist.training.engine import deepspeed_config, load_ds_config, prompt_engine
    from ptdist.training.memory import RunShape, model_memory

    precision = "bf16"
    config = TrainConfig(model=model, task="sst2", steps=args.steps + 1,
                         prompt_length=args.prompt_length, batch_size=args.micro_batch,
                         max_length=args.text_length, lr=0.3, warmup_steps=0,
                         activation_checkpointing=checkpointing)
    ds = deepspeed_config(load_ds_config(f"zero{stage}_bf16")[0], config, world=1)
    _reset(device)
    with random_backbone(model, ds, device, args.text_length) as backbone:
        if checkpointing:
            backbone.checkpoint_activations()
        prompt = SoftPrompt(torch.randn(args.prompt_length, backbone.hidden_size) * 0.5)
        engine = prompt_engine(config, prompt, backbone, ds, start_step=0)
        batch = {k: v.to(engine.device) for k, v in
                 backbone.collate(rows(args.micro_batch), ["good", "bad"]).items()}
        seconds = []
        for step in range(args.steps + 1):  # the first step warms up (kernels, allocator)
            _sync(device)
            t0 = time.perf_counter()
            loss = engine(batch)
            engine.backward(loss)
            engine.step()
            _sync(device)
            if step:
                seconds.append(time.perf_counter() - t0)
        peak = _peak(device)
        engine.destroy()
        target = batch["target_ids"].shape[1]
    step_s = sum(seconds) / len(seconds)
    encoder_tokens = args.micro_batch * (args.prompt_length + args.text_length)
    memory = model_memory(model, precision)
    planned = memory.estimate(RunShape(precision, args.micro_batch, args.prompt_length,
                                       args.text_length, target), 1, stage, checkpointing)
    # Each encoder token passes the encoder, each target token the decoder (and the head).
    t5 = memory.backbone.model
    encoder = sum(q.numel() for q in t5.encoder.parameters())
    flops = 4 * (encoder * encoder_tokens +
                 (memory.parameters - encoder) * args.micro_batch * target)
    mfu = flops / step_s / peak_flops if peak_flops else None
    tokens = encoder_tokens + args.micro_batch * target
    del engine, backbone, prompt
    _reset(device)
    return TrainCase(model, name, args.micro_batch, tokens / step_s, mfu, peak / 1e9,
                     planned.total / 1e9, step_s)


def inference_cases(model: str, args, device: torch.device) -> list[Throughput]:
    """Capture and matrix evaluation in bf16 on one random model, as the stages run them."""
    from ptdist.neurons.capture import bare_rows, ffn_activations
    from ptdist.tasks import get_task
    from ptdist.training.engine import load_ds_config
    from ptdist.training.evaluation import evaluate_each

    out = []
    ds, _ = load_ds_config("zero0_bf16")
    _reset(device)
    with random_backbone(model, ds, device, args.text_length) as backbone, torch.no_grad():
        width = backbone.hidden_size
        prompts = torch.randn(args.prompts, args.prompt_length, width, device=device) * 0.5
        batch = {k: v.to(device) for k, v in
                 backbone.collate(bare_rows(backbone) * args.per_forward, None).items()}
        ffn_activations(backbone, prompts[:args.per_forward], batch)  # warm-up
        _sync(device)
        t0 = time.perf_counter()
        for start in range(0, args.prompts, args.per_forward):
            group = prompts[start:start + args.per_forward]
            ffn_activations(backbone, group, {k: v[:len(group)] for k, v in batch.items()})
        _sync(device)
        out.append(Throughput(model, "capture", args.prompts / (time.perf_counter() - t0),
                              "prompts/s", _peak(device) / 1e9))
        task, examples = get_task("sst2"), rows(args.eval_rows, seed=1)
        sources = prompts[:args.matrix_prompts]
        evaluate_each(backbone, sources, task, examples[:4], args.eval_batch, 2)  # warm-up
        _sync(device)
        t0 = time.perf_counter()
        evaluate_each(backbone, sources, task, examples, args.eval_batch, 2)
        _sync(device)
        pairs = len(sources) * len(examples)
        out.append(Throughput(model, "matrix eval", pairs / (time.perf_counter() - t0),
                              "prompt-examples/s", _peak(device) / 1e9))
        del backbone
    _reset(device)
    return out


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _reset(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def _peak(device: torch.device) -> float:
    return float(torch.cuda.max_memory_allocated()) if device.type == "cuda" else float("nan")


def card_peak(args) -> float | None:
    if args.peak_tflops:
        return args.peak_tflops * 1e12
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name(0)
    return next((tflops * 1e12 for card, tflops in PEAKS.items() if card in name), None)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["t5-xl", "t5-xxl"], choices=MODELS)
    p.add_argument("--cases", nargs="+", default=[c for c, _, _ in CASES],
                   choices=[c for c, _, _ in CASES])
    p.add_argument("--micro-batch", type=int, default=8)
    p.add_argument("--prompt-length", type=int, default=100)
    p.add_argument("--text-length", type=int, default=128)
    p.add_argument("--steps", type=int, default=5, help="timed steps per case (after one)")
    p.add_argument("--prompts", type=int, default=64, help="prompts to capture")
    p.add_argument("--per-forward", type=int, default=16, help="prompts per capture forward")
    p.add_argument("--matrix-prompts", type=int, default=8)
    p.add_argument("--eval-rows", type=int, default=64)
    p.add_argument("--eval-batch", type=int, default=64, help="examples x prompts per forward")
    p.add_argument("--peak-tflops", type=float, default=None,
                   help="the card's dense bf16 peak (default: from its name)")
    p.add_argument("--smoke", action="store_true",
                   help="CPU, the tiny T5 v1.1 preset's shapes, a few steps: checks the script")
    p.add_argument("--out", default="gpu_check.json")
    args = p.parse_args()
    if args.smoke:
        args.models, args.micro_batch, args.prompt_length, args.text_length = ["tiny"], 2, 4, 16
        args.steps, args.prompts, args.per_forward, args.matrix_prompts = 1, 4, 2, 2
        args.eval_rows, args.eval_batch = 4, 4
    elif not torch.cuda.is_available():
        sys.exit("gpu_check: no GPU visible (CUDA_VISIBLE_DEVICES, driver?); --smoke runs the "
                 "script on CPU")
    setup()
    single_process_group()
    device = torch.device("cuda" if torch.cuda.is_available() and not args.smoke else "cpu")
    peak = card_peak(args)
    t0 = time.time()
    train, inference = [], []
    for short in args.models:
        model = MODELS[short]
        for name, stage, checkpointing in CASES:
            if name in args.cases:
                train.append(train_case(model, name, stage, checkpointing, args, device, peak))
                print(f"[gpu_check] {short} {name}: {train[-1].tokens_per_s:,.0f} tokens/s",
                      file=sys.stderr, flush=True)
        inference += inference_cases(model, args, device)
    result = {"machine": machine(), "device": str(device), "peak_bf16_tflops":
              peak / 1e12 if peak else None, "settings": vars(args),
              "wall_s": time.time() - t0, "train": [asdict(c) for c in train],
              "inference": [asdict(c) for c in inference]}
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    print(result["machine"])
    print(f"{'model':<22}{'case':<12}{'micro':>6}{'tokens/s':>11}{'MFU':>7}{'step s':>8}"
          f"{'peak GB':>9}{'planned GB':>11}")
    for c in train:
        mfu = f"{c.mfu:.1%}" if c.mfu is not None else "-"
        print(f"{c.model:<22}{c.case:<12}{c.micro_batch:>6}{c.tokens_per_s:>11,.0f}{mfu:>7}"
              f"{c.step_s:>8.3f}{c.peak_gb:>9.2f}{c.planned_gb:>11.2f}")
    for t in inference:
        print(f"{t.model:<22}{t.what:<12}{t.per_s:>11,.1f} {t.unit} (peak {t.peak_gb:.1f} GB)")
    print(f"wall time {result['wall_s']:.0f} s; JSON: {args.out}")


if __name__ == "__main__":
    main()
