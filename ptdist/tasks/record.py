"""A task is one small declarative record: where its data lives, how a row becomes input text,
what the answer is, and how predictions are scored. Built-in and user tasks are the same record,
read from the same YAML format (parsing.py)."""

from __future__ import annotations

import re
import string
from dataclasses import dataclass, field

# The paper's task types; each fixes the kind of output. A user task may name another type if
# it also says its kind.
TYPE_KINDS = {
    "sentiment": "classification",
    "nli": "classification",
    "ethics": "classification",
    "paraphrase": "classification",
    "qa": "generation",
    "summarization": "generation",
}
KINDS = ("classification", "generation")
BACKBONE_FAMILIES = ("mlm", "t5")  # label-word lists, one per backbone family


@dataclass(frozen=True)
class Holdout:
    """Train and eval split off one file (a standard data file, or the one file of a ``files``
    source): a seeded shuffle (``numpy.random.default_rng(seed)
    .permutation``) of its rows; the first ``int(n x eval_fraction)`` are eval, the rest train,
    each kept in file order."""

    file: str
    eval_fraction: float
    seed: int = 0


@dataclass(frozen=True)
class LocalSource:
    """A task's data in its standard distribution format (`ptdist.tasks.formats`), in a folder
    ``<data dir>/<folder>/``: ``files`` maps ptdist split names to file names there (or a
    ``holdout`` splits one file), ``columns`` renames the file's columns to the template's,
    ``label_map`` maps the file's label values to class names."""

    folder: str
    format: str
    files: dict[str, str] = field(default_factory=dict)
    holdout: Holdout | None = None
    columns: dict[str, str] = field(default_factory=dict)
    label_map: dict[str, str] | None = None

    @property
    def splits(self) -> tuple[str, ...]:
        return ("train", "eval") if self.holdout else tuple(self.files)


@dataclass(frozen=True)
class Source:
    """Where a task's rows come from. ``splits`` maps ptdist split names (train, eval) to the
    hub dataset's split names; ``files`` maps them to local files (absolute paths); ``local``
    names the task's standard data files in a data folder. ``holdout`` splits train and eval
    off the one file of a ``files`` source without a hub id."""

    hub: str | None = None
    config: str | None = None
    revision: str | None = None  # e.g. "refs/convert/parquet" for repos that still hold a script
    data_dir: str | None = None  # a subfolder of the hub repo (one config of a parquet export)
    splits: dict[str, str] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)
    local: LocalSource | None = None
    holdout: Holdout | None = None


@dataclass(frozen=True)
class TaskRecord:
    name: str
    type: str
    kind: str  # "classification" or "generation"
    source: Source
    template: str  # str.format over the row's columns; the backbone adds mask and prompt
    metrics: tuple[str, ...]
    primary_metric: str  # the score for keep-best and early stopping
    backbones: str = "any"  # "any" or "seq2seq" (an MLM cannot decode text)
    label_column: str | None = None
    classes: tuple[str, ...] = ()  # class names in label-index order
    label_map: dict[str, str] | None = None  # str(data label value) -> class name
    label_words: dict[str, tuple[str, ...]] = field(default_factory=dict)  # family -> per class
    target_column: str | None = None  # generation: column, or column.field, of the answer(s)

    @property
    def is_classification(self) -> bool:
        return self.kind == "classification"

    @property
    def input_columns(self) -> tuple[str, ...]:
        """The data columns the template reads."""
        return template_columns(self.template)

    @property
    def required_columns(self) -> tuple[str, ...]:
        """Every column a data file must have for this task."""
        answer = self.label_column if self.is_classification else _root(self.target_column or "")
        return tuple(dict.fromkeys([*self.input_columns, answer]))

    def words_for(self, backbone_kind: str) -> list[str] | None:
        """The verbalizer a backbone of ``backbone_kind`` ("mlm" or "seq2seq") reads this task
        with: one label word per class; None for a generation task (it decodes text)."""
        if not self.is_classification:
            return None
        return list(self.label_words["mlm" if backbone_kind == "mlm" else "t5"])

    @property
    def source_label(self) -> str:
        """A short description of where the data comes from (for listings)."""
        src = self.source
        if not src.hub:
            return f"local files ({src.local.folder}/)" if src.local else "local files"
        return src.hub + (f" [{src.config}]" if src.config else "")


_FIELD_ROOT = re.compile(r"[.\[]")


def _root(field_name: str) -> str:
    return _FIELD_ROOT.split(field_name, maxsplit=1)[0]


def template_fields(template: str) -> list[tuple[str, str | None, str]]:
    """(field name, conversion, format spec) of each replacement field of a str.format
    template, in order. Raises ValueError for a malformed template."""
    return [(f, conversion, spec) for _, f, spec, conversion in string.Formatter().parse(template)
            if f is not None]


def template_columns(template: str) -> tuple[str, ...]:
    """Columns named by a str.format template, in order. Raises ValueError for a malformed
    template."""
    return tuple(dict.fromkeys(_root(f) for f, _, _ in template_fields(template)))
