"""Transferability indicators of one model's prompts: FFN activations captured to Parquet (as
jobs), the indicators of every pair of prompts, their correlation with the transfer matrix,
and the embedding indicators of any prompts without a model."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from ptdist.api.inputs import absolute, frozen_model, open_store, tasks_in
from ptdist.errors import PtdistError
from ptdist.files import require_writable_folder
from ptdist.neurons.collect import CaptureResult, CaptureSettings
from ptdist.neurons.correlation import CorrelationResult, correlate as correlate_stage
from ptdist.neurons.embedding import (EmbeddingResult, TaskSimilarity, embedding_study,
                                      prompts_from_paths, store_inputs, task_similarities,
                                      transfers_from_table)
from ptdist.neurons.indicator_table import IndicatorResult, pairwise_indicators
from ptdist.orchestration.execution.graph import Execution
from ptdist.orchestration.jobs.stages import run_capture
from ptdist.orchestration.spec.sweep_spec import Resources
from ptdist.reporting.figures import indicator_figure, layerwise_figure
from ptdist.store import Store
from ptdist.store.results import CorrelationRow, IndicatorRow
from ptdist.store.tables import write_records
from ptdist.tasks import get_task

HEATMAPS = ("ON", "E_concat")  # the indicators `indicators` draws


@dataclass
class PairIndicators(IndicatorResult):
    """Every indicator (E_concat, E_avg, E_tokmean, their Euclidean D_ variants, ON and
    layer-wise ON) of every ordered pair of a model's captured prompts: ``rows`` (an
    `IndicatorRow` per pair and indicator), the Parquet ``table``, the ``prompts`` (ids,
    grouped by task) and the ``heatmaps`` (PNG) of ON and E_concat."""

    heatmaps: list[Path]


@dataclass
class Correlation(CorrelationResult):
    """How well each indicator predicts zero-shot transfer: ``rows`` (a `CorrelationRow` per
    indicator: Spearman's rho per target and global, averaged over seeds, with intervals where
    they hold), strongest first; the Parquet ``table``; the ``layer_curve`` (PNG) of
    layer-wise ON."""

    layer_curve: Path


@dataclass
class EmbeddingIndicators(EmbeddingResult):
    """The embedding indicators of every ordered pair of prompts (``indicators`` rows, stored
    at ``indicators_table``) and, given a transfer matrix, each indicator's correlation with
    transfer (``correlation`` rows at ``correlation_table``; empty and None without one);
    and the ``similarities`` of the tasks' prompts (each indicator's mean per pair of tasks:
    what to read where there are too few tasks to correlate)."""

    indicators_table: Path
    correlation_table: Path | None
    similarities: list[TaskSimilarity]


def capture(model: str, tasks: Sequence[str] | None = None, *,
            store: Store | str | os.PathLike | None = None,
            settings: CaptureSettings = CaptureSettings(), chunks: int = 2,
            execution: Execution = Execution(),
            resources: Resources = Resources()) -> CaptureResult:
    """Record every layer's FFN activations of the stored prompts of ``model`` (only those of
    ``tasks``, if given) into the store's activations (Parquet), in ``chunks`` jobs each with
    ``resources``. Prompts already captured under ``settings.protocol`` are skipped.

    Returns the `CaptureResult`: how many prompts it captured, how many were stored already,
    and the activations folder.
    """
    if chunks < 1:
        raise PtdistError(f"chunks {chunks}: give the number of jobs to split the prompts over "
                          "(at least 1)")
    frozen_model(resources, settings.ds_config)
    opened = open_store(store)
    names = None if tasks is None else [get_task(t).name for t in tasks_in(tasks, opened)]
    prompts = opened.prompts.select(model, names)
    if not prompts:
        raise PtdistError(f"no prompts of model '{model}' in store {opened.root}"
                          + (f" for task(s) {', '.join(names)}" if names else ""))
    return run_capture(opened, prompts, replace(settings, data_dir=absolute(settings.data_dir)),
                       chunks, execution, resources)


def indicators(model: str, *, protocol: str = "prompt",
               store: Store | str | os.PathLike | None = None) -> PairIndicators:
    """Every indicator of every pair of ``model``'s prompts whose activations are captured
    under ``protocol`` (`capture` first); prompts without activations are named in a warning
    and left out.

    Returns the `PairIndicators`: the rows, the stored table and the ON and E_concat heatmaps.
    """
    opened = open_store(store)
    result = pairwise_indicators(opened, model, opened.prompts.select(model), protocol)
    heatmaps = [indicator_figure(result.rows, name, opened.layout.indicator_figure(model, name))
                for name in HEATMAPS]
    return PairIndicators(**vars(result), heatmaps=heatmaps)


def correlate(model: str, *, store: Store | str | os.PathLike | None = None) -> Correlation:
    """Spearman's correlation of each of ``model``'s stored indicators (`indicators`, or
    `embedding_indicators`) with its zero-shot transfer matrix (`transfer_matrix`), per target
    and global, each computed within a seed and averaged over seeds.

    Returns the `Correlation`: its rows, strongest first, the stored table and the layer-wise
    ON curve.
    """
    opened = open_store(store)
    result = correlate_stage(opened, model)
    curve = layerwise_figure(result.rows, opened.layout.layerwise_figure(model))
    return Correlation(**vars(result), layer_curve=curve)


def embedding_indicators(model: str | None = None, *, prompts: Sequence[str] | None = None,
                         matrix: str | os.PathLike | None = None,
                         out: str | os.PathLike = "embedding_indicators",
                         name: str = "prompts",
                         store: Store | str | os.PathLike | None = None) -> EmbeddingIndicators:
    """The embedding indicators (E_concat, E_avg, E_tokmean and their Euclidean variants) of
    every pair of prompts, with no model loaded, and their correlation with transfer.

    Either ``model``: its prompts in ``store``, correlated with its transfer matrix when the
    store has one (tables in the store); or ``prompts``: ``[TASK=]PATH`` items, each a prompt
    file, a PEFT adapter folder or a folder of them (a prompt's task is TASK, else its name),
    with tables in the folder ``out`` under the model name ``name``. ``matrix``: a transfer
    matrix file (.csv/.parquet with columns source, target and relative or score) to
    correlate with instead.

    Returns the `EmbeddingIndicators`: the rows, where they are stored, and the tasks'
    similarities.
    """
    if (model is None) == (prompts is None):
        raise PtdistError("give either a model (model=, --model: its prompts in the store) "
                          "or prompts (prompts=, --prompts: prompt files or PEFT adapters)")
    if prompts is not None:
        require_writable_folder(Path(out), "--out", "give --out a folder for the tables (it "
                                "is created if missing)")
        named, found, left_out = prompts_from_paths(prompts), [], []
        tables = Path(out) / "embedding_indicators.parquet", \
            Path(out) / "embedding_correlation.parquet"
    else:
        opened = open_store(store)
        named, found, left_out = store_inputs(opened, model)
        name = model
        tables = (opened.layout.embedding_indicators(model),
                  opened.layout.embedding_correlation(model))
    if matrix is not None:
        found, left_out = transfers_from_table(Path(matrix), named), []
    result = embedding_study(name, named, found, left_out)
    write_records(tables[0], IndicatorRow, result.indicators)
    if result.correlation:
        write_records(tables[1], CorrelationRow, result.correlation)
    return EmbeddingIndicators(**vars(result), indicators_table=tables[0],
                               correlation_table=tables[1] if result.correlation else None,
                               similarities=task_similarities(result.indicators))
