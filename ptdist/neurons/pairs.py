"""Indicators for every pair of a model's captured prompts, as a Parquet table and heatmaps:
``<store>/neurons/<model>/indicators.parquet`` (one row per ordered pair and indicator) and
``indicators_ON.png`` / ``indicators_E_concat.png``."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from ptdist.errors import PtdistError
from ptdist.neurons.indicators import embedding_indicators, neuron_indicators
from ptdist.store.activations import read_states
from ptdist.store.keys import model_key
from ptdist.store.prompts import PromptStore
from ptdist.store.tables import write_table

INDICATOR_SCHEMA = pa.schema([
    ("model", pa.string()), ("protocol", pa.string()), ("prompt_a", pa.string()),
    ("task_a", pa.string()), ("prompt_b", pa.string()), ("task_b", pa.string()),
    ("indicator", pa.string()), ("value", pa.float64()),
])
HEATMAPS = ("ON", "E_concat")


@dataclass
class IndicatorResult:
    rows: list[dict]
    table: Path
    heatmaps: list[Path]


def neurons_dir(store: PromptStore, model: str) -> Path:
    return store.root / "neurons" / model_key(model)


def pairwise_indicators(model: str, store: PromptStore, protocol: str = "prompt",
                        among: Collection[str] | None = None) -> IndicatorResult:
    """Indicators for every pair of ``model``'s captured prompts (or of those ``among`` these
    prompt ids)."""
    states = {pid: state for pid, state in read_states(store.root, model, protocol).items()
              if among is None or pid in among}
    if len(states) < 2:
        raise PtdistError(f"{len(states)} prompt(s) of '{model}' have captured activations "
                          f"({protocol} protocol) in {store.root}; run `ptdist neurons capture "
                          f"--model {model}` first (indicators need at least two)")
    ids = sorted(states, key=lambda pid: (states[pid][0], pid))
    prompts = {pid: store.load(pid)[0].numpy() for pid in ids}
    shapes = sorted({prompt.shape for prompt in prompts.values()})
    if len(shapes) > 1:
        raise PtdistError(f"the captured prompts of '{model}' have shapes {shapes}; embedding "
                          "indicators compare prompts of one length, so select one study's "
                          "prompts (`ptdist replicate` does) or train them with one "
                          "--prompt-length")
    rows = []
    for i, a in enumerate(ids):
        for b in ids[i:]:
            values = {**embedding_indicators(prompts[a], prompts[b]),
                      **neuron_indicators(states[a][1], states[b][1])}
            for first, second in {(a, b), (b, a)}:
                rows += [{"model": model, "protocol": protocol, "prompt_a": first,
                          "task_a": states[first][0], "prompt_b": second,
                          "task_b": states[second][0], "indicator": name, "value": value}
                         for name, value in values.items()]
    folder = neurons_dir(store, model)
    table = write_table(folder / "indicators.parquet", rows, INDICATOR_SCHEMA)
    return IndicatorResult(rows, table, [_heatmap(model, ids, states, rows, name, folder)
                                         for name in HEATMAPS])


def _heatmap(model: str, ids: list[str], states: dict, rows: list[dict], name: str,
             folder: Path) -> Path:
    from ptdist.reporting.figures import grouped_heatmap

    index = {pid: k for k, pid in enumerate(ids)}
    values = np.full((len(ids), len(ids)), np.nan)
    for r in rows:
        if r["indicator"] == name:
            values[index[r["prompt_a"]], index[r["prompt_b"]]] = 100.0 * r["value"]
    labels = [f"{states[pid][0]}:{pid[:6]}" for pid in ids]
    return grouped_heatmap(values, labels, labels, [states[pid][0] for pid in ids],
                           f"{name} between prompts, {model}", folder / f"indicators_{name}.png",
                           f"{name} x 100", axis_labels=("prompt (task)", "prompt"))
