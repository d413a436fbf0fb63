"""Read and validate task YAML: the built-ins and a user's file go through the same checks, and
each mistake stops with one message naming the file, the key or value, and the fix."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal, NoReturn

from pydantic import AfterValidator, Field, create_model

from ptdist.errors import PtdistError
from ptdist.tasks.formats import FILE_READERS, FORMATS
from ptdist.tasks.metrics import CLASSIFICATION_METRICS, GENERATION_METRICS
from ptdist.tasks.record import (BACKBONE_FAMILIES, KINDS, TYPE_KINDS, Holdout, LocalSource,
                                 Source, TaskRecord, template_columns, template_fields)
from ptdist.validation import Strict, Text, located, read_yaml, rule, validate

FILE_SUFFIXES = tuple(FILE_READERS)
DEFAULT_SPLITS = {"train": "train", "eval": "validation"}
HELD_OUT = 0.2  # the eval share of a one-file source's rows, unless source.holdout says
DOCS = "docs/tasks.md"
_SEPARATORS = str.maketrans("", "", "_-.")
_PLAIN_FIELD = re.compile(r"[^.\[\]!:{}]+")


def _template(template: str) -> str:
    try:
        fields = template_fields(template)
    except ValueError as exc:
        raise ValueError(f"is not a valid format string: {exc}") from None
    if not fields or not all(f and not f.isdigit() for f, _, _ in fields):
        raise ValueError("must name the data's columns in braces")
    # A field is a column name and nothing else: str.format would otherwise reach the value's
    # attributes and items ({text.__class__}) or pad it to any width ({text:>999999999}).
    fancy = next((f for f in fields if f[1:] != (None, "") or not _PLAIN_FIELD.fullmatch(f[0])),
                 None)
    if fancy is not None:
        written = fancy[0] + (f"!{fancy[1]}" if fancy[1] else "") + \
            (f":{fancy[2]}" if fancy[2] else "")
        raise ValueError(f"field {{{written}}} is not a plain column name: a field is "
                         "{column}, without '.', '[', '!' or ':'")
    return template


def _distinct_list(item: Any) -> Any:
    """A non-empty list of ``item``s, none repeated."""
    return Annotated[list[item], Field(min_length=1),
                     rule(lambda items: len(set(items)) == len(items), "repeats a value")]


Words = _distinct_list(Text)
LabelWord = Annotated[Text, rule(lambda word: len(word.split()) == 1, "must be a single word, "
                                 "as the verbalizer reads one token per class")]
DataFile = Annotated[Text, rule(lambda file: Path(file).suffix in FILE_SUFFIXES,
                                f"must end in one of {', '.join(FILE_SUFFIXES)}")]
FolderName = Annotated[Text, rule(lambda name: name.translate(_SEPARATORS).isalnum(),
                                  "may only hold letters, digits, '_', '-' and '.'")]


class _Holdout(Strict):
    file: Text
    eval_fraction: float = Field(gt=0, lt=1)
    seed: int = 0


class _FilesHoldout(Strict):
    eval_fraction: float = Field(HELD_OUT, gt=0, lt=1)
    seed: int = 0


class _Local(Strict):
    folder: FolderName
    format: Literal[FORMATS]
    files: dict[str, Text] | None = Field(None, description="map splits to file names in the "
                                          "folder, e.g. {train: train.tsv, eval: dev.tsv}")
    holdout: _Holdout | None = None
    columns: dict[str, Text] | None = None
    label_map: dict[Any, Text] | None = Field(None, min_length=1)


class _Source(Strict):
    hub: Text | None = None
    config: Text | None = None
    revision: Text | None = None
    data_dir: Text | None = None
    splits: dict[str, Text] | None = None
    files: dict[str, DataFile] | None = None
    local: _Local | None = None
    holdout: _FilesHoldout | None = Field(None, description="with one file in source.files: "
                                          "{eval_fraction: 0.2, seed: 0}")


# One word list per backbone family.
_LabelWords = create_model("LabelWords", __base__=Strict, **{
    family: (_distinct_list(LabelWord) | None, None) for family in BACKBONE_FAMILIES})


class _Task(Strict):
    name: FolderName = Field(description="it names the data folder <data-dir>/<name>/")
    type: Text
    kind: Literal[KINDS] | None = None
    source: _Source = Field(description="give source: {hub: <dataset id>, ...} and/or source: "
                                        "{files: {train: ..., eval: ...}}")
    template: Annotated[Text, AfterValidator(_template)] = Field(
        description="name columns in braces, e.g. \"{premise} ? {hypothesis}\"; write {{ for a "
                    "literal brace")
    label_column: Text | None = None
    classes: Words | None = None
    label_map: dict[Any, Text] | None = Field(
        None, min_length=1, description="map data label values to class names, e.g. "
                                        "label_map: {POS: positive, NEG: negative}")
    label_words: _LabelWords | None = None
    target_column: Text | None = None
    metrics: Words | None = None
    primary_metric: Text | None = None
    backbones: Literal["any", "seq2seq"] | None = None


def parse_task(data: Any, *, where: str, base_dir: Path | None = None) -> TaskRecord:
    """Validate one task mapping. ``base_dir`` resolves relative ``source.files`` paths."""
    with located(where, DOCS):
        return _record(validate(_Task, data), base_dir)


def parse_file(path: Path) -> TaskRecord:
    """A user's task YAML (one task mapping)."""
    data = read_yaml(path, "task file", _Task.model_fields)
    return parse_task(data, where=f"task file {path}", base_dir=path.parent)


def _fail(problem: str, fix: str) -> NoReturn:
    raise PtdistError(f"{problem}; {fix}")


def _record(task: _Task, base_dir: Path | None) -> TaskRecord:
    kind = _kind(task)
    source = _source(task.source, base_dir)
    backbones = task.backbones or ("any" if kind == "classification" else "seq2seq")
    if kind == "generation" and backbones != "seq2seq":
        _fail("a generation task must set backbones: seq2seq",
              "an encoder MLM cannot decode text; remove the key or set it to seq2seq")
    columns = template_columns(task.template)
    answer = _classification(task, backbones, columns) if kind == "classification" else \
        _generation(task, columns)
    metrics, primary = _metrics(task, kind, len(answer.get("classes", ())))
    return TaskRecord(name=task.name, type=task.type, kind=kind, source=source,
                      template=task.template, metrics=metrics, primary_metric=primary,
                      backbones=backbones, **answer)


def _kind(task: _Task) -> str:
    known = TYPE_KINDS.get(task.type)
    if task.kind is None and known is None:
        _fail(f"type '{task.type}' is not one of {', '.join(TYPE_KINDS)}",
              "use one of them, or also set kind: classification|generation")
    if task.kind is not None and known is not None and task.kind != known:
        _fail(f"type '{task.type}' is a {known} type but kind says '{task.kind}'",
              "remove 'kind' (the type decides it)")
    return task.kind or known


def _source(source: _Source, base_dir: Path | None) -> Source:
    files = source.files or {}
    if base_dir is not None:
        files = {k: str((base_dir / Path(v).expanduser()).resolve()) for k, v in files.items()}
    if not source.hub and not files and not source.local:
        _fail("source names no data", "give source.hub (a `datasets` id), source.files or "
              "source.local")
    # Without a hub id the split mapping has nothing to map to.
    splits = {**DEFAULT_SPLITS, **(source.splits or {})} if source.hub else {}
    return Source(hub=source.hub, config=source.config, revision=source.revision,
                  data_dir=source.data_dir, splits=splits, files=files,
                  local=_local(source.local) if source.local else None,
                  holdout=_files_holdout(source, files))


def _files_holdout(source: _Source, files: dict[str, str]) -> Holdout | None:
    """The held-out split of a ``files`` source with one file and no hub id (which would give
    the other split); two splits that name one file are refused: a prompt would be scored on
    the rows it was trained on."""
    same = [split for split, path in files.items() if list(files.values()).count(path) > 1]
    if same:
        _fail(f"source.files.{same[0]} and source.files.{same[1]} name the same file "
              f"{files[same[0]]}, so evaluation would read the training rows",
              "give a held-out file, or give the file once (as train) and ptdist holds out a "
              f"seeded {HELD_OUT * 100:.0f} % of its rows for eval (source.holdout: "
              f"{{eval_fraction: {HELD_OUT}, seed: 0}})")
    if len(files) != 1 or source.hub:
        if source.holdout is not None:
            _fail("source.holdout splits the one file of source.files",
                  "give exactly one file in source.files and no hub id, or remove holdout")
        return None
    holdout = source.holdout or _FilesHoldout()
    return Holdout(next(iter(files.values())), holdout.eval_fraction, holdout.seed)


def _local(local: _Local) -> LocalSource:
    if (local.files is None) == (local.holdout is None):
        _fail("source.local needs exactly one of 'files' and 'holdout'",
              "map splits to files (files: {train: ..., eval: ...}), or split one file "
              "(holdout: {file: ..., eval_fraction: 0.2, seed: 0})")
    holdout = Holdout(**local.holdout.model_dump()) if local.holdout else None
    # Label values compared as text, as label_map's (a file may hold "-1" where YAML reads -1).
    label_map = {str(k): v for k, v in local.label_map.items()} if local.label_map else None
    return LocalSource(folder=local.folder, format=local.format, files=local.files or {},
                       holdout=holdout, columns=local.columns or {}, label_map=label_map)


def _classification(task: _Task, backbones: str, columns: tuple[str, ...]) -> dict[str, Any]:
    if task.target_column is not None:
        _fail("'target_column' is for generation tasks",
              "a classification task reads its answer from label_column")
    if task.classes is None:
        _fail("missing required key 'classes'", "list the class names in label-index order")
    classes = tuple(task.classes)
    label_column = task.label_column or "label"
    if label_column in columns:
        _fail(f"template reads the label column '{label_column}'",
              "the input would contain the answer; remove it from the template")
    label_map = task.label_map
    for where, mapping in (("label_map", label_map),
                           ("source.local.label_map", task.source.local and
                            task.source.local.label_map)):
        wrong = [v for v in (mapping or {}).values() if v not in classes]
        if wrong:
            _fail(f"{where} maps to {wrong[0]!r}, which is not a class",
                  f"map to one of {', '.join(classes)}")
    if label_map is not None:
        # Keys compared as text: YAML reads `1:` as an int while a CSV may hold "1".
        label_map = {str(k): v for k, v in label_map.items()}
    given = task.label_words.model_dump(exclude_none=True) if task.label_words else {}
    needed = BACKBONE_FAMILIES if backbones == "any" else ("t5",)
    if any(family not in given for family in needed):
        _fail(f"label_words must give one word per class for {' and '.join(needed)}",
              "write label_words: {mlm: [...], t5: [...]} in the order of 'classes'")
    for family, words in given.items():
        if len(words) != len(classes):
            _fail(f"label_words.{family} has {len(words)} words for {len(classes)} classes "
                  f"({', '.join(classes)})", "give exactly one word per class, in class order")
    return {"label_column": label_column, "classes": classes, "label_map": label_map,
            "label_words": {family: tuple(words) for family, words in given.items()}}


def _generation(task: _Task, columns: tuple[str, ...]) -> dict[str, Any]:
    for key in ("classes", "label_column", "label_map", "label_words"):
        if getattr(task, key) is not None:
            _fail(f"'{key}' is for classification tasks",
                  "a generation task reads its answer(s) from target_column")
    target = task.target_column
    if target is None:
        _fail("missing required key 'target_column'",
              "name the column (or column.field) holding the answer(s)")
    if target.split(".")[0] in columns:
        _fail(f"template reads the target column '{target.split('.')[0]}'",
              "the input would contain the answer; remove it from the template")
    return {"target_column": target}


def _metrics(task: _Task, kind: str, n_classes: int) -> tuple[tuple[str, ...], str]:
    allowed = CLASSIFICATION_METRICS if kind == "classification" else GENERATION_METRICS
    if task.metrics is None and kind == "generation":
        _fail("missing required key 'metrics'", f"add metrics: [...] from {', '.join(allowed)}")
    metrics = tuple(task.metrics or ("accuracy",))
    bad = [m for m in metrics if m not in allowed]
    if bad:
        _fail(f"metric '{bad[0]}' is not a {kind} metric", f"use {', '.join(allowed)}")
    if kind == "classification" and "f1" in metrics and n_classes != 2:
        _fail(f"metric 'f1' is the binary F1 of the positive class, but there are "
              f"{n_classes} classes", "use macro_f1")
    primary = task.primary_metric or metrics[0]
    if primary not in metrics:
        _fail(f"primary_metric '{primary}' is not in metrics {list(metrics)}",
              "add it to metrics or pick one of them")
    return metrics, primary
