"""`recommend`: the candidate source prompts for a task that has no prompt yet, ranked by the
rule of `ptdist.recommend.ranking`, with the signals each rank rests on; and the short probe
run the indicator signal compares them with.

The probe and the TPT runs that may follow are trained with the settings of the store's own
prompts of the model (the study's: `study_settings`), so that they compare with them.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ptdist.backbones import Backbone
from ptdist.recommend.candidates import Candidate
from ptdist.recommend.ranking import (IndicatorChoice, ZeroShot, can_capture, choose_indicator,
                                      probe_values, rank_candidates, zero_shot)
from ptdist.scoring import EvalSettings, inference_precision, load
from ptdist.store import Store
from ptdist.store.manifests import PromptManifest
from ptdist.store.results import RecommendRow
from ptdist.store.tables import write_records
from ptdist.tasks import get_task
from ptdist.training import TrainConfig, train

# The TrainConfig settings a study fixes for all its runs (not the model, task, seed, init).
STUDY_KEYS = ("steps", "prompt_length", "lr", "schedule", "warmup_steps", "optimizer",
              "weight_decay", "grad_clip", "batch_size", "eval_every", "eval_limit",
              "train_limit", "max_length", "max_new_tokens", "patience")


@dataclass(frozen=True)
class RecommendSettings:
    sample: int = 256  # training rows of the new task the candidates are scored on
    sample_seed: int = 0  # which rows
    seeds: tuple[int, ...] = (0,)  # the random prompts' seeds (the study's)
    batch_size: int = EvalSettings.batch_size  # examples x prompts per forward pass
    max_new_tokens: int = 64
    max_length: int = TrainConfig.max_length  # text tokens (the study's)
    data_dir: str | None = None
    precision: str | None = None  # None: the store candidates' own, else fp32
    device: str | None = None


@dataclass
class Recommendation:
    model: str
    task: str  # the new task's name
    rows: list[RecommendRow]  # in predicted order
    zero: ZeroShot
    indicator: IndicatorChoice | None  # None: no probe
    probe: str | None  # the probe prompt's id

    def to_json(self) -> dict[str, Any]:
        return {"model": self.model, "task": self.task, "metric": self.zero.metric,
                "sample_rows": self.zero.rows, "chance": self.zero.chance,
                "probe": self.probe, "indicator": None if self.indicator is None else
                {"name": self.indicator.name, "weight": self.indicator.weight,
                 "why": self.indicator.why}, "ranking": self.rows}


def study_settings(prompts: Sequence[PromptManifest]) -> dict[str, Any]:
    """The settings (`STUDY_KEYS`) most of ``prompts`` were trained with (a setting added
    after a prompt was trained: the value it had then, `TrainConfig.IMPLICIT`); {} for
    none."""
    def settings(m: PromptManifest) -> str:
        config = {**TrainConfig.IMPLICIT, **m.config}
        return json.dumps({k: config[k] for k in STUDY_KEYS if k in config}, sort_keys=True)

    found = Counter(settings(m) for m in prompts)
    return json.loads(found.most_common(1)[0][0]) if found else {}


def probes(store: Store) -> Store:
    """The store of the probe runs (`StoreLayout.probes`)."""
    return Store(store.layout.probes())


def train_probe(store: Store, model: str, task_ref: str, steps: int,
                candidates: Sequence[Candidate], study: dict[str, Any],
                data_dir: str | None) -> str:
    """The probe: ``steps`` of prompt tuning on the new task from a random init, with the
    study's settings and the candidates' most common prompt length, under a seed none of them
    has (prompts of one seed share their random start: docs/neurons.md). Stored like any run,
    in the probes' store (`probes`); its id."""
    length = Counter(c.prompt_length for c in candidates).most_common(1)[0][0]
    seed = max((c.seed for c in candidates if c.seed is not None), default=-1) + 1
    settings = dict(study, steps=steps, eval_every=steps, prompt_length=length,
                    warmup_steps=None, patience=None)
    return train(TrainConfig(model=model, task=task_ref, seed=seed, data_dir=data_dir,
                             **settings), probes(store)).prompt_id


def recommend(store: Store, model: str, task_ref: str, candidates: Sequence[Candidate],
              settings: RecommendSettings, probe: str | None = None,
              indicator: IndicatorChoice | None = None,
              backbone: Backbone | None = None) -> Recommendation:
    """``candidates`` for the task ``task_ref`` on ``model``, ranked; with a ``probe`` (the id
    `train_probe` returns), compared with each by ``indicator`` (default `choose_indicator`). The
    model is loaded for the call unless a ``backbone`` is given."""
    stored = [store.prompts.manifest(c.id) for c in candidates if c.origin == "store"]
    precision = inference_precision(stored, settings.precision) if stored else \
        settings.precision or "fp32"
    held = nullcontext(backbone) if backbone is not None else \
        load(model, settings.max_length, precision, settings.device)
    with held as loaded:
        loaded.max_length = settings.max_length
        zero = zero_shot(loaded, task_ref, candidates, settings.seeds, sample=settings.sample,
                         sample_seed=settings.sample_seed, data_dir=settings.data_dir,
                         batch_size=settings.batch_size, max_new_tokens=settings.max_new_tokens)
        values = None
        if probe is not None:
            indicator = indicator or choose_indicator(store, model, can_capture(loaded))
            values = probe_values(loaded, probes(store).prompts.tensor(probe), candidates,
                                  indicator.name)
    weight = indicator.weight if values is not None else 0.0
    ranked = rank_candidates(zero, values, weight, [c.label for c in candidates])
    resampled = ranked.p_top is not None
    rows = [RecommendRow(
        model=model, target_task=zero.task.name, candidate=c.id, label=c.label, origin=c.origin,
        source_task=c.task, source_type=c.task_type, source_seed=c.seed, metric=zero.metric,
        sample_rows=zero.rows, score=float(zero.scores[k]),
        score_low=zero.interval(k).bounds()[0], score_high=zero.interval(k).bounds()[1],
        chance=zero.chance, random_score=zero.random_scores[k],
        above_chance_low=zero.above_chance_low[k], above_random_low=zero.above_random_low[k],
        clearly_above=zero.clearly_above[k], indicator=indicator.name if values is not None
        else None, indicator_value=None if values is None else _number(values[k]),
        indicator_weight=weight, combined=float(ranked.combined[k]), rank=int(ranked.rank[k]),
        rank_low=int(ranked.low[k]) if resampled else None,
        rank_high=int(ranked.high[k]) if resampled else None,
        p_top=float(ranked.p_top[k]) if resampled else None) for k, c in enumerate(candidates)]
    rows.sort(key=lambda r: r.rank)
    return Recommendation(model, get_task(task_ref).name, rows, zero,
                          indicator if values is not None else None, probe)


def _number(value: float) -> float | None:
    return None if value != value else float(value)  # NaN: not computable for this pair


def write_recommendation(store: Store, result: Recommendation) -> Path:
    """The ranking as a table at `StoreLayout.recommendation`."""
    return write_records(store.layout.recommendation(result.model, result.task), RecommendRow,
                         result.rows)
