"""Capture the FFN activations of a model's stored prompts into the Parquet activation store,
with one copy of the model in this process. Prompts already captured (same model, protocol) are
skipped, so a re-run only does what is missing, and what a killed capture left is cleaned first
(`activations.repair`): re-running the command repairs the store. How the prompts of a study
are split over jobs is the orchestration's choice."""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import torch

from ptdist.backbones import dtype_of
from ptdist.distributed.group import Shard, from_leader, gather_lists, init_distributed, leads
from ptdist.errors import PtdistError
from ptdist.neurons.capture import PROTOCOLS, bare_rows, ffn_activations, ffn_sites
from ptdist.progress import Progress
from ptdist.scoring import inference_precision, load
from ptdist.store import Store
from ptdist.store.activations import ActivationWriter, captured, repair
from ptdist.store.manifests import PromptManifest
from ptdist.tasks import get_task, load_split
from ptdist.training.config import TrainConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CaptureSettings:
    """How FFN activations are captured (`ptdist.capture`; docs/neurons.md): with the prompt
    alone (the paper's protocol) or averaged over ``examples`` of its task (``data``)."""

    protocol: str = "prompt"  # prompt: no task input (the paper's); data: mean over examples
    examples: int = 32  # N for the data protocol
    batch_size: int = 16  # prompts per forward (prompt protocol), examples (data protocol)
    data_dir: str | None = None
    flush_rows: int = 64
    commit_every: int = 256  # prompts made visible at once (what a killed capture redoes)
    precision: str | None = None  # bf16 | fp32; None: the prompts' own (inference_precision)
    device: str | None = None  # None: the GPU the job holds, else the CPU
    # None: the whole model in this process; a DeepSpeed config: partitioned over the process
    # group this runs in (`scoring.load`). Not in repr (a stage's stamp key): how it
    # runs, not what it computes.
    ds_config: str | None = field(default=None, repr=False)

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
    """Capture the activations of ``prompts`` (one model's) that are not captured yet. With
    ``settings.ds_config``, call on every rank of a process group: the model is partitioned
    over it, the work is split between the ranks and rank 0 writes."""
    if not prompts:
        raise PtdistError("no prompts to capture")
    models = sorted({m.model for m in prompts})
    if len(models) > 1:
        raise PtdistError(f"capture reads one model's prompts at a time; got {models}")
    model = models[0]
    if settings.ds_config is not None:
        init_distributed()  # the ranks agree on what to capture before the model loads
    todo = from_leader(partial(_todo, store, model, prompts, settings.protocol))
    if todo:
        _capture(store, model, todo, settings)
    return CaptureResult(len(todo), len(prompts) - len(todo), store.layout.activations(model))


def _todo(store: Store, model: str, prompts: Sequence[PromptManifest],
          protocol: str) -> list[PromptManifest]:
    """The ``prompts`` not captured yet, after cleaning what an interrupted capture left."""
    cleaned = repair(store.layout, model)
    if cleaned:
        log.info(f"capture {model}: removed {cleaned} file(s) left by an interrupted capture")
    done = captured(store.layout, model, protocol)
    todo = [m for m in prompts if m.id not in done]
    log.info(f"capture {model} ({protocol} protocol): {len(todo)} prompt(s) to capture, "
             f"{len(prompts) - len(todo)} already stored")
    return todo


def _capture(store: Store, model: str, manifests: list[PromptManifest],
             settings: CaptureSettings) -> None:
    """Capture ``manifests``' prompts with one copy of the model (or one partitioned over the
    group), in their precision on the job's device; rows stream to Parquet (activations in
    fp32 whatever the precision), written by rank 0."""
    precision = inference_precision(manifests, settings.precision)
    with load(model, TrainConfig.max_length, precision, settings.device,
              settings.ds_config) as backbone, \
            _writer(store, model, backbone, settings) as writer, \
            Progress(f"capture {model}", len(manifests), "prompt", log) as progress:
        device = next(backbone.parameters()).device
        names = [s.name for s in ffn_sites(backbone)]
        done = 0
        for group in _groups(manifests, settings, Shard.of_group().world):
            if settings.protocol == "prompt":
                acts = [(a, 0) for a in _bare_activations(
                    backbone, [store.prompts.tensor(m.id).to(device) for m in group])]
            else:
                task = get_task(group[0].task_ref)
                rows = load_split(task, "eval", limit=settings.examples,
                                  data_dir=settings.data_dir).to_list()
                acts = [(_mean_over_rows(backbone, store.prompts.tensor(group[0].id).to(device),
                                         rows, task.words_for(backbone.kind),
                                         settings.batch_size), len(rows))]
            done += len(group)
            if writer is None:
                continue
            for manifest, (values, n) in zip(group, acts):
                writer.add(manifest.id, manifest.task, settings.protocol, n, values.numpy(),
                           names)
            progress.update(done)


def _writer(store: Store, model: str, backbone,
            settings: CaptureSettings) -> AbstractContextManager[ActivationWriter | None]:
    """The activation writer on rank 0 (or a process alone); nothing on the other ranks."""
    if not leads():
        return nullcontext()
    config = backbone.model.config
    d_ff = getattr(config, "intermediate_size", None) or config.d_ff
    return ActivationWriter(store.layout, model, d_ff, settings.flush_rows,
                            settings.commit_every)


def _groups(manifests: list[PromptManifest], settings: CaptureSettings,
            world: int) -> Iterator[list[PromptManifest]]:
    """The prompts in the groups the model reads at once: under the ``prompt`` protocol
    ``batch_size`` prompts per forward of each rank (a bare prompt's forward reads several:
    2.7x the prompts/s of one per forward on MiniLM-L6, benchmarks/capture.py), prompts of
    one shape together; under ``data``, one prompt at a time (its examples are the batch)."""
    if settings.protocol != "prompt":
        yield from ([m] for m in manifests)
        return
    size = settings.batch_size * world
    for _, same in itertools.groupby(sorted(manifests, key=lambda m: tuple(m.shape)),
                                     key=lambda m: tuple(m.shape)):
        same = list(same)
        yield from (same[i:i + size] for i in range(0, len(same), size))


def activation_states(backbone, prompts: list[torch.Tensor]) -> list[np.ndarray]:
    """Each prompt's activation states (activation > 0, ``[layers, d_ff]`` bool) under the
    ``prompt`` protocol, read as `capture` reads them but not stored: for prompts that are not
    the store's own (a probe, a prompt file). Prompts of one shape share a forward."""
    device = next(backbone.parameters()).device
    states: list[np.ndarray] = [np.empty(0)] * len(prompts)
    for shape in dict.fromkeys(tuple(p.shape) for p in prompts):
        same = [k for k, p in enumerate(prompts) if tuple(p.shape) == shape]
        acts = _bare_activations(backbone, [prompts[k].to(device) for k in same])
        for k, values in zip(same, acts):
            states[k] = (values > 0).numpy()
    return states


def _bare_activations(backbone, prompts: list[torch.Tensor]) -> list[torch.Tensor]:
    """Each prompt's activations with no text after it (on the CPU), the prompts (of one
    shape) as a batch dimension. In a group each rank reads a slice of them, every rank the
    same number (the last slice padded), and the ranks' activations are gathered."""
    indices, real = Shard.of_group().rows(len(prompts))
    mine = [prompts[i] for i in indices]
    batch = _on(backbone.collate(bare_rows(backbone) * len(mine), None), mine[0].device)
    acts = ffn_activations(backbone, torch.stack(mine), batch).cpu()
    return [a for _, a in sorted(gather_lists(list(zip(indices[:real], acts[:real]))),
                                 key=lambda pair: pair[0])]


def _mean_over_rows(backbone, prompt: torch.Tensor, rows: list[dict], words,
                    batch_size: int) -> torch.Tensor:
    """The prompt's activations averaged over ``rows`` (on the CPU). In a group each rank
    sums its slice of the rows (padded so that every rank runs the same forwards; the padding
    is not summed) and the ranks' sums are added up."""
    indices, real = Shard.of_group().rows(len(rows))
    total = None
    for start in range(0, len(indices), batch_size):
        chunk = [rows[i] for i in indices[start:start + batch_size]]
        acts = ffn_activations(backbone, prompt.expand(len(chunk), -1, -1),
                               _on(backbone.collate(chunk, words), prompt.device))
        acts = acts[:max(0, real - start)].sum(0)
        total = acts if total is None else total + acts
    return sum(gather_lists([total.cpu()])) / len(rows)


def _on(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device) for k, v in batch.items()}
