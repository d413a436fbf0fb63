"""The GPU check: the shapes the paper plan bets on, measured on one GPU against what the memory
planner and the cost model say, in one 10-minute slot (sized for an H100 80 GB, 16 cores, no
internet: every model is built from its bundled config with random bf16 weights).

Each case runs in a process of its own, so no case's model or allocator state can bias another's
numbers (DeepSpeed's ZeRO-3 module hooks keep a model alive after `destroy()`, `del` and `gc`),
and each measures its peak from its own start. The cases (benchmarks/README.md has their time
budgets; the shapes are the paper's: prompt 100 + text 256 tokens, batch 32, a batch with
padding, classification targets):

- ``xxl-train``: T5 v1.1 XXL prompt tuning through ptdist's DeepSpeed engine at the planner's
  least-compute placement on this card (an 80 GB card: gradient accumulation 2 at micro-batch
  16, ZeRO-0);
- ``xxl-train-checkpointed``: the same batch in one micro-batch of 32 with activation
  checkpointing (the plan the planner replaced; its cost model says +50 % compute);
- ``pack``: T5-base, K runs on one backbone (ptdist's packed step: each run's micro-batch
  through the model in turn, then every row's Adam step, `StackedAdam`), K the largest the
  planner fits on this card (`plans.pack_fits`, at most `AUTO_PACK`);
- ``xxl-generate``: greedy generation of up to 64 tokens (the paper's generation tasks' eval);
- ``xxl-matrix``: transfer-matrix evaluation (`scoring.predict`: prompts as a batch dimension);
- ``xxl-zero3-torchrun`` and ``xxl-zero3-ray``: the ``xxl-train`` shape under ZeRO-3 on one
  GPU, started by torchrun and by a Ray Train worker group (`worker_group.on_worker_group`,
  the path multi-GPU runs take), side by side.

Per case: the planner's memory against the peak measured (`torch.cuda.max_memory_allocated` since
the case's start), tokens/s, and model FLOPs utilisation: the cost model's useful FLOPs
(`ptdist.orchestration.planning.cost_model.example_flops`: a forward and a backward to the prompt,
the decoder on its target steps, no embedding lookups, the recomputation not counted) per second
over the card's dense bf16 peak (its datasheet's, the variant told from the device name: H100 SXM,
PCIe, NVL). It writes one JSON (``--out``, default under the system's temporary folder) and prints a
table.

    python benchmarks/gpu_check.py [--out FILE] [--cases xxl-train pack ...]
    python benchmarks/gpu_check.py --smoke      # the same runner on CPU, tiny T5 v1.1 shapes
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from common import REPO, machine, setup

import torch  # noqa: E402  (common sets the offline environment first)

HERE = Path(__file__).resolve().parent
WORDS = ("the movie was good bad great awful plot story acting music really very it this "
         "and film scene ending quite").split()
LABEL_WORDS = ["good", "bad"]
PROMPT, TEXT, BATCH, NEW_TOKENS = 100, 256, 32, 64


@dataclass(frozen=True)
class Case:
    name: str
    kind: str  # train | pack | generate | matrix
    model: str
    budget_s: int  # on one H100 80 GB, process start to exit
    launcher: str = "python"  # python | torchrun | ray
    zero_stage: int = 0
    checkpointed: bool = False  # one micro-batch of the whole batch, activation checkpointing


XXL, BASE, TINY = "google/t5-v1_1-xxl", "t5-base", "tiny-t5-v1_1"
CASES = (
    Case("xxl-train", "train", XXL, 60),
    Case("xxl-train-checkpointed", "train", XXL, 60, checkpointed=True),
    Case("pack", "pack", BASE, 45),
    Case("xxl-generate", "generate", XXL, 50),
    Case("xxl-matrix", "matrix", XXL, 50),
    Case("xxl-zero3-torchrun", "train", XXL, 75, launcher="torchrun", zero_stage=3),
    Case("xxl-zero3-ray", "train", XXL, 90, launcher="ray", zero_stage=3),
)
SMOKE = {"prompt": 4, "text": 16, "batch": 4, "new_tokens": 4}
SMOKE_TIMEOUT_S = 600  # a CPU shared with other work
LAUNCH = "--launch-on-loopback"  # the process that runs torchrun for a case


@dataclass
class Result:
    case: str
    kind: str
    model: str
    launcher: str
    zero_stage: int
    micro_batch: int
    accumulation: int
    checkpointing: bool
    pack: int
    per_s: float  # tokens/s (train, pack), generated tokens/s, prompt-examples/s (matrix)
    unit: str
    step_s: float | None
    flops_per_step: float | None  # useful FLOPs of one optimizer step (the cost model's)
    mfu: float | None
    peak_gb: float | None  # measured since the case's start; None on CPU
    planned_gb: float | None
    load_check: str
    pid: int = 0  # the process the case ran in
    wall_s: float = 0.0


def rows(n: int, text: int, seed: int = 0) -> list[dict]:
    """``n`` labelled rows of random words, of several lengths (the batch holds padding, as a
    real one does), the longest cut at ``text`` tokens."""
    rng = random.Random(seed)
    return [{"text": " ".join(rng.choices(WORDS, k=text * 2 if i == 0 else rng.randint(
        text // 4, text))), "label": rng.randint(0, 1)} for i in range(n)]


def random_backbone(model: str, ds_config: dict, device: torch.device, text: int):
    """``model`` from its bundled config with random bf16 weights, tied as its checkpoint is
    (`random_model`: T5 v1.1 with its own head), built where its DeepSpeed config says
    (partitioned by zero.Init under ZeRO-3; the marker is kept on the backbone for the case's
    life), with the tiny T5 preset's tokenizer (any ids below the vocabulary do)."""
    from transformers import AutoTokenizer
    from transformers.integrations import HfDeepSpeedConfig

    from ptdist.backbones import dtype_of, random_model, resolve_model_path
    from ptdist.backbones.seq2seq import Seq2SeqBackbone
    from ptdist.distributed.ds_config import precision_of, zero_stage

    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(TINY))
    marker = HfDeepSpeedConfig(ds_config) if zero_stage(ds_config) == 3 else None
    with torch.device(device):
        built = random_model(model, dtype_of(precision_of(ds_config)))
    backbone = Seq2SeqBackbone(model, built, tokenizer, max_length=text)
    backbone.zero3_marker = marker
    return backbone


# What the loader's weight check (`ptdist.backbones.weights.check_load`: every load compared
# with its checkpoint's tensors) says of a case's model. The cases build random weights from
# configs, so there is no checkpoint to compare with, and saving an 11B model to reload it would
# not fit the slot: the check's cost is measured by benchmarks/load_check.py, its correctness
# under ZeRO-3 by the suite (tests/test_load_check.py).
LOAD_CHECK = "not run: random weights from a config (no checkpoint)"


# --- the cases, each in its own process ------------------------------------------------------

def run_case(case: Case, shape: dict, device: torch.device) -> Result:
    _reset(device)
    result = {"train": train_case, "pack": pack_case, "generate": generate_case,
              "matrix": matrix_case}[case.kind](case, shape, device)
    return replace(result, pid=os.getpid())


def plan(case: Case, shape: dict):
    """The planner's placement of the case's run on this card (one GPU), and the card."""
    from ptdist.orchestration.planning.placement import plan_placement
    from ptdist.orchestration.planning.plans import CLASS_TARGET
    from ptdist.training.memory import RunShape, model_memory

    memory = model_memory(case.model, "bf16")
    run = RunShape("bf16", shape["batch"], shape["prompt"], shape["text"], CLASS_TARGET)
    place = plan_placement(memory, run, shape["batch"], this_card(), max_gpus=1)
    if place is None:
        raise SystemExit(f"gpu_check: {case.model} fits no placement on one {this_card().name}")
    return memory, place


def train_case(case: Case, shape: dict, device: torch.device) -> Result:
    from ptdist.backbones import SoftPrompt
    from ptdist.distributed.ds_config import load_ds_config
    from ptdist.distributed.group import init_distributed
    from ptdist.orchestration.planning.cost_model import example_flops
    from ptdist.training import TrainConfig
    from ptdist.training.engine import deepspeed_config, prompt_engine
    from ptdist.training.memory import RunShape

    memory, place = plan(case, shape)
    accumulation, micro = place.accumulation, place.micro_batch
    checkpointing = place.checkpointing
    if case.checkpointed:
        accumulation, micro, checkpointing = 1, shape["batch"], True
    world = init_distributed().world
    config = TrainConfig(model=case.model, task="sst2", steps=shape["steps"] + 1,
                         prompt_length=shape["prompt"], batch_size=micro * accumulation * world,
                         max_length=shape["text"], lr=0.3, warmup_steps=0,
                         activation_checkpointing=checkpointing)
    raw, _ = load_ds_config(f"zero{case.zero_stage}_bf16")
    ds = deepspeed_config(dict(raw, gradient_accumulation_steps=accumulation), config, world)
    backbone = random_backbone(case.model, ds, device, shape["text"])
    if checkpointing:
        backbone.checkpoint_activations()
    prompt = SoftPrompt(torch.randn(shape["prompt"], backbone.hidden_size) * 0.5)
    engine = prompt_engine(config, prompt, backbone, ds, start_step=0)
    batch = {k: v.to(engine.device) for k, v in
             backbone.collate(rows(micro, shape["text"]), LABEL_WORDS).items()}
    seconds = _timed_steps(shape["steps"], accumulation,
                           lambda: engine.backward(engine(batch)), engine.step, device)
    text, target = batch["input_ids"].shape[1], batch["target_ids"].shape[1]
    planned = memory.estimate(RunShape("bf16", micro, shape["prompt"], text, target),
                              world, case.zero_stage, checkpointing)
    flops = example_flops(case.model, "bf16", shape["prompt"], text, target).useful() * \
        micro * accumulation
    tokens = micro * accumulation * (shape["prompt"] + text + target)
    return Result(case.name, case.kind, case.model, case.launcher, case.zero_stage, micro,
                  accumulation, checkpointing, 1, tokens / seconds, "tokens/s", seconds, flops,
                  _mfu(flops, seconds), _peak(device), planned.total / 1e9,
                  LOAD_CHECK)


def pack_case(case: Case, shape: dict, device: torch.device) -> Result:
    """K runs of ``case.model`` on one backbone as ptdist's packed step runs them (each run's
    micro-batch through the model on its own, then every row's Adam step: `StackedAdam`), K the
    planner's largest on this card."""
    from ptdist.distributed.ds_config import load_ds_config
    from ptdist.orchestration.planning.cost_model import example_flops
    from ptdist.orchestration.planning.plans import AUTO_PACK, pack_fits
    from ptdist.orchestration.spec.sweep_spec import Resources, RunSpec
    from ptdist.training import TrainConfig
    from ptdist.training.memory import RunShape, model_memory
    from ptdist.training.stacked import RowStep, StackedAdam

    micro, card = shape["batch"], this_card()
    config = TrainConfig(model=case.model, task="sst2", prompt_length=shape["prompt"],
                         batch_size=micro, max_length=shape["text"], ds_config="zero0_bf16")
    run = RunSpec(config, Resources(gpus=1))
    k = max(k for k in range(1, AUTO_PACK + 1) if pack_fits(run, k, card))
    ds, _ = load_ds_config("zero0_bf16")
    backbone = random_backbone(case.model, ds, device, shape["text"])
    prompts = StackedAdam(torch.randn(k, shape["prompt"], backbone.hidden_size,
                                      device=device) * 0.5)
    batches = [{key: v.to(device) for key, v in backbone.collate(
        rows(micro, shape["text"], seed), LABEL_WORDS).items()} for seed in range(k)]
    grads: list[torch.Tensor] = []

    def forward_backward() -> None:
        grads.clear()
        for row, batch in enumerate(batches):
            prompt = prompts.weight[row].detach().clone().requires_grad_(True)
            backbone.loss(prompt.unsqueeze(0).expand(micro, -1, -1), batch).mean().backward()
            grads.append(prompt.grad)

    def step() -> None:
        prompts.step([RowStep(row, grad, 0.3, 1e-5, 1.0) for row, grad in enumerate(grads)])

    seconds = _timed_steps(shape["steps"], 1, forward_backward, step, device)
    text, target = batches[0]["input_ids"].shape[1], batches[0]["target_ids"].shape[1]
    # As `pack_fits` plans it: one run's micro-batch in a forward, K prompts' optimizer state.
    one = model_memory(case.model, "bf16").estimate(
        RunShape("bf16", micro, shape["prompt"], text, target))
    planned = one.total + (k - 1) * one.optimizer
    flops = example_flops(case.model, "bf16", shape["prompt"], text, target).useful() * micro * k
    tokens = micro * k * (shape["prompt"] + text + target)
    return Result(case.name, case.kind, case.model, case.launcher, 0, micro, 1, False, k,
                  tokens / seconds, "tokens/s", seconds, flops, _mfu(flops, seconds),
                  _peak(device), planned / 1e9, LOAD_CHECK)


def generate_case(case: Case, shape: dict, device: torch.device) -> Result:
    from ptdist.distributed.ds_config import load_ds_config

    ds, _ = load_ds_config("zero0_bf16")
    backbone = random_backbone(case.model, ds, device, shape["text"])
    batch = {k: v.to(device) for k, v in
             backbone.collate(rows(shape["batch"], shape["text"]), None).items()}
    prompts = torch.randn(shape["batch"], shape["prompt"], backbone.hidden_size,
                          device=device, dtype=next(backbone.parameters()).dtype) * 0.5
    backbone.generate(prompts[:2], {k: v[:2] for k, v in batch.items()}, 2)  # warm-up
    _sync(device)
    t0 = time.perf_counter()
    texts = backbone.generate(prompts, batch, shape["new_tokens"])
    _sync(device)
    seconds = time.perf_counter() - t0
    generated = sum(len(backbone.tokenizer(t).input_ids) for t in texts)
    return Result(case.name, case.kind, case.model, case.launcher, 0, shape["batch"], 1, False,
                  1, generated / seconds, "generated tokens/s", seconds, None, None,
                  _peak(device), None, LOAD_CHECK)


def matrix_case(case: Case, shape: dict, device: torch.device) -> Result:
    from ptdist.tasks import get_task
    from ptdist.distributed.ds_config import load_ds_config
    from ptdist.scoring import predict

    ds, _ = load_ds_config("zero0_bf16")
    backbone = random_backbone(case.model, ds, device, shape["text"])
    sources = torch.randn(shape["prompts"], shape["prompt"], backbone.hidden_size,
                          device=device) * 0.5
    task, examples = get_task("sst2"), rows(shape["eval_rows"], shape["text"], seed=1)
    with torch.no_grad():
        predict(backbone, sources, task, examples[:2], shape["batch"] * 2, 2)  # warm-up
        _sync(device)
        t0 = time.perf_counter()
        predict(backbone, sources, task, examples, shape["batch"] * 2, 2)
        _sync(device)
    seconds = time.perf_counter() - t0
    return Result(case.name, case.kind, case.model, case.launcher, 0, shape["batch"] * 2, 1,
                  False, 1, len(sources) * len(examples) / seconds, "prompt-examples/s",
                  seconds, None, None, _peak(device), None, LOAD_CHECK)


def _timed_steps(steps: int, micro_steps: int, forward_backward, step,
                 device: torch.device) -> float:
    """Seconds of one optimizer step, the mean of ``steps`` after one to warm up."""
    seconds = []
    for i in range(steps + 1):
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(micro_steps):
            forward_backward()
            step()
        _sync(device)
        if i:
            seconds.append(time.perf_counter() - t0)
    return sum(seconds) / len(seconds)


def _ray_case(case: dict, shape: dict) -> dict:
    """What each worker of the Ray Train group runs: the case, in the worker's process."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    setup()
    return asdict(run_case(Case(**case), shape, device))


def on_ray(case: Case, shape: dict, device: torch.device) -> Result:
    """The case on a one-worker Ray Train group on a local Ray, as a multi-GPU run's group."""
    from ptdist.orchestration.execution.cluster import ray_session
    from ptdist.orchestration.execution.worker_group import on_worker_group
    from ptdist.orchestration.spec.sweep_spec import Resources
    from ptdist.store import Store

    gpus = 1 if device.type == "cuda" else 0
    with tempfile.TemporaryDirectory() as store, ray_session(None):
        result = on_worker_group(f"gpu_check {case.name}", _ray_case,
                                 {"case": asdict(case), "shape": shape},
                                 Resources(workers=1, gpus=gpus, cpus=2), Store(store))
    return Result(**result)


# --- the driver -----------------------------------------------------------------------------

def this_card():
    """The card of GPU 0 (``--peak-tflops`` overrides its peak); on CPU (``--smoke``) the card
    the check is sized for, an H100 SXM 80 GB, so the planner has one to plan on."""
    from ptdist.training.hardware import card, card_of_device

    found = None
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        found = card_of_device(props.name, props.total_memory)
    found = found or card("H100", 80)
    peak = os.environ.get("GPU_CHECK_PEAK_TFLOPS")
    return replace(found, peak_bf16=float(peak) * 1e12) if peak else found


def _mfu(flops: float, seconds: float) -> float | None:
    if not torch.cuda.is_available():
        return None
    return flops / seconds / this_card().peak("bf16")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _reset(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()


def _peak(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated() / 1e9 if device.type == "cuda" else None


def shape_of(smoke: bool, steps: int) -> dict:
    base = {"prompt": PROMPT, "text": TEXT, "batch": BATCH, "new_tokens": NEW_TOKENS,
            "prompts": 8, "eval_rows": 64}
    if smoke:
        base.update(SMOKE, prompts=2, eval_rows=4)
    return dict(base, steps=steps)


def child_command(case: Case, args, result: Path) -> list[str]:
    """How the case's process is started: python, or torchrun with one process (through
    `launch_on_loopback`). The case goes by its index: a command line naming torchrun would be
    taken for a user's launcher by the suite's watch over listening sockets, which then would
    not look at it."""
    script = ["--case", str(CASES.index(case)), "--result", str(result),
              "--steps", str(args.steps)] + (["--smoke"] if args.smoke else [])
    if case.launcher == "torchrun":
        return [sys.executable, str(HERE / "gpu_check.py"), LAUNCH, *script]
    return [sys.executable, str(HERE / "gpu_check.py"), *script]


def launch_on_loopback(script: list[str]) -> None:
    """torchrun with one process, every socket on 127.0.0.1. Its agent hosts the static
    rendezvous store, which torch binds to every interface (``::``); started first in this
    process on loopback (`serve_rendezvous`, multi-tenant), the agent's store serves from it,
    and the worker's gloo and NCCL sockets keep to loopback (`meet_at`, inherited)."""
    from torch.distributed.run import main as torchrun

    from ptdist.distributed.group import LOOPBACK, meet_at, serve_rendezvous

    port = serve_rendezvous(LOOPBACK, 1, timeout_s=SMOKE_TIMEOUT_S)
    meet_at(LOOPBACK, port)
    torchrun(["--nproc-per-node", "1", "--master-addr", LOOPBACK, "--master-port", str(port),
              str(HERE / "gpu_check.py"), *script])


def drive(args) -> dict:
    cases = [c for c in CASES if c.name in args.cases]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(HERE), str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]))
    if args.peak_tflops:
        env["GPU_CHECK_PEAK_TFLOPS"] = str(args.peak_tflops)
    done, t0 = [], time.time()
    with tempfile.TemporaryDirectory() as tmp:
        for case in cases:
            result = Path(tmp) / f"{case.name}.json"
            start = time.time()
            timeout = SMOKE_TIMEOUT_S if args.smoke else case.budget_s + args.slack_s
            try:
                proc = subprocess.run(child_command(case, args, result), env=env, text=True,
                                      capture_output=True, timeout=timeout)
                error = None if proc.returncode == 0 and result.exists() else \
                    (proc.stderr or proc.stdout)[-2000:]
            except subprocess.TimeoutExpired:
                error = f"timed out after {timeout} s"
            entry = json.loads(result.read_text()) if error is None else \
                {"case": case.name, "error": error}
            entry.update(wall_s=time.time() - start, budget_s=case.budget_s)
            done.append(entry)
            print(f"[gpu_check] {case.name}: "
                  + (f"{entry['per_s']:,.1f} {entry['unit']}" if error is None else "FAILED")
                  + f" in {entry['wall_s']:.0f} s", file=sys.stderr, flush=True)
    return {"machine": machine(), "card": this_card().name if torch.cuda.is_available() else
            None, "peak_bf16_tflops": this_card().peak_bf16 / 1e12
            if torch.cuda.is_available() else None, "smoke": args.smoke,
            "wall_s": time.time() - t0, "cases": done}


def default_out() -> Path:
    return Path(tempfile.gettempdir()) / f"gpu_check-{time.strftime('%Y%m%d-%H%M%S')}.json"


def main() -> None:
    if sys.argv[1:2] == [LAUNCH]:
        launch_on_loopback(sys.argv[2:])
        return
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", nargs="+", default=[c.name for c in CASES],
                   choices=[c.name for c in CASES])
    p.add_argument("--steps", type=int, default=3, help="timed steps per training case "
                                                        "(after one to warm up)")
    p.add_argument("--peak-tflops", type=float, default=None,
                   help="the card's dense bf16 peak (default: its datasheet's, by its name)")
    p.add_argument("--slack-s", type=int, default=30,
                   help="seconds a case may run past its budget before it is stopped")
    p.add_argument("--smoke", action="store_true",
                   help="CPU, the tiny T5 v1.1 preset for every model: checks the script")
    p.add_argument("--out", type=Path, default=None,
                   help="where the JSON goes (default: gpu_check-<time>.json in the system's "
                        "temporary folder)")
    p.add_argument("--case", type=int, help=argparse.SUPPRESS)  # the child: one case's index
    p.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()
    if not args.smoke and not torch.cuda.is_available():
        sys.exit("gpu_check: no GPU visible (CUDA_VISIBLE_DEVICES, driver?); --smoke runs the "
                 "script on CPU")
    setup()
    if args.case is not None:
        case = CASES[args.case]
        if args.smoke:
            case = replace(case, model=TINY)
        device = torch.device("cpu" if args.smoke else "cuda")
        shape = shape_of(args.smoke, args.steps)
        result = on_ray(case, shape, device) if case.launcher == "ray" else \
            run_case(case, shape, device)
        args.result.write_text(json.dumps(asdict(result)))
        return
    report = drive(args)
    out = args.out or default_out()
    out.write_text(json.dumps(report, indent=1))
    print(report["machine"])
    print(f"{'case':<24}{'model':<20}{'micro x acc':>12}{'ckpt':>5}{'K':>4}{'per s':>12} "
          f"{'unit':<18}{'MFU':>6}{'peak GB':>9}{'planned':>9}{'wall s':>8}")
    for c in report["cases"]:
        if "error" in c:
            print(f"{c['case']:<24}FAILED: {c['error'].strip().splitlines()[-1]}")
            continue
        mfu = f"{c['mfu']:.0%}" if c["mfu"] is not None else "-"
        peak = f"{c['peak_gb']:.1f}" if c["peak_gb"] is not None else "-"
        planned = f"{c['planned_gb']:.2f}" if c["planned_gb"] is not None else "-"
        print(f"{c['case']:<24}{c['model']:<20}{c['micro_batch']:>7} x {c['accumulation']:<2}"
              f"{'y' if c['checkpointing'] else 'n':>5}{c['pack']:>4}{c['per_s']:>12,.1f} "
              f"{c['unit']:<18}{mfu:>6}{peak:>9}{planned:>9}{c['wall_s']:>8.0f}")
    print(f"wall time {report['wall_s']:.0f} s; JSON: {out}")
    if any("error" in c for c in report["cases"]):
        sys.exit(1)


if __name__ == "__main__":
    main()
