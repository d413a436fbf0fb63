"""The memory planner (`ptdist.training.memory`) beside DeepSpeed's estimators and beside memory
measured on this CPU.

For each model: its weights term beside DeepSpeed's ZeRO-3 and ZeRO-2 model-state estimators
(with the optimizer offloaded, what is left on a GPU is the weights: DeepSpeed's estimators
assume every parameter trains, ptdist trains only the prompt), the prompt's optimizer term
beside DeepSpeed's estimate for the prompt's parameter count, and then, measured in a fresh
process per model, one fp32 training step at the planned shapes:

- activations: the bytes autograd really keeps (saved-tensor hooks on real tensors, each
  tensor once, parameters not counted) vs the planner's count on the meta device;
- total: the weights' bytes plus the most bytes the step's own tensors held at once (the
  profiler's memory timeline: what a GPU's max_memory_allocated counts), vs the planner's
  total; and, for reference, the weights plus the step's peak RSS over the loaded model's (the
  kernel's high-water mark, reset once the model is loaded), which adds the allocator's slack.

`python benchmarks/memory.py [--models ...] [--batch-size 32] [--prompt-length 100]
[--text-length 128] [--json out.json]`
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

from common import MINILM, REPO, machine, setup

MODELS = ["tiny-roberta", "tiny-t5", "tiny-t5-v1_1", MINILM]
MB = 1e6


def _rss(field: str) -> int:
    """A field of /proc/self/status in bytes (VmRSS, VmHWM)."""
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def measure(model: str, batch: int, prompt_length: int, text_length: int) -> dict:
    """One fp32 training step of a prompt on ``model`` (AdamW over the prompt), in this
    process: what autograd keeps, and the step's peak memory."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    from ptdist.backbones import load_backbone

    setup()
    backbone = load_backbone(model, max_length=text_length)
    words = ["good", "bad"]
    rows = [{"text": " ".join(["the movie was good"] * text_length), "label": i % 2}
            for i in range(batch)]
    data = backbone.collate(rows, words)
    assert data["input_ids"].shape == (batch, text_length), data["input_ids"].shape
    prompt = torch.nn.Parameter(torch.randn(prompt_length, backbone.hidden_size))
    optimizer = torch.optim.AdamW([prompt], lr=0.1)
    weights = sum(p.numel() * p.element_size() for p in backbone.parameters())
    params = {id(p) for p in backbone.parameters()}
    kept: dict[int, torch.Tensor] = {}

    def pack(tensor):
        base = tensor._base if tensor._base is not None else tensor
        if id(base) not in params:
            kept[id(base)] = base
        return tensor

    loaded = _rss("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM, the peak RSS, to the RSS now
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True,
                 with_stack=True) as profiler:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            loss = backbone.loss(prompt.expand(batch, -1, -1), data).mean()
        saved = sum(t.numel() * t.element_size() for t in kept.values())
        kept.clear()
        loss.backward()
        optimizer.step()
    rss_peak = _rss("VmHWM") - loaded
    return {"model": model, "weights": weights, "saved": saved,
            "total": weights + _peak_of_new_tensors(profiler), "rss_total": weights + rss_peak}


def _peak_of_new_tensors(profiler) -> int:
    """The most bytes held at once by tensors the step created (what a GPU's
    max_memory_allocated counts above the model), from the profiler's memory timeline."""
    from torch.profiler._memory_profiler import Action

    live: dict = {}
    now = peak = 0
    for _, action, key, size in profiler._memory_profile().timeline:
        if action == Action.CREATE:
            live[key] = size
            now += size
        elif action == Action.DESTROY and key in live:
            now -= live.pop(key)
        peak = max(peak, now)
    return peak


def compare(model: str, run, measured: dict) -> dict:
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs

    from ptdist.training.memory import model_memory

    memory = model_memory(model, "fp32")
    bf16 = model_memory(model, "bf16")
    ours = memory.estimate(run)
    prompt = run.prompt_length * memory.backbone.hidden_size
    row = {"model": model, "parameters": memory.parameters,
           "largest_layer": memory.largest_layer, **measured,
           "planned_activations": ours.activations, "planned_total": ours.total}
    # DeepSpeed's estimators count 2 bytes per parameter (fp16/bf16) of weights on the GPU
    # when the optimizer is offloaded; ours in bf16 is the same term.
    for gpus in (1, 8):
        _, z3, _ = estimate_zero3_model_states_mem_needs(
            memory.parameters, memory.largest_layer, num_gpus_per_node=gpus,
            cpu_offload=True, cpu_offload_params=False)
        row[f"deepspeed_zero3_weights_{gpus}gpu"] = z3
        row[f"planned_zero3_weights_{gpus}gpu"] = bf16.estimate(
            _bf16(run), gpus, zero_stage=3).weights
    _, z2 = estimate_zero2_model_states_mem_needs(memory.parameters, num_gpus_per_node=1,
                                                  cpu_offload=True)
    row["deepspeed_zero2_weights"] = z2
    row["planned_zero0_weights"] = bf16.estimate(_bf16(run)).weights
    # The prompt as the one trained parameter, bf16, ZeRO-2 on one GPU (no offload).
    _, z2_prompt = estimate_zero2_model_states_mem_needs(prompt, num_gpus_per_node=1,
                                                        cpu_offload=False)
    row["deepspeed_prompt_optimizer"] = z2_prompt
    row["planned_prompt_optimizer"] = bf16.estimate(_bf16(run), 1, zero_stage=2).optimizer
    return row


def _bf16(run):
    from dataclasses import replace

    return replace(run, precision="bf16")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=MODELS)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--prompt-length", type=int, default=100)
    p.add_argument("--text-length", type=int, default=128)
    p.add_argument("--measure", help=argparse.SUPPRESS)  # the child process's model
    p.add_argument("--json", default=None)
    args = p.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure, args.batch_size, args.prompt_length,
                                 args.text_length)))
        return
    from ptdist.training.memory import RunShape

    setup()
    # The measured batch repeats one text: no padding, so no attention mask (docs/scale.md).
    run = RunShape("fp32", args.batch_size, args.prompt_length, args.text_length, padding=False)
    rows = []
    for model in args.models:
        child = subprocess.run(
            [sys.executable, __file__, "--measure", model, "--batch-size", str(args.batch_size),
             "--prompt-length", str(args.prompt_length), "--text-length",
             str(args.text_length)], capture_output=True, text=True, cwd=REPO, check=True)
        rows.append(compare(model, run, json.loads(child.stdout.strip().splitlines()[-1])))
    print(machine())
    print(f"one fp32 step, micro-batch {args.batch_size}, prompt {args.prompt_length}, text "
          f"{args.text_length} tokens; MB = 1e6 bytes")
    print(f"{'model':<32}{'act. meas.':>11}{'planned':>9}{'ratio':>7}{'total meas.':>12}"
          f"{'planned':>9}{'ratio':>7}{'RSS total':>11}")
    for r in rows:
        print(f"{r['model']:<32}{r['saved'] / MB:>11.1f}{r['planned_activations'] / MB:>9.1f}"
              f"{r['planned_activations'] / r['saved']:>7.2f}{r['total'] / MB:>12.1f}"
              f"{r['planned_total'] / MB:>9.1f}{r['planned_total'] / r['total']:>7.2f}"
              f"{r['rss_total'] / MB:>11.1f}")
    print(f"\n{'model':<32}{'ZeRO-3 weights/GPU: DeepSpeed':>30}{'planned':>10}"
          f"{'ZeRO-2: DeepSpeed':>19}{'planned':>10}{'prompt optim.: DS':>19}{'planned':>10}")
    for r in rows:
        print(f"{r['model']:<32}{r['deepspeed_zero3_weights_8gpu'] / MB:>30.2f}"
              f"{r['planned_zero3_weights_8gpu'] / MB:>10.2f}"
              f"{r['deepspeed_zero2_weights'] / MB:>19.2f}{r['planned_zero0_weights'] / MB:>10.2f}"
              f"{r['deepspeed_prompt_optimizer'] / MB:>19.3f}"
              f"{r['planned_prompt_optimizer'] / MB:>10.3f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
