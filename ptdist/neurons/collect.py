"""Capture the FFN activations of a model's stored prompts into the Parquet activation store,
in one process or as Ray tasks over chunks of prompts. Prompts already captured (same model,
protocol) are skipped, so a re-run only does what is missing."""

from __future__ import annotations

import sys
import time
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

import torch

from ptdist.errors import PtdistError
from ptdist.neurons.capture import PROTOCOLS, bare_rows, ffn_activations, ffn_sites
from ptdist.store.activations import ActivationWriter, activation_dir, captured
from ptdist.store.prompts import PromptStore
from ptdist.tasks import get_task, load_split


@dataclass
class CaptureResult:
    captured: int
    skipped: int
    folder: Path


def capture(model: str, store: PromptStore, *, tasks: list[str] | None = None,
            protocol: str = "prompt", examples: int = 32, data_dir: str | None = None,
            batch_size: int = 16, on_ray: bool = False, address: str | None = None,
            chunks: int = 2, cpus: float = 1, gpus: float = 0,
            flush_rows: int = 64, among: Collection[str] | None = None) -> CaptureResult:
    """Capture every stored prompt of ``model`` (of ``tasks``, and ``among`` these prompt
    ids, if given)."""
    if protocol not in PROTOCOLS:
        raise PtdistError(f"unknown protocol '{protocol}'; use one of: {', '.join(PROTOCOLS)}")
    names = None if tasks is None else {get_task(t).name for t in tasks}
    prompts = [m for m in store.manifests()
               if m["model"] == model and (names is None or m["task"] in names)
               and (among is None or m["id"] in among)]
    if not prompts:
        raise PtdistError(f"no prompts of model '{model}' in store {store.root}"
                          + (f" for task(s) {', '.join(sorted(names))}" if names else ""))
    done = captured(store.root, model, protocol)
    todo = [m for m in prompts if m["id"] not in done]
    job = dict(model=model, store_root=str(store.root), protocol=protocol, examples=examples,
               data_dir=data_dir, batch_size=batch_size, flush_rows=flush_rows)
    print(f"capture {model} ({protocol} protocol): {len(todo)} prompt(s) to capture, "
          f"{len(prompts) - len(todo)} already stored", file=sys.stderr, flush=True)
    if todo and on_ray:
        _capture_on_ray(todo, job, address, chunks, cpus, gpus)
    elif todo:
        capture_chunk(todo, **job)
    return CaptureResult(len(todo), len(prompts) - len(todo), activation_dir(store.root, model))


def capture_chunk(manifests: list[dict], *, model: str, store_root: str, protocol: str,
                  examples: int, data_dir: str | None, batch_size: int, flush_rows: int) -> int:
    """Capture ``manifests``' prompts with one copy of the model; rows stream to Parquet."""
    from ptdist.backbones import load_backbone
    from ptdist.training.evaluation import label_words

    store = PromptStore(store_root)
    backbone = load_backbone(model)
    sites = ffn_sites(backbone)
    config = backbone.model.config
    d_ff = getattr(config, "intermediate_size", None) or config.d_ff
    t0 = time.time()
    # The bare-prompt protocol reads one forward per prompt: batch_size prompts share one
    # (2.7x the prompts/s of one per forward on MiniLM-L6, benchmarks/capture.py).
    per_forward = batch_size if protocol == "prompt" else 1
    with ActivationWriter(store_root, model, d_ff, flush_rows) as writer:
        for start in range(0, len(manifests), per_forward):
            group = manifests[start:start + per_forward]
            prompts = [store.load(manifest["id"])[0] for manifest in group]
            if protocol == "prompt":
                captured = [(acts, 0) for acts in _bare_activations(backbone, prompts)]
            else:
                task = get_task(group[0]["config"]["task"])
                rows = load_split(task, "eval", limit=examples, data_dir=data_dir).to_list()
                captured = [(_mean_over_rows(backbone, prompts[0], rows,
                                             label_words(task, backbone), batch_size), len(rows))]
            for manifest, (acts, n) in zip(group, captured):
                writer.add(manifest["id"], manifest["task"], protocol, n, acts.numpy(),
                           [s.name for s in sites])
            done = start + len(group)
            if done // 10 > start // 10 or done == len(manifests):
                print(f"[capture] {done}/{len(manifests)} prompts, "
                      f"{done / (time.time() - t0):.1f} prompts/s", file=sys.stderr, flush=True)
    return len(manifests)


def _bare_activations(backbone, prompts: list[torch.Tensor]) -> list[torch.Tensor]:
    """Each prompt's activations with no text after it, the prompts as a batch dimension
    (prompts of other lengths in one group: one forward each)."""
    if len({prompt.shape for prompt in prompts}) > 1:
        return [acts for prompt in prompts for acts in _bare_activations(backbone, [prompt])]
    batch = backbone.collate(bare_rows(backbone) * len(prompts), None)
    return list(ffn_activations(backbone, torch.stack(prompts), batch))


def _mean_over_rows(backbone, prompt: torch.Tensor, rows: list[dict], words, batch_size: int):
    total = None
    for start in range(0, len(rows), batch_size):
        chunk = rows[start:start + batch_size]
        acts = ffn_activations(backbone, prompt.expand(len(chunk), -1, -1),
                               backbone.collate(chunk, words)).sum(0)
        total = acts if total is None else total + acts
    return total / len(rows)


def _capture_on_ray(todo: list[dict], job: dict, address: str | None, chunks: int,
                    cpus: float, gpus: float) -> None:
    import ray

    from ptdist.orchestration.cluster import ray_session

    parts = [todo[i::chunks] for i in range(min(chunks, len(todo)))]
    with ray_session(address):
        remote = ray.remote(_capture_in_worker).options(num_cpus=cpus, num_gpus=gpus)
        pending = [remote.remote(part, job) for part in parts]
        done, t0 = 0, time.time()
        while pending:
            finished, pending = ray.wait(pending)
            done += ray.get(finished[0])
            print(f"[capture +{time.time() - t0:.0f}s] {done}/{len(todo)} prompts captured "
                  f"({len(parts) - len(pending)}/{len(parts)} Ray tasks done)",
                  file=sys.stderr, flush=True)


def _capture_in_worker(manifests: list[dict], job: dict) -> int:
    from ptdist.runtime import quiet_libraries

    quiet_libraries()
    return capture_chunk(manifests, **job)
