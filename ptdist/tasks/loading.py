"""Load one split of a task as a `datasets.Dataset` of normalised rows.

Classification rows: ``text`` (the template applied) and ``label`` (class index). Generation
rows: ``text``, ``target`` (the training target: the first reference) and ``references``.

Where a split comes from, first match wins:
1. ``<data_dir>/<task name>/<split>.{jsonl,json,csv,parquet}``, with data_dir from the
   argument or $PTDIST_DATA_DIR;
2. the record's ``source.local``: its standard data files in ``<data_dir>/<folder>/``
   (`ptdist.tasks.formats`), laid out as the original downloads are;
3. the record's ``source.files`` (one file without a hub id: train and eval split off it by
   a seeded shuffle, ``source.holdout``);
4. the Hugging Face hub, ``datasets.load_dataset(hub, config, split=...)``.

Local files of every format are read by `ptdist.tasks.formats`, under its one policy for file
types, encodings, field sizes and malformed rows.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from ptdist.checksum import file_sha256
from ptdist.errors import PtdistError
from ptdist.files import not_a_file, require_file
from ptdist.tasks.formats import FILE_READERS, Columns, reader, split_files
from ptdist.tasks.parsing import FILE_SUFFIXES
from ptdist.tasks.record import Holdout, LocalSource, TaskRecord

if TYPE_CHECKING:
    import datasets

log = logging.getLogger(__name__)


def load_split(task: TaskRecord, split: str, *, limit: int | None = None,
               data_dir: str | None = None, seed: int = 0) -> "datasets.Dataset":
    """Split ``split`` ("train", "eval", or another split the record maps) of ``task``.

    ``limit`` keeps a random subset of that many usable rows, the same for the same ``seed``,
    in dataset order. Rows without a usable answer (a label that is not a class, such as
    GLUE's -1 test labels or SemEval's "conflict"; no reference text) or with a missing (null)
    input value are dropped and counted in a warning.
    """
    if limit is not None and limit < 1:
        raise PtdistError(f"limit must be a positive number of examples, got {limit}; use "
                          "limit=None for the whole split")
    local = task.source.local
    known = {"train", "eval", *task.source.splits, *task.source.files,
             *(local.splits if local else ())}
    if split not in known:
        raise PtdistError(f"task '{task.name}' has no split '{split}'; use one of "
                          f"{', '.join(sorted(known))}")
    columns, where, label_map = _raw_split(task, split, data_dir)
    _check_columns(list(columns), task, where)
    answer = _label_reader(task, label_map) if task.is_classification else \
        _reference_reader(task, where)
    answer_column = task.label_column if task.is_classification else \
        task.target_column.split(".")[0]

    inputs = task.input_columns  # parsed from the template: once, not once per row
    keep, answers, bad_answers, empty_inputs = [], [], Counter(), 0
    for i, value in enumerate(columns[answer_column]):
        if any(columns[c][i] is None for c in inputs):
            empty_inputs += 1
            continue
        parsed = answer(value)
        if parsed is None:
            bad_answers[repr(value)] += 1
            continue
        keep.append(i)
        answers.append(parsed)
    _report_dropped(task, where, len(columns[answer_column]), len(keep), bad_answers,
                    empty_inputs)

    if limit is not None and limit < len(keep):
        chosen = np.sort(np.random.default_rng(seed).permutation(len(keep))[:limit])
        keep, answers = [keep[j] for j in chosen], [answers[j] for j in chosen]
    texts = [_format(task, where, {c: columns[c][i] for c in inputs}) for i in keep]

    import datasets  # here, not at the top: listing or parsing tasks should not pay for it

    if task.is_classification:
        return datasets.Dataset.from_dict({"text": texts, "label": answers})
    return datasets.Dataset.from_dict(
        {"text": texts, "target": [refs[0] for refs in answers], "references": answers})


@dataclass(frozen=True)
class Origin:
    """Where a split is read from: ``folder`` (ptdist's ``<data_dir>/<task>/<split>.*``),
    ``local`` (the record's standard data files), ``files`` (``source.files``), ``holdout``
    (the split's share of the one file of ``source.files``) or ``hub``."""

    kind: str
    path: Path | None = None
    files: tuple[Path, ...] = ()  # what is read (a split in TweetEval's format is two files)
    searched: str = ""  # the local places looked at before the hub


def data_origin(task: TaskRecord, split: str, data_dir: str | None) -> Origin:
    """Where ``split`` of ``task`` comes from (the first of the module docstring's places that
    holds it), without reading it."""
    folder = data_dir or os.environ.get("PTDIST_DATA_DIR")
    searched = []
    if folder:
        base = Path(folder).expanduser()
        mine = base / task.name
        found = [mine / f"{split}{s}" for s in FILE_SUFFIXES if _present(mine / f"{split}{s}")]
        if len(found) > 1:
            raise PtdistError(f"{mine} holds {len(found)} {split} files "
                              f"({', '.join(p.name for p in found)}); keep only one")
        if found:
            return Origin("folder", found[0], (found[0],))
        searched.append(f"{mine}/{split}.{{{','.join(s[1:] for s in FILE_SUFFIXES)}}}")
        local = task.source.local
        if local is not None and split in local.splits:
            name = local.holdout.file if local.holdout else local.files[split]
            paths = split_files(local.format, base / local.folder, name)
            if all(_present(p) for p in paths):
                return Origin("local", base / local.folder / name, tuple(paths))
            searched.append(", ".join(str(p) for p in paths))
    holdout = task.source.holdout
    if split in task.source.files or (holdout is not None and split in ("train", "eval")):
        kind, name = ("holdout", next(iter(task.source.files))) if holdout is not None \
            else ("files", split)
        path = Path(task.source.files[name])
        if not _present(path):
            raise PtdistError(f"task '{task.name}': {split} file {path} (source.files.{name}) "
                              "does not exist; fix the path in the task YAML")
        return Origin(kind, path, (path,))
    return Origin("hub", searched="no " + " nor ".join(searched) if searched else "")


def data_fingerprint(task: TaskRecord, splits: tuple[str, ...],
                     data_dir: str | None) -> dict[str, str]:
    """``{split: sha256 of its files}`` for each of ``splits`` read from local files: what a
    run's rows are, known without reading them (the task record and the run's settings say
    which rows of the files it takes). A split from the hub has no entry: the task record's
    source (dataset id, config, revision) identifies it."""
    origins = {split: data_origin(task, split, data_dir) for split in splits}
    return {split: "+".join(_file_digest(p) for p in origin.files)
            for split, origin in origins.items() if origin.files}


_DIGESTS: dict[tuple[str, int, int], str] = {}  # (path, size, mtime): digest, per process


def _present(path: Path) -> bool:
    """Whether something is at ``path``: a file to read, or another thing there that reading
    it will name (a folder, a FIFO)."""
    return not_a_file(path) != "missing"


def _file_digest(path: Path) -> str:
    stat = require_file(path, "data file").stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _DIGESTS:
        _DIGESTS[key] = file_sha256(path)
    return _DIGESTS[key]


def _raw_split(task: TaskRecord, split: str,
               data_dir: str | None) -> tuple[Columns, str, dict[str, str] | None]:
    """The split's raw columns, where they were read, and the label map that applies to
    them."""
    origin = data_origin(task, split, data_dir)
    if origin.kind == "local":
        local = task.source.local
        return (_read_local(local, origin.path, split), str(origin.path),
                local.label_map or task.label_map)
    if origin.kind in ("folder", "files"):
        return FILE_READERS[origin.path.suffix](origin.path), str(origin.path), task.label_map
    if origin.kind == "holdout":
        where = f"{origin.path} ({split} share)"
        columns = _held_out(FILE_READERS[origin.path.suffix](origin.path), task.source.holdout,
                            split, where)
        return columns, where, task.label_map
    where = _hub_label(task, split)
    rows = _from_hub(task, split, origin.searched)
    _check_columns(rows.column_names, task, where)
    return rows.select_columns(list(task.required_columns)).to_dict(), where, task.label_map


def _read_local(local: LocalSource, path: Path, split: str) -> Columns:
    """One split of a task's standard data files, columns renamed as the record says."""
    columns = {local.columns.get(name, name): values
               for name, values in reader(local.format)(path).items()}
    if local.holdout is not None:
        columns = _held_out(columns, local.holdout, split, str(path))
    return columns


def _held_out(columns: dict[str, list], holdout: Holdout, split: str,
              where: str) -> dict[str, list]:
    """``split`` (train or eval) of the rows in ``columns``, by the record's holdout rule."""
    n = len(next(iter(columns.values())))
    order = np.random.default_rng(holdout.seed).permutation(n)
    cut = int(n * holdout.eval_fraction)
    chosen = np.sort(order[:cut] if split == "eval" else order[cut:])
    if not len(chosen):
        raise PtdistError(f"{where}: {n} row(s) leave no {split} rows when "
                          f"{holdout.eval_fraction:.0%} are held out for eval; give more rows "
                          "or another eval_fraction")
    return {name: [values[i] for i in chosen] for name, values in columns.items()}


def _hub_label(task: TaskRecord, split: str) -> str:
    src = task.source
    return (f"{src.hub}" + (f" [{src.config}]" if src.config else "")
            + f" split '{src.splits.get(split, split)}'")


def _from_hub(task: TaskRecord, split: str, searched: str):
    import datasets

    src = task.source
    where_local = ("put train.jsonl and eval.jsonl (or .json, .csv, .parquet) with columns "
                   f"{', '.join(_column_help(task))} in DIR/{task.name}/ and pass --data-dir DIR "
                   "(or set PTDIST_DATA_DIR=DIR), or list the files under source.files in a task "
                   "YAML (docs/tasks.md)")
    looked = f" (looked for local files: {searched})" if searched else ""
    if not src.hub or split not in src.splits:
        raise PtdistError(f"task '{task.name}' has no source for split '{split}'{looked}; "
                          + where_local)
    try:
        return datasets.load_dataset(src.hub, src.config, split=src.splits[split],
                                     revision=src.revision, data_dir=src.data_dir)
    except Exception as exc:  # offline, unknown id, gated, missing split: all "not from the hub"
        raise PtdistError(
            f"could not load {_hub_label(task, split)} from the Hugging Face hub for task "
            f"'{task.name}': {_brief(exc)}{looked}. To use local files, "
            + where_local) from exc


def _brief(exc: BaseException) -> str:
    """The first line of an exception from `datasets`, whose messages can run to pages."""
    first = next((line for line in str(exc).splitlines() if line.strip()), "")
    return f"{type(exc).__name__}: {first.strip()[:300]}"


def _column_help(task: TaskRecord) -> list[str]:
    inputs = list(task.input_columns)
    if task.is_classification:
        return inputs + [f"{task.label_column} (a class index 0..{len(task.classes) - 1} or a "
                         f"class name: {'/'.join(task.classes)})"]
    column, _, field = task.target_column.partition(".")
    shape = f"{{\"{field}\": [answers]}}" if field else "a string or a list of strings"
    return inputs + [f"{column} ({shape})"]


def _check_columns(names: Collection[str], task: TaskRecord, where: str) -> None:
    missing = [c for c in task.required_columns if c not in names]
    if missing:
        raise PtdistError(
            f"{where} has no column {', '.join(repr(c) for c in missing)} for task "
            f"'{task.name}'; its columns are {', '.join(names)}. Rename the "
            "columns, or write a task YAML whose template and label/target columns match "
            "(docs/tasks.md)")


def _plain(value: Any) -> Any:
    # CSV label columns with a gap come back as floats (1.0); treat whole floats as ints, and
    # integers written as text (standard data files are read as text) as ints too.
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    return value


def _label_reader(task: TaskRecord,
                  label_map: dict[str, str] | None) -> Callable[[Any], int | None]:
    index = {name: i for i, name in enumerate(task.classes)}
    if label_map is not None:
        mapping = {key: index[name] for key, name in label_map.items()}
        return lambda value: mapping.get(str(_plain(value)))

    def read(value: Any) -> int | None:
        value = _plain(value)
        if isinstance(value, bool):  # bool is an int subclass; True is not a class index
            return None
        if isinstance(value, int):
            return value if 0 <= value < len(task.classes) else None
        return index.get(value) if isinstance(value, str) else None

    return read


def _reference_reader(task: TaskRecord, where: str) -> Callable[[Any], list[str] | None]:
    column, *fields = task.target_column.split(".")

    def read(value: Any) -> list[str] | None:
        for field in fields:
            if value is None:
                return None
            if not isinstance(value, dict) or field not in value:
                raise PtdistError(f"{where}: column '{column}' has no field '{field}' (a value "
                                  f"is {str(value)[:80]!r}); fix target_column of task "
                                  f"'{task.name}' or the data")
            value = value[field]
        values = value if isinstance(value, list) else [value]
        return [v for v in values if isinstance(v, str) and v.strip()] or None

    return read


def _format(task: TaskRecord, where: str, row: dict[str, Any]) -> str:
    try:
        return task.template.format_map(row)
    except (KeyError, IndexError, TypeError, ValueError, AttributeError) as exc:
        raise PtdistError(f"{where}: template {task.template!r} of task '{task.name}' does not "
                          f"fit a row ({type(exc).__name__}: {exc}); fix the template") from exc


def _report_dropped(task: TaskRecord, where: str, total: int, kept: int, bad: Counter,
                    empty_inputs: int) -> None:
    what = "label that is not a class" if task.is_classification else "reference text"
    examples = ", ".join(v for v, _ in bad.most_common(3))
    if kept == 0:
        raise PtdistError(
            f"{where}: none of its {total} rows is usable for task '{task.name}'"
            + (f" ({sum(bad.values())} with no {what}, e.g. {examples})" if bad else "")
            + (f" ({empty_inputs} with a missing input value)" if empty_inputs else "")
            + ("; its classes are " + ", ".join(task.classes) + " (give a label_map in a task "
               "YAML to map other label values)" if task.is_classification else
               f"; check target_column '{task.target_column}'"))
    if kept < total:
        reasons = [f"{sum(bad.values())} with a {what} (e.g. {examples})" if
                   task.is_classification else f"{sum(bad.values())} without a {what}"] \
            if bad else []
        reasons += [f"{empty_inputs} with a missing input value"] if empty_inputs else []
        log.warning("%s: dropped %d of %d rows for task '%s': %s", where, total - kept, total,
                    task.name, "; ".join(reasons))
