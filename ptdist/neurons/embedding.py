"""Embedding indicators on prompts alone: E_concat, E_avg, E_tokmean and their Euclidean
variants for any set of prompts, and their correlation with a transfer matrix, without a model
or captured activations (`ptdist neurons embedding`).

Prompts come from a store (a model's prompts, with its transfer matrix) or from files: ptdist
prompt files and PEFT prompt-tuning adapters (`adapter_model.safetensors`, key
``prompt_embeddings``). A transfer matrix from elsewhere is a CSV or Parquet table with columns
``source`` (a prompt's name, or a task that has one prompt), ``target`` (a task) and either
``relative`` (%) or ``score``, relative then being score / the mean score of the target's own
prompts x 100 (the table's diagonal).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ptdist.errors import PtdistError
from ptdist.files import require_file
from ptdist.neurons.correlation import (Transfer, independent_starts, indicator_values,
                                        rank_indicators, transfers)
from ptdist.neurons.indicator_table import pair_rows
from ptdist.store import Store
from ptdist.store.manifests import PromptManifest
from ptdist.store.prompts import folder_prompt_file, read_prompt_file
from ptdist.store.results import CorrelationRow, IndicatorRow, MatrixRow
from ptdist.store.tables import read_records
from ptdist.tasks.formats import read_csv, read_parquet
from ptdist.transfer.matrix import own_prompts, unusable_tasks

PROTOCOL = "embedding"  # the IndicatorRow protocol of indicators computed without activations
MATRIX_READERS = {".csv": read_csv, ".parquet": read_parquet}


@dataclass(frozen=True)
class NamedPrompt:
    name: str  # unique among the prompts
    task: str
    tensor: np.ndarray  # [L, d]
    seed: int | None = None  # None: unknown (a file or adapter)
    # Started independently of the other tasks' prompts of its seed (`independent_starts`):
    # then a source is compared with the target's prompt of its own seed.
    independent_start: bool = False


@dataclass
class EmbeddingResult:
    indicators: list[IndicatorRow]
    correlation: list[CorrelationRow]  # empty without a transfer matrix


def embedding_study(model: str, prompts: Sequence[NamedPrompt],
                    transfers: Sequence[Transfer] = (),
                    left_out: Sequence[str] = ()) -> EmbeddingResult:
    """Every embedding indicator of every ordered pair of ``prompts``, and (given
    ``transfers``) each indicator's correlation with transfer (`rank_indicators`)."""
    if len(prompts) < 2:
        raise PtdistError(f"embedding indicators compare prompts pairwise; got {len(prompts)}")
    names = [p.name for p in prompts]
    if len(set(names)) < len(names):
        twice = sorted({n for n in names if names.count(n) > 1})
        raise PtdistError(f"prompt names must be unique; {', '.join(twice)} appear twice "
                          "(name a file's task with TASK=PATH, or rename the files)")
    order = sorted(prompts, key=lambda p: (p.task, p.name))
    rows = pair_rows(model, PROTOCOL, {p.name: p.task for p in order},
                     {p.name: p.tensor for p in order})
    if not transfers:
        return EmbeddingResult(rows, [])
    owns: dict[str, list[tuple[str, int | None]]] = {}
    for p in order:
        owns.setdefault(p.task, []).append((p.name, p.seed))
    missing = sorted({t.target_task for t in transfers} - set(owns))
    if missing:
        raise PtdistError(f"the transfer matrix has targets without an own prompt: "
                          f"{', '.join(missing)}; give a prompt of each target task")
    within = all(p.independent_start for p in prompts)
    return EmbeddingResult(rows, rank_indicators(model, transfers, owns,
                                                 indicator_values(rows), left_out, within))


@dataclass(frozen=True)
class TaskSimilarity:
    """Each indicator between two tasks' prompts: the mean over their pairs of different
    prompts (``pairs`` of them; a task with itself: its prompts of different seeds)."""

    task_a: str
    task_b: str
    pairs: int
    values: dict[str, float]


def task_similarities(rows: Sequence[IndicatorRow]) -> list[TaskSimilarity]:
    """The indicators of ``rows`` averaged per unordered pair of tasks, in the rows' order:
    what a reader compares when there are too few tasks for a correlation."""
    sums: dict[tuple[str, str], dict[str, list[float]]] = {}
    for r in rows:
        if r.prompt_a < r.prompt_b:  # each unordered pair of different prompts once
            key = tuple(sorted((r.task_a, r.task_b)))
            sums.setdefault(key, {}).setdefault(r.indicator, []).append(r.value)
    return [TaskSimilarity(a, b, len(next(iter(values.values()))),
                           {name: float(np.mean(v)) for name, v in values.items()})
            for (a, b), values in sums.items()]


def prompts_from_paths(specs: Sequence[str]) -> list[NamedPrompt]:
    """Prompts named by ``specs`` (`prompt_paths`), read."""
    return [NamedPrompt(name, task, read_prompt_file(file).numpy())
            for name, task, file in prompt_paths(specs)]


def prompt_paths(specs: Sequence[str]) -> list[tuple[str, str, Path]]:
    """``(name, task, file)`` of each prompt ``specs`` name: ``PATH`` or ``TASK=PATH``, where
    PATH is a prompt file (``.safetensors``), an adapter or prompt folder, or a folder of
    those. A prompt is named by its file stem or folder name; its task is TASK, else its
    name."""
    out = []
    for spec in specs:
        task, _, path = spec.rpartition("=")
        out += [(name, task or name, file)
                for name, file in _prompt_files(Path(path).expanduser())]
    return out


def _prompt_files(path: Path) -> list[tuple[str, Path]]:
    if path.is_file() and path.suffix == ".safetensors":
        return [(path.stem, path)]
    if path.is_dir():
        if (own := folder_prompt_file(path)) is not None:
            return [(path.name, own)]
        found = [(f.stem, f) for f in sorted(path.glob("*.safetensors"))]
        found += [(sub.name, own) for sub in sorted(p for p in path.iterdir() if p.is_dir())
                  if (own := folder_prompt_file(sub)) is not None]
        if found:
            return found
    raise PtdistError(f"{path} is neither a prompt file (.safetensors) nor a folder holding "
                      "prompt files or PEFT adapters (adapter_model.safetensors)")


def store_inputs(store: Store, model: str) -> tuple[list[NamedPrompt], list[Transfer],
                                                    list[str]]:
    """A model's prompts in ``store`` with its transfer matrix when there is one (the
    matrix's prompts, its cells, the tasks it leaves out), else its own prompts alone."""
    path = store.layout.matrix(model)
    if path.exists():
        matrix = read_records(path, MatrixRow)
        left_out = unusable_tasks(matrix)
        manifests = [store.prompts.manifest(pid)
                     for pid in dict.fromkeys(r.source_prompt for r in matrix)]
        return [_named(store, m) for m in manifests], transfers(matrix, left_out), left_out
    return [_named(store, m) for m in own_prompts(store.prompts.select(model))], [], []


def _named(store: Store, m: PromptManifest) -> NamedPrompt:
    return NamedPrompt(m.id, m.task, store.prompts.tensor(m.id).numpy(), m.seed,
                       independent_starts([m]))


def transfers_from_table(path: Path, prompts: Sequence[NamedPrompt]) -> list[Transfer]:
    """The off-diagonal cells of a transfer matrix file (module docstring), each source
    resolved to one of ``prompts``."""
    table = _read_table(path)
    needed = {"source", "target"}
    if not needed <= set(table) or not {"relative", "score"} & set(table):
        raise PtdistError(f"{path} has columns {', '.join(table)}; a transfer matrix needs "
                          "source, target and relative (or score)")
    by_name = {p.name: p for p in prompts}
    by_task: dict[str, list[NamedPrompt]] = {}
    for p in prompts:
        by_task.setdefault(p.task, []).append(p)

    def resolve(source: str) -> NamedPrompt:
        if source in by_name:
            return by_name[source]
        if len(by_task.get(source, [])) == 1:
            return by_task[source][0]
        raise PtdistError(f"{path}: source '{source}' names no prompt (nor a task with one "
                          f"prompt) among {', '.join(sorted(by_name))}")

    column = "relative" if "relative" in table else "score"
    values = _cell_values(path, table, column)
    cells = [(resolve(str(s)), str(t), v)
             for s, t, v in zip(table["source"], table["target"], values)]
    if "relative" not in table:
        own = {t: np.mean([v for p, tt, v in cells if tt == t and p.task == t])
               for t in {t for _, t, _ in cells}}
        if any(np.isnan(v) for v in own.values()):
            raise PtdistError(f"{path} gives scores but not every target's own prompt's "
                              "score on it (the diagonal); give relative instead, or add it")
        cells = [(p, t, 100.0 * v / own[t]) for p, t, v in cells]
    return [Transfer(p.name, p.task, t, v) for p, t, v in cells if p.task != t]


def _cell_values(path: Path, table: dict[str, list], column: str) -> list[float]:
    """The ``column`` of each cell as a finite number, each (source, target) once; the rows
    that break this are named (data rows, counted from 1)."""
    values, bad = [], []
    for row, value in enumerate(table[column], 1):
        try:
            number = float(value)
        except (TypeError, ValueError):
            number = math.nan
        values.append(number)
        if not math.isfinite(number):
            bad.append(f"{row} ({value!r})")
    if bad:
        raise PtdistError(f"{path}: {column} is not a finite number in data row(s) "
                          f"{_first(bad)}; every cell needs a number")
    pairs = list(zip(map(str, table["source"]), map(str, table["target"])))
    twice = [pair for pair, n in Counter(pairs).items() if n > 1]
    if twice:
        rows = [f"{', '.join(str(k) for k, p in enumerate(pairs, 1) if p == pair)} "
                f"({pair[0]} -> {pair[1]})" for pair in twice]
        raise PtdistError(f"{path} gives one (source, target) cell more than once: data rows "
                          f"{_first(rows)}; keep one row per cell")
    return values


def _first(items: list[str], shown: int = 5) -> str:
    return "; ".join(items[:shown]) + (f"; and {len(items) - shown} more"
                                       if len(items) > shown else "")


def _read_table(path: Path) -> dict[str, list]:
    """A transfer matrix file, read like a data file (`ptdist.tasks.formats`)."""
    if path.suffix not in MATRIX_READERS:
        raise PtdistError(f"{path}: a transfer matrix is a .csv or .parquet table")
    return MATRIX_READERS[require_file(path, "transfer matrix").suffix](path)
