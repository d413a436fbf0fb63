"""Readers of the standard file formats the paper's data sets are distributed in, as a
built-in record's ``source.local`` names them (docs/tasks.md, "Standard data files").

Each reader turns one split's file(s) into columns of strings (``{column: [values]}``); the
loader then applies the record's column renames, label map and template like for any source.

    glue_tsv     GLUE's TSV: tab-separated with a header row, quoting off (the text holds
                 literal '"'), an optional UTF-8 BOM (MRPC's header has one)
    csv          comma-separated with standard double-quote quoting and a header (ETHICS);
                 every value stays text (no NA guessing)
    semeval_seg  SemEval-2014 Task 4 as ABSA-PyTorch ships it (``*.xml.seg``): three lines per
                 example, the sentence with the aspect term replaced by ``$T$``, the aspect
                 term, the polarity (-1, 0, 1) -> columns text (the sentence restored), span,
                 label
    tweeteval    TweetEval: ``<split>_text.txt`` (one tweet per line, a trailing space
                 stripped) and ``<split>_labels.txt`` (one label per line); the split's file
                 name is its prefix -> columns text, label
    conll_nli    CoNLL-2003 (``token tag ...`` per line, blank line between sentences) recast
                 as NLI pairs about entity types (`ptdist.tasks.recast`)
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path

from ptdist.errors import PtdistError

Columns = dict[str, list[str]]
ASPECT = "$T$"


def read_glue_tsv(path: Path) -> Columns:
    with open(path, encoding="utf-8-sig", newline="") as f:
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    return _table(path, rows)


def read_csv(path: Path) -> Columns:
    with open(path, encoding="utf-8-sig", newline="") as f:
        rows = list(csv.reader(f))
    return _table(path, rows)


def _table(path: Path, rows: list[list[str]]) -> Columns:
    if not rows:
        raise PtdistError(f"{path} is empty; expected a header row and data rows")
    header, body = rows[0], [r for r in rows[1:] if r]
    short = next((i for i, r in enumerate(body) if len(r) != len(header)), None)
    if short is not None:
        raise PtdistError(f"{path}: data row {short + 1} has {len(body[short])} fields, the "
                          f"header {len(header)}; check the delimiter and quoting of the file")
    return {name: [r[k] for r in body] for k, name in enumerate(header)}


def read_semeval_seg(path: Path) -> Columns:
    lines = path.read_text(encoding="utf-8").splitlines()
    if len(lines) % 3:
        raise PtdistError(f"{path} has {len(lines)} lines, not a multiple of 3 (sentence with "
                          f"{ASPECT}, aspect term, polarity per example)")
    out: Columns = {"text": [], "span": [], "label": []}
    for k in range(0, len(lines), 3):
        sentence, aspect, polarity = (line.strip() for line in lines[k:k + 3])
        if sentence.count(ASPECT) != 1:
            raise PtdistError(f"{path} line {k + 1}: the sentence holds {ASPECT} "
                              f"{sentence.count(ASPECT)} times, not once")
        out["text"].append(sentence.replace(ASPECT, aspect))
        out["span"].append(aspect)
        out["label"].append(polarity)
    return out


def read_tweeteval(prefix: Path) -> Columns:
    texts, labels = (prefix.with_name(f"{prefix.name}_{part}.txt") for part in ("text", "labels"))
    text = [line.strip() for line in texts.read_text(encoding="utf-8").splitlines()]
    label = [line.strip() for line in labels.read_text(encoding="utf-8").splitlines()]
    if len(text) != len(label):
        raise PtdistError(f"{texts} has {len(text)} lines but {labels} {len(label)}; they "
                          "must align line by line")
    return {"text": text, "label": label}


def split_files(fmt: str, folder: Path, name: str) -> list[Path]:
    """The files a split named ``name`` in ``folder`` is read from, in format ``fmt``."""
    if fmt == "tweeteval":
        return [folder / f"{name}_{part}.txt" for part in ("text", "labels")]
    return [folder / name]


def reader(fmt: str) -> Callable[[Path], Columns]:
    """The reader of format ``fmt`` (one of `FORMATS`)."""
    from ptdist.tasks.recast import read_conll_nli

    return {"glue_tsv": read_glue_tsv, "csv": read_csv, "semeval_seg": read_semeval_seg,
            "tweeteval": read_tweeteval, "conll_nli": read_conll_nli}[fmt]


FORMATS = ("glue_tsv", "csv", "semeval_seg", "tweeteval", "conll_nli")
