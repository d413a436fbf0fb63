"""Cross-model transfer of a projector: the source model's prompts, projected, zero-shot on the
target model.

For each task the table (`StoreLayout.projector_eval`) holds the projected prompt's score, the
score of the same source prompt through the untrained projector (the projector's starting point,
same seed), and the target model's own prompt's score, all on the same evaluation rows; relative
= projected / own x 100, as in the zero-shot transfer matrix. ``in_training`` says whether the
projector trained on the task, ``type_in_training`` whether on a task of its type (the paper
tests task-tuned projectors on unseen tasks of the training tasks' type). The distance columns
are the mean squared error to the target's own prompt: on tasks outside the training set they
are the held-out distance. On the same rows, the majority class's score and two paired
row-bootstrap intervals (`ptdist.transfer.baselines.margin`): the projected prompt against the
untrained projector's, and against the majority class. They are about this projector run on
these rows; how much a projector's training varies needs several projector runs (seeds).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import torch

from ptdist.distributed.group import leads
from ptdist.projection.projector import Projector
from ptdist.projection.modes import initial_projector, shape_of
from ptdist.scoring import EvalSettings, Scored, inference_precision, load, score
from ptdist.store import Store
from ptdist.store.manifests import ProjectorManifest, PromptManifest
from ptdist.store.prompts import best_per_task, write_prompt_file
from ptdist.store.results import ProjectorEvalRow
from ptdist.store.tables import read_records, write_records
from ptdist.tasks import get_task
from ptdist.transfer.baselines import majority_baseline, margin

log = logging.getLogger(__name__)


def trained_projector(store: Store, projector_id: str) -> tuple[Projector, ProjectorManifest]:
    manifest = store.projectors.manifest(projector_id)
    projector = Projector(shape_of(manifest))
    projector.load_state_dict(store.projectors.weights(projector_id))
    return projector.eval(), manifest


def project_prompts(store: Store, projector_id: str,
                    sources: dict[str, PromptManifest]) -> dict[str, Path]:
    """Each task's source prompt (``{task name: prompt}``), projected, as a prompt file in the
    projector's folder (a ``prompt:PATH`` init starts TPT_model from one)."""
    projector, _ = trained_projector(store, projector_id)
    paths = {}
    for task, source in sources.items():
        with torch.no_grad():
            projected = projector(store.prompts.tensor(source.id))
        paths[task] = write_prompt_file(store.layout.projected_prompt(projector_id, task),
                                        projected, {"projector": projector_id,
                                                    "source_prompt": source.id})
    return paths


def evaluate_projector(store: Store, projector_id: str, tasks: Sequence[str],
                       prompts: Sequence[PromptManifest],
                       settings: EvalSettings) -> list[ProjectorEvalRow]:
    """Score the projected prompts of ``tasks`` (names or YAML paths) on the target model,
    both models' best prompts taken from ``prompts``; stores the table and returns its rows."""
    projector, manifest = trained_projector(store, projector_id)
    untrained = initial_projector(projector.shape, manifest.config["seed"]).eval()
    names = [get_task(t).name for t in tasks]
    # Every missing prompt of either model is named before the target model is loaded.
    where = "of model '{}' among the prompts given"
    sources = best_per_task([m for m in prompts if m.model == manifest.source_model], names,
                            where.format(manifest.source_model))
    owns = best_per_task([m for m in prompts if m.model == manifest.target_model], names,
                         where.format(manifest.target_model))
    rows = []
    with load(manifest.target_model, max(m.max_length for m in owns.values()),
              inference_precision(list(owns.values()), settings.precision), settings.device,
              settings.ds_config) as backbone:
        if leads():  # the projected prompts' files, which TPT_model starts from
            project_prompts(store, projector_id, sources)
        for ref, name in zip(tasks, names):
            source, own = sources[name], owns[name]
            with torch.no_grad():
                candidates = torch.stack([projector(store.prompts.tensor(source.id)),
                                          untrained(store.prompts.tensor(source.id)),
                                          store.prompts.tensor(own.id)])
            scored = score(backbone, ref, candidates, data_dir=settings.data_dir,
                           limit=settings.eval_limit, batch_size=settings.batch_size,
                           max_new_tokens=settings.max_new_tokens)
            rows.append(_row(projector_id, manifest, projector.shape.variant, ref, source, own,
                             candidates, scored))
    if leads():
        write_records(store.layout.projector_eval(projector_id), ProjectorEvalRow, rows)
    return rows


def _row(projector_id: str, manifest: ProjectorManifest, variant: str, ref: str,
         source: PromptManifest, own: PromptManifest, candidates: torch.Tensor,
         scored: Scored) -> ProjectorEvalRow:
    """The row of one task: the projected, untrained-projected and own prompt (``candidates``,
    in that order) scored."""
    record = get_task(ref)
    metric = record.primary_metric
    projected, base, reference = (s[metric] for s in scored.metrics)
    refs, predictions = scored.references, scored.predictions
    gain = margin(record, metric, predictions[0], predictions[1], refs)
    majority, chance = majority_baseline(record, metric, refs)
    above = (None, None) if majority is None else \
        margin(record, metric, predictions[0], majority, refs).bounds()
    log.info(f"{record.name}: projected {projected:.2f} / untrained projector {base:.2f} / "
             f"own prompt {reference:.2f} ({metric})")
    return ProjectorEvalRow(
        projector=projector_id, source_model=manifest.source_model,
        target_model=manifest.target_model, mode=manifest.mode, variant=variant,
        task=record.name, task_type=record.type,
        in_training=record.name in {get_task(t).name for t in manifest.tasks},
        type_in_training=record.type in {get_task(t).type for t in manifest.tasks},
        source_prompt=source.id, target_prompt=own.id,
        metric=metric, score=projected, untrained_score=base, own_score=reference,
        relative=100.0 * projected / reference if reference else None,
        distance=_mse(candidates[0], candidates[2]),
        untrained_distance=_mse(candidates[1], candidates[2]),
        eval_examples=len(refs),
        chance=chance,
        gain_low=gain.bounds()[0], gain_high=gain.bounds()[1],
        above_chance_low=above[0], above_chance_high=above[1])


def evaluated(store: Store, projector_id: str, tasks: Sequence[str]) -> bool:
    """Whether the projector's table already covers ``tasks``."""
    path = store.layout.projector_eval(projector_id)
    if not path.exists():
        return False
    done = {r.task for r in read_records(path, ProjectorEvalRow)}
    return all(get_task(t).name in done for t in tasks)


def _mse(a: torch.Tensor, b: torch.Tensor) -> float:
    return torch.nn.functional.mse_loss(a.float(), b.float()).item()
