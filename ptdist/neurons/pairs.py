"""Indicators for every pair of a model's captured prompts, as a table (`StoreLayout.indicators`:
one row per ordered pair and indicator)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ptdist.errors import PtdistError
from ptdist.neurons.indicators import embedding_indicators, neuron_indicators
from ptdist.store import Store
from ptdist.store.activations import read_states
from ptdist.store.manifests import PromptManifest
from ptdist.store.results import IndicatorRow
from ptdist.store.tables import write_records

log = logging.getLogger(__name__)


@dataclass
class IndicatorResult:
    rows: list[IndicatorRow]
    table: Path
    prompts: list[str]  # ids, grouped by task


def pairwise_indicators(store: Store, model: str, prompts: Sequence[PromptManifest],
                        protocol: str = "prompt") -> IndicatorResult:
    """Indicators for every pair of ``prompts`` (``model``'s) whose activations are captured
    (``protocol``); the others are named on stderr and left out."""
    ids = {m.id for m in prompts}
    states = {pid: state for pid, state in read_states(store.layout, model, protocol).items()
              if pid in ids}
    uncaptured = sorted(ids - set(states))
    if uncaptured:
        log.warning(f"{len(uncaptured)} prompt(s) of {model} have no activations "
                    f"({protocol} protocol) and are left out of the indicators: "
                    f"{', '.join(uncaptured)}")
    if len(states) < 2:
        raise PtdistError(f"{len(states)} prompt(s) of '{model}' have captured activations "
                          f"({protocol} protocol) in {store.root}; run `ptdist neurons capture "
                          f"--model {model}` first (indicators need at least two)")
    order = sorted(states, key=lambda pid: (states[pid][0], pid))
    tensors = {pid: store.prompts.tensor(pid).numpy() for pid in order}
    rows = pair_rows(model, protocol, {pid: states[pid][0] for pid in order}, tensors,
                     {pid: states[pid][1] for pid in order})
    table = write_records(store.layout.indicators(model), IndicatorRow, rows)
    return IndicatorResult(rows, table, order)


def pair_rows(model: str, protocol: str, tasks: dict[str, str], tensors: dict[str, np.ndarray],
              states: dict[str, np.ndarray] | None = None) -> list[IndicatorRow]:
    """Every indicator of every ordered pair of prompts (``tasks``: prompt -> its task, in
    order): the embedding indicators of ``tensors``, and ON of ``states`` when given."""
    shapes = sorted({t.shape for t in tensors.values()})
    if len(shapes) > 1:
        raise PtdistError(f"the prompts of '{model}' have shapes {shapes}; embedding "
                          "indicators compare prompts of one length, so select one study's "
                          "prompts (`ptdist replicate` does) or train them with one "
                          "--prompt-length")
    order = list(tasks)
    rows = []
    for i, a in enumerate(order):
        for b in order[i:]:
            values = embedding_indicators(tensors[a], tensors[b])
            if states is not None:
                values.update(neuron_indicators(states[a], states[b]))
            for first, second in dict.fromkeys([(a, b), (b, a)]):  # one row when a is b
                rows += [IndicatorRow(model=model, protocol=protocol, prompt_a=first,
                                      task_a=tasks[first], prompt_b=second,
                                      task_b=tasks[second], indicator=name, value=value)
                         for name, value in values.items()]
    return rows
