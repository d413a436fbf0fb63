"""TPT_model: prompt tuning on the target model initialised with a projected prompt of the
source model, beside vanilla prompt tuning, with the speed-up measured as for TPT_task
(`ptdist.transfer.tpt`). Each target task starts from the projection of the source model's
best prompt for that same task."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from ptdist.projection.evaluation import project_prompts
from ptdist.store.projectors import ProjectorStore
from ptdist.store.prompts import PromptStore
from ptdist.tasks import get_task
from ptdist.transfer.selection import best_prompts
from ptdist.transfer.tpt import TptResult, TptSource, tpt_sweep


def run_tpt_model(store_root: str, projector_id: str, targets: list[str], train: dict,
                  among: Collection[str] | None = None, **sweep: Any) -> TptResult:
    """``train``: the runs' settings (steps, eval_every, lr, seed...); ``among``: the prompt
    ids the source prompts are chosen from (default: the whole store); ``sweep``: data_dir,
    ds_config, resources, address. Results under the projector's folder, ``tpt/<target>/``."""
    projectors, prompts = ProjectorStore(store_root), PromptStore(store_root)
    manifest = projectors.manifest(projector_id)
    sources = best_prompts(prompts, manifest["source_model"], targets, among)
    files = project_prompts(store_root, projector_id, targets, among)
    folder = next(iter(files.values())).parent
    source = TptSource(f"tpt_model from {manifest['source_model']}",
                       f"prompt:{folder}/{{task}}.safetensors",
                       {get_task(t).name: sources[get_task(t).name] for t in targets})
    return tpt_sweep(manifest["target_model"], targets, [source], prompts, train,
                     projectors.folder(projector_id) / "tpt", f"tpt-model-{projector_id}",
                     **sweep)
