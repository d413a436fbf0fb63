"""Capture the FFN activations of a model's stored prompts into the Parquet activation store,
with one copy of the model in this process. Prompts already captured (same model, protocol) are
skipped, so a re-run only does what is missing, and what a killed capture left is cleaned first
(`activations.repair`): re-running the command repairs the store. How the prompts of a study
are split over jobs is the orchestration's choice."""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from ptdist.backbones import dtype_of
from ptdist.errors import PtdistError
from ptdist.neurons.capture import PROTOCOLS, bare_rows, ffn_activations, ffn_sites
from ptdist.store import Store
from ptdist.store.activations import ActivationWriter, captured, repair
from ptdist.store.manifests import PromptManifest
from ptdist.tasks import get_task, load_split
from ptdist.training.evaluation import eval_backbone, inference_precision


@dataclass(frozen=True)
class CaptureSettings:
    protocol: str = "prompt"  # prompt: no task input (the paper's); data: mean over examples
    examples: int = 32  # N for the data protocol
    batch_size: int = 16  # prompts per forward (prompt protocol), examples (data protocol)
    data_dir: str | None = None
    flush_rows: int = 64
    commit_every: int = 256  # prompts made visible at once (what a killed capture redoes)
    precision: str | None = None  # bf16 | fp32; None: the prompts' own (inference_precision)
    device: str | None = None  # None: the GPU the job holds, else the CPU

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise PtdistError(f"unknown protocol '{self.protocol}'; use one of: "
                              f"{', '.join(PROTOCOLS)}")
        if self.precision is not None:
            dtype_of(self.precision)


@dataclass
class CaptureResult:
    captured: int
    skipped: int
    folder: Path


def capture(store: Store, prompts: Sequence[PromptManifest],
            settings: CaptureSettings) -> CaptureResult:
    """Capture the activations of ``prompts`` (one model's) that are not captured yet."""
    if not prompts:
        raise PtdistError("no prompts to capture")
    models = sorted({m.model for m in prompts})
    if len(models) > 1:
        raise PtdistError(f"capture reads one model's prompts at a time; got {models}")
    model = models[0]
    cleaned = repair(store.layout, model)
    if cleaned:
        print(f"capture {model}: removed {cleaned} file(s) left by an interrupted capture",
              file=sys.stderr, flush=True)
    done = captured(store.layout, model, settings.protocol)
    todo = [m for m in prompts if m.id not in done]
    print(f"capture {model} ({settings.protocol} protocol): {len(todo)} prompt(s) to capture, "
          f"{len(prompts) - len(todo)} already stored", file=sys.stderr, flush=True)
    if todo:
        _capture(store, model, todo, settings)
    return CaptureResult(len(todo), len(prompts) - len(todo), store.layout.activations(model))


def _capture(store: Store, model: str, manifests: list[PromptManifest],
             settings: CaptureSettings) -> None:
    """Capture ``manifests``' prompts with one copy of the model, in their precision on the
    job's device; rows stream to Parquet (activations in fp32 whatever the precision)."""
    backbone = eval_backbone(model, precision=inference_precision(manifests, settings.precision),
                             device=settings.device)
    device = next(backbone.parameters()).device
    sites = ffn_sites(backbone)
    config = backbone.model.config
    d_ff = getattr(config, "intermediate_size", None) or config.d_ff
    t0 = time.time()
    # The bare-prompt protocol reads one forward per prompt: batch_size prompts share one
    # (2.7x the prompts/s of one per forward on MiniLM-L6, benchmarks/capture.py).
    per_forward = settings.batch_size if settings.protocol == "prompt" else 1
    with ActivationWriter(store.layout, model, d_ff, settings.flush_rows,
                          settings.commit_every) as writer:
        for start in range(0, len(manifests), per_forward):
            group = manifests[start:start + per_forward]
            prompts = [store.prompts.tensor(m.id).to(device) for m in group]
            if settings.protocol == "prompt":
                acts = [(a, 0) for a in _bare_activations(backbone, prompts)]
            else:
                task = get_task(group[0].task_ref)
                rows = load_split(task, "eval", limit=settings.examples,
                                  data_dir=settings.data_dir).to_list()
                acts = [(_mean_over_rows(backbone, prompts[0], rows,
                                         task.words_for(backbone.kind), settings.batch_size),
                         len(rows))]
            for manifest, (values, n) in zip(group, acts):
                writer.add(manifest.id, manifest.task, settings.protocol, n,
                           values.cpu().numpy(), [s.name for s in sites])
            done = start + len(group)
            if done // 10 > start // 10 or done == len(manifests):
                print(f"[capture] {done}/{len(manifests)} prompts, "
                      f"{done / (time.time() - t0):.1f} prompts/s", file=sys.stderr, flush=True)


def _bare_activations(backbone, prompts: list[torch.Tensor]) -> list[torch.Tensor]:
    """Each prompt's activations with no text after it, the prompts as a batch dimension
    (prompts of other lengths in one group: one forward each)."""
    if len({prompt.shape for prompt in prompts}) > 1:
        return [acts for prompt in prompts for acts in _bare_activations(backbone, [prompt])]
    batch = _on(backbone.collate(bare_rows(backbone) * len(prompts), None), prompts[0].device)
    return list(ffn_activations(backbone, torch.stack(prompts), batch))


def _mean_over_rows(backbone, prompt: torch.Tensor, rows: list[dict], words, batch_size: int):
    total = None
    for start in range(0, len(rows), batch_size):
        chunk = rows[start:start + batch_size]
        acts = ffn_activations(backbone, prompt.expand(len(chunk), -1, -1),
                               _on(backbone.collate(chunk, words), prompt.device)).sum(0)
        total = acts if total is None else total + acts
    return total / len(rows)


def _on(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device) for k, v in batch.items()}
