"""TPT_model: prompt tuning on the target model initialised with a projected prompt of the
source model, beside vanilla prompt tuning, with the speed-up measured as for TPT_task
(`ptdist.transfer.tpt`). Each target task starts from the projection of the source model's
best prompt for that same task: one projected prompt, so one seed (the training settings')."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ptdist.projection.evaluation import project_prompts
from ptdist.store import Store
from ptdist.store.manifests import PromptManifest
from ptdist.store.prompts import best_per_task
from ptdist.tasks import get_task
from ptdist.training.config import TrainConfig
from ptdist.transfer.tpt import TptPlan, TptSource, check_lengths


def model_plan(store: Store, projector_id: str, targets: Sequence[str],
               prompts: Sequence[PromptManifest], train: dict[str, Any],
               **placement: Any) -> TptPlan:
    """TPT_model on each target: vanilla PT on the projector's target model, and PT from the
    projection of the source model's best prompt (among ``prompts``) for that task, written
    into the projector's folder now; ``placement``: data_dir, ds_config."""
    manifest = store.projectors.manifest(projector_id)
    names = [get_task(t).name for t in targets]
    sources = best_per_task([m for m in prompts if m.model == manifest.source_model], names,
                            f"of model '{manifest.source_model}' among the prompts given")
    project_prompts(store, projector_id, sources)
    seed = train.get("seed", TrainConfig.seed)
    source = TptSource(f"tpt_model from {manifest.source_model}",
                       f"prompt:{store.layout.projected_template(projector_id)}",
                       {(task, seed): m for task, m in sources.items()})
    return TptPlan(manifest.target_model, tuple(targets), (source,),
                   check_lengths([source], train), projector=projector_id, seeds=(seed,),
                   **placement)
