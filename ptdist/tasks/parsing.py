"""Read and validate task YAML: the built-ins and a user's file go through the same checks, and
each mistake stops with one message naming the file, the key or value, and the fix."""

from __future__ import annotations

from pathlib import Path
from typing import Any, NoReturn

import yaml

from ptdist.errors import PtdistError
from ptdist.tasks.metrics import CLASSIFICATION_METRICS, GENERATION_METRICS
from ptdist.tasks.record import (BACKBONE_FAMILIES, KINDS, TYPE_KINDS, Source, TaskRecord,
                                 template_columns)

TASK_KEYS = ("name", "type", "kind", "source", "template", "label_column", "classes",
             "label_map", "label_words", "target_column", "metrics", "primary_metric",
             "backbones")
SOURCE_KEYS = ("hub", "config", "revision", "data_dir", "splits", "files")
FILE_SUFFIXES = (".jsonl", ".csv", ".parquet")
DEFAULT_SPLITS = {"train": "train", "eval": "validation"}


class _Spec:
    """Helpers bound to one task mapping, so every error names where it came from."""

    def __init__(self, data: dict, where: str):
        self.data, self.where = data, where

    def fail(self, problem: str, fix: str) -> NoReturn:
        raise PtdistError(f"{self.where}: {problem}; {fix} (see docs/tasks.md)")

    def text(self, key: str, value: Any = None, *, required: bool = False) -> str | None:
        """A string value: ``value`` if given, else the task's own ``key``."""
        value = self.data.get(key) if value is None else value
        if value is None:
            if required:
                self.fail(f"missing required key '{key}'", f"add '{key}:' to the task")
            return None
        if not isinstance(value, str) or not value.strip():
            self.fail(f"'{key}' must be a non-empty string, got {value!r}", f"write {key}: <text>")
        return value

    def words(self, key: str, value: Any) -> tuple[str, ...]:
        if not isinstance(value, list) or not value or not all(
                isinstance(w, str) and w.strip() for w in value):
            self.fail(f"'{key}' must be a non-empty list of strings, got {value!r}",
                      f"write {key}: [a, b, ...]")
        if len(set(value)) != len(value):
            self.fail(f"'{key}' repeats a value: {value}", "list each value once")
        return tuple(value)


def parse_task(data: Any, *, where: str, base_dir: Path | None = None) -> TaskRecord:
    """Validate one task mapping. ``base_dir`` resolves relative ``source.files`` paths."""
    if not isinstance(data, dict):
        raise PtdistError(f"{where}: a task must be a mapping of keys (name, type, source, "
                          f"template, ...), got {type(data).__name__} (see docs/tasks.md)")
    spec = _Spec(data, where)
    unknown = [k for k in data if k not in TASK_KEYS]
    if unknown:
        spec.fail(f"unknown key '{unknown[0]}'", f"use only {', '.join(TASK_KEYS)}")
    name = spec.text("name", required=True)
    if not name.replace("_", "").replace("-", "").replace(".", "").isalnum():
        spec.fail(f"name {name!r} may only hold letters, digits, '_', '-' and '.'",
                  "it names the data folder <data-dir>/<name>/")
    task_type = spec.text("type", required=True)
    kind = _kind(spec, task_type)
    template = spec.text("template", required=True)
    try:
        columns = template_columns(template)
    except ValueError as exc:
        spec.fail(f"template {template!r} is not a valid format string ({exc})",
                  "name columns in braces, e.g. \"{premise} ? {hypothesis}\"; write {{ for a brace")
    if not columns or not all(c and not c.isdigit() for c in columns):
        spec.fail(f"template {template!r} must name the data's columns in braces",
                  "e.g. template: \"{sentence}\"")
    source = _source(spec, data.get("source"), base_dir)
    backbones = spec.text("backbones") or ("any" if kind == "classification" else "seq2seq")
    if backbones not in ("any", "seq2seq"):
        spec.fail(f"backbones '{backbones}' is not known", "use 'any' or 'seq2seq'")
    if kind == "generation" and backbones != "seq2seq":
        spec.fail("a generation task must set backbones: seq2seq",
                  "an encoder MLM cannot decode text; remove the key or set it to seq2seq")
    answer: dict[str, Any]
    if kind == "classification":
        answer = _classification(spec, backbones, columns)
    else:
        answer = _generation(spec, columns)
    metrics, primary = _metrics(spec, kind, len(answer.get("classes", ())))
    return TaskRecord(name=name, type=task_type, kind=kind, source=source, template=template,
                      metrics=metrics, primary_metric=primary, backbones=backbones, **answer)


def parse_file(path: Path) -> TaskRecord:
    """A user's task YAML (one task mapping)."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise PtdistError(f"cannot read task file {path}: {exc.strerror or exc}; check the "
                          "path") from None
    except yaml.YAMLError as exc:
        raise PtdistError(f"task file {path} is not valid YAML ({' '.join(str(exc).split())}); "
                          "fix the syntax (see docs/tasks.md)") from None
    return parse_task(data, where=f"task file {path}", base_dir=path.parent)


def _kind(spec: _Spec, task_type: str) -> str:
    kind = spec.text("kind")
    known = TYPE_KINDS.get(task_type)
    if kind is None and known is None:
        spec.fail(f"type '{task_type}' is not one of {', '.join(TYPE_KINDS)}",
                  "use one of them, or also set kind: classification|generation")
    if kind is not None and kind not in KINDS:
        spec.fail(f"kind '{kind}' is not known", f"use one of {', '.join(KINDS)}")
    if kind is not None and known is not None and kind != known:
        spec.fail(f"type '{task_type}' is a {known} type but kind says '{kind}'",
                  "remove 'kind' (the type decides it)")
    return kind or known


def _source(spec: _Spec, data: Any, base_dir: Path | None) -> Source:
    if not isinstance(data, dict):
        spec.fail("missing or malformed 'source'",
                  "give source: {hub: <dataset id>, ...} and/or source: {files: {train: ..., "
                  "eval: ...}}")
    unknown = [k for k in data if k not in SOURCE_KEYS]
    if unknown:
        spec.fail(f"unknown key 'source.{unknown[0]}'", f"use only {', '.join(SOURCE_KEYS)}")
    values = {k: spec.text(f"source.{k}", data.get(k))
              for k in ("hub", "config", "revision", "data_dir")}
    splits = dict(DEFAULT_SPLITS)
    splits.update(_split_map(spec, "source.splits", data.get("splits")))
    files = _split_map(spec, "source.files", data.get("files"))
    for split, file in files.items():
        if Path(file).suffix not in FILE_SUFFIXES:
            spec.fail(f"source.files.{split} '{file}' has an unsupported suffix",
                      f"use one of {', '.join(FILE_SUFFIXES)}")
    if base_dir is not None:
        files = {k: str((base_dir / Path(v).expanduser()).resolve()) for k, v in files.items()}
    if not values["hub"] and not files:
        spec.fail("source names no data", "give source.hub (a `datasets` id) or source.files")
    if not values["hub"]:
        splits = {}  # without a hub id the mapping has nothing to map to
    return Source(splits=splits, files=files, **values)


def _split_map(spec: _Spec, key: str, value: Any) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(
            isinstance(k, str) and isinstance(v, str) and v for k, v in value.items()):
        spec.fail(f"'{key}' must map split names to strings, got {value!r}",
                  f"write {key}: {{train: ..., eval: ...}}")
    return dict(value)


def _classification(spec: _Spec, backbones: str, columns: tuple[str, ...]) -> dict[str, Any]:
    if spec.data.get("target_column") is not None:
        spec.fail("'target_column' is for generation tasks",
                  "a classification task reads its answer from label_column")
    classes = spec.words("classes", spec.data.get("classes"))
    label_column = spec.text("label_column") or "label"
    if label_column in columns:
        spec.fail(f"template reads the label column '{label_column}'",
                  "the input would contain the answer; remove it from the template")
    label_map = spec.data.get("label_map")
    if label_map is not None:
        if not isinstance(label_map, dict) or not label_map:
            spec.fail(f"label_map must map data label values to class names, got {label_map!r}",
                      "write label_map: {POS: positive, NEG: negative}")
        wrong = [v for v in label_map.values() if v not in classes]
        if wrong:
            spec.fail(f"label_map maps to {wrong[0]!r}, which is not a class",
                      f"map to one of {', '.join(classes)}")
        # Keys compared as text: YAML reads `1:` as an int while a CSV may hold "1".
        label_map = {str(k): v for k, v in label_map.items()}
    words = spec.data.get("label_words")
    needed = BACKBONE_FAMILIES if backbones == "any" else ("t5",)
    if not isinstance(words, dict) or any(f not in words for f in needed):
        spec.fail(f"label_words must give one word per class for {' and '.join(needed)}",
                  "write label_words: {mlm: [...], t5: [...]} in the order of 'classes'")
    unknown = [f for f in words if f not in BACKBONE_FAMILIES]
    if unknown:
        spec.fail(f"unknown key 'label_words.{unknown[0]}'",
                  f"use only {', '.join(BACKBONE_FAMILIES)}")
    label_words = {}
    for family, family_words in words.items():
        ws = spec.words(f"label_words.{family}", family_words)
        if len(ws) != len(classes):
            spec.fail(f"label_words.{family} has {len(ws)} words for {len(classes)} classes "
                      f"({', '.join(classes)})", "give exactly one word per class, in class order")
        if any(len(w.split()) != 1 for w in ws):
            spec.fail(f"label_words.{family} {list(ws)} must be single words",
                      "the verbalizer reads one token per class")
        label_words[family] = ws
    return {"label_column": label_column, "classes": classes, "label_map": label_map,
            "label_words": label_words}


def _generation(spec: _Spec, columns: tuple[str, ...]) -> dict[str, Any]:
    for key in ("classes", "label_column", "label_map", "label_words"):
        if spec.data.get(key) is not None:
            spec.fail(f"'{key}' is for classification tasks",
                      "a generation task reads its answer(s) from target_column")
    target = spec.text("target_column", required=True)
    if target.split(".")[0] in columns:
        spec.fail(f"template reads the target column '{target.split('.')[0]}'",
                  "the input would contain the answer; remove it from the template")
    return {"target_column": target}


def _metrics(spec: _Spec, kind: str, n_classes: int) -> tuple[tuple[str, ...], str]:
    allowed = CLASSIFICATION_METRICS if kind == "classification" else GENERATION_METRICS
    if "metrics" not in spec.data and kind == "generation":
        spec.fail("missing required key 'metrics'", f"add metrics: [...] from {', '.join(allowed)}")
    metrics = spec.words("metrics", spec.data.get("metrics", ["accuracy"]))
    bad = [m for m in metrics if m not in allowed]
    if bad:
        spec.fail(f"metric '{bad[0]}' is not a {kind} metric", f"use {', '.join(allowed)}")
    if kind == "classification" and "f1" in metrics and n_classes != 2:
        spec.fail(f"metric 'f1' is the binary F1 of the positive class, but there are "
                  f"{n_classes} classes", "use macro_f1")
    primary = spec.text("primary_metric") or metrics[0]
    if primary not in metrics:
        spec.fail(f"primary_metric '{primary}' is not in metrics {list(metrics)}",
                  "add it to metrics or pick one of them")
    return metrics, primary
