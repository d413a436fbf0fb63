"""Every path under the store root, in one place. Nothing else in ptdist builds a path under
the root: a stage asks the layout where its artifact lives.

    prompts/<id>/prompt.safetensors, manifest.json      trained prompts (`PromptStore`)
    runs/<id>/, runs/projector-<id>/                    checkpoints of runs in progress
    projectors/<id>/projector.safetensors, manifest.json, eval.parquet,
                    projected/<task>.safetensors, tpt/<target>/   (`ProjectorStore`)
    activations/model=<model>/task=<t>/layer=<i>/       FFN activations (`activations.py`)
    transfer/<model>/matrix.parquet, columns/, tpt/<target>/   zero-shot matrix, TPT_task
    neurons/<model>/indicators.parquet, correlation.parquet, embedding_*.parquet
    sweeps/<name>.parquet, cross_model/<name>.parquet   one table per sweep / pair graph
    pipeline/<study>/<job>.json, costs.parquet          stamps of finished study stages, costs
    reports/<study>/                                    a study's report
    ray/tune, ray/train                                 Ray's own records (and
                                                        ray/train/<run>.started)
    run.lock                                            held by the sweep or study writing
                                                        into the store (`run_lock.py`)

Names become one path segment each, so no name can reach outside the root:
- model names (hub ids such as ``google/t5-v1_1-xxl``, folders, ``pkg:`` references), task and
  job names hold ``/`` and other characters by nature: `segment` maps them to one safe segment;
- the names a user picks only to name files (a sweep's or study's ``name``) must already be one
  (`is_plain_name`): the spec reader refuses another with a clear error rather than writing
  under a name the user did not choose (two names that map to one segment would share a file).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path


TPT_CURVES, TPT_SUMMARY, TPT_FIGURE = "curves.parquet", "summary.parquet", "curves.png"


PLAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")
_MAX_SEGMENT = 100


def is_plain_name(name: str) -> bool:
    """One path segment as it is: letters, digits, ``.``, ``_``, ``-``, starting with a letter
    or digit (so never ``.``, ``..`` or hidden), at most 100 characters."""
    return PLAIN_NAME.fullmatch(name) is not None


def segment(name: str) -> str:
    """A name (model, task, sweep, job) as one safe path segment: no separator, never ``.`` or
    ``..``, never hidden, and short enough for any file system (a long name keeps its start and
    a digest of the whole)."""
    key = re.sub(r"[^\w.-]+", "_", name).strip("_.") or "_"
    if len(key) > _MAX_SEGMENT:
        key = f"{key[:_MAX_SEGMENT - 17]}-{hashlib.sha256(name.encode()).hexdigest()[:16]}"
    return key


@dataclass(frozen=True)
class StoreLayout:
    root: Path

    # --- prompts and projectors -----------------------------------------------------------
    def prompt_dir(self, prompt_id: str) -> Path:
        return self.root / "prompts" / segment(prompt_id)

    def prompts_dir(self) -> Path:
        return self.root / "prompts"

    def run_dir(self, prompt_id: str) -> Path:
        return self.root / "runs" / segment(prompt_id)

    def projectors_dir(self) -> Path:
        return self.root / "projectors"

    def projector_dir(self, projector_id: str) -> Path:
        return self.projectors_dir() / segment(projector_id)

    def projector_run_dir(self, projector_id: str) -> Path:
        return self.root / "runs" / f"projector-{segment(projector_id)}"

    def projector_eval(self, projector_id: str) -> Path:
        return self.projector_dir(projector_id) / "eval.parquet"

    def projected_prompt(self, projector_id: str, task: str) -> Path:
        return self.projector_dir(projector_id) / "projected" / f"{segment(task)}.safetensors"

    def projected_template(self, projector_id: str) -> str:
        """The projected prompt files of a projector as a ``prompt:`` init with ``{task}``."""
        return str(self.projector_dir(projector_id) / "projected" / "{task}.safetensors")

    # --- per-model analysis ---------------------------------------------------------------
    def activations(self, model: str) -> Path:
        return self.root / "activations" / f"model={segment(model)}"

    def transfer_dir(self, model: str) -> Path:
        return self.root / "transfer" / segment(model)

    def matrix(self, model: str) -> Path:
        return self.transfer_dir(model) / "matrix.parquet"

    def matrix_column(self, model: str, target: str) -> Path:
        """One target's column of the matrix, scored by a job of its own."""
        return self.transfer_dir(model) / "columns" / f"{segment(target)}.parquet"

    def matrix_figure(self, model: str) -> Path:
        return self.transfer_dir(model) / "matrix.png"

    def tpt_dir(self, target: str, model: str | None = None,
                projector: str | None = None) -> Path:
        """TPT results on the ``target`` task: TPT_task of ``model``, or TPT_model of the
        ``projector``'s prompts; it holds `TPT_CURVES`, `TPT_SUMMARY` and `TPT_FIGURE`."""
        owner = self.projector_dir(projector) if projector else self.transfer_dir(model)
        return owner / "tpt" / segment(target)

    def neurons_dir(self, model: str) -> Path:
        return self.root / "neurons" / segment(model)

    def indicators(self, model: str) -> Path:
        return self.neurons_dir(model) / "indicators.parquet"

    def indicator_figure(self, model: str, indicator: str) -> Path:
        return self.neurons_dir(model) / f"indicators_{segment(indicator)}.png"

    def correlation(self, model: str) -> Path:
        return self.neurons_dir(model) / "correlation.parquet"

    def embedding_indicators(self, model: str) -> Path:
        """Indicators of prompts alone (`ptdist neurons embedding`), no activations needed."""
        return self.neurons_dir(model) / "embedding_indicators.parquet"

    def embedding_correlation(self, model: str) -> Path:
        return self.neurons_dir(model) / "embedding_correlation.parquet"

    def layerwise_figure(self, model: str) -> Path:
        return self.neurons_dir(model) / "layerwise_ON.png"

    # --- sweeps, studies and Ray ----------------------------------------------------------
    def run_lock(self) -> Path:
        return self.root / "run.lock"

    def sweep_table(self, name: str) -> Path:
        return self.root / "sweeps" / f"{segment(name)}.parquet"

    def cross_model_table(self, name: str) -> Path:
        return self.root / "cross_model" / f"{segment(name)}.parquet"

    def stamp(self, study: str, job_id: str) -> Path:
        return self.root / "pipeline" / segment(study) / f"{segment(job_id)}.json"

    def job_costs(self, study: str) -> Path:
        """What each job of a study cost when it last ran (`JobCostRow`)."""
        return self.root / "pipeline" / segment(study) / "costs.parquet"

    def report_dir(self, study: str) -> Path:
        return self.root / "reports" / segment(study)

    def ray_dir(self, what: str) -> Path:
        """Ray Tune's (``tune``) or Ray Train's (``train``) own records."""
        return self.root / "ray" / segment(what)

    def group_started(self, run_name: str) -> Path:
        """The mark the first worker of Ray Train run ``run_name`` leaves when its group has
        started (what the job waiting for it watches)."""
        return self.ray_dir("train") / f"{segment(run_name)}.started"

    def group_result(self, run_name: str) -> Path:
        """The summary the first worker of Ray Train run ``run_name`` returned (JSON), read by
        the job that started the group."""
        return self.ray_dir("train") / f"{segment(run_name)}.result.json"
