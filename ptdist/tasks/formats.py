"""Every data file format ptdist reads, under one policy, so that no format misses what another
learned. By suffix (a task's data folder ``<data_dir>/<task>/<split>.*``, a record's
``source.files``):

    .jsonl       one JSON object per line; struct columns are nested objects
    .json        a JSON array of objects (as users export them, and `datasets` reads them), or
                 JSON lines
    .csv         comma-separated with a header row and standard double-quote quoting; every
                 value stays text (no NA guessing)
    .parquet     any Parquet table

and the standard formats a built-in record's ``source.local`` names (docs/tasks.md, "Standard
data files"), each turning one split's file(s) into columns of strings:

    glue_tsv     GLUE's TSV: tab-separated with a header row, quoting off (the text holds
                 literal '"'), an optional UTF-8 BOM (MRPC's header has one)
    csv          as .csv above (ETHICS)
    semeval_seg  SemEval-2014 Task 4 as ABSA-PyTorch ships it (``*.xml.seg``): three lines per
                 example, the sentence with the aspect term replaced by ``$T$``, the aspect
                 term, the polarity (-1, 0, 1) -> columns text (the sentence restored), span,
                 label
    tweeteval    TweetEval: ``<split>_text.txt`` (one tweet per line, a trailing space
                 stripped) and ``<split>_labels.txt`` (one label per line); the split's file
                 name is its prefix -> columns text, label
    conll_nli    CoNLL-2003 (``token tag ...`` per line, blank line between sentences) recast
                 as NLI pairs about entity types (`ptdist.tasks.recast`)

The policy, the same for every format:
- a path that is not a regular file (a folder, a FIFO) is refused by its type before it is
  opened (`ptdist.files`);
- text is UTF-8 (a leading BOM is dropped); a file that is not is one error naming its first bad
  byte's offset and how to convert it;
- a field may be as long as the file: there is no field size limit to trip over;
- a malformed row is one error naming the file and the row's line (a JSON array: its item);
- a file without a single row is refused.
The loader then applies the record's column renames, label map and template like for any
source.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ptdist.errors import PtdistError
from ptdist.files import read_text, require_file

Columns = dict[str, list]
ASPECT = "$T$"
WHAT = "data file"


def read_jsonl(path: Path) -> Columns:
    return _rows_to_columns(path, _json_lines(path, read_text(path, WHAT)))


def read_json(path: Path) -> Columns:
    """A JSON array of row objects, or (like `datasets`) JSON lines in a .json file."""
    text = read_text(path, WHAT)
    if not text.lstrip().startswith("["):
        return _rows_to_columns(path, _json_lines(path, text))
    items = _json(path, "", text)
    return _rows_to_columns(path, [_row(path, f"item {k}", item)
                                   for k, item in enumerate(items, 1)])


def _json_lines(path: Path, text: str) -> list[dict]:
    # JSON text may hold U+2028 and other characters str.splitlines() breaks at: lines end at
    # a newline only.
    return [_row(path, f"line {number}", _json(path, f" line {number}", line))
            for number, line in enumerate(text.split("\n"), 1) if line.strip()]


def _json(path: Path, where: str, text: str) -> Any:
    try:
        return json.loads(text)
    except RecursionError:
        raise PtdistError(f"{path}{where} nests its values deeper than ptdist reads; a data "
                          "row is an object of plain values, lists and objects") from None
    except ValueError as exc:  # JSONDecodeError is a ValueError
        raise PtdistError(f"{path}{where} is not valid JSON ({exc}); fix or remove it") from None


def _row(path: Path, where: str, value: Any) -> dict:
    if not isinstance(value, dict):
        raise PtdistError(f"{path} {where} is {type(value).__name__} {str(value)[:60]!r}, not "
                          "an object of column values; every row is one JSON object")
    return value


def _rows_to_columns(path: Path, rows: list[dict]) -> Columns:
    """Rows as columns: every key any row has, None where a row lacks it."""
    if not rows:
        raise PtdistError(f"{path} holds no rows; give one JSON object per row")
    names = list(dict.fromkeys(key for row in rows for key in row))
    return {name: [row.get(name) for row in rows] for name in names}


def read_csv(path: Path) -> Columns:
    return _delimited(path, ",", csv.QUOTE_MINIMAL)


def read_glue_tsv(path: Path) -> Columns:
    return _delimited(path, "\t", csv.QUOTE_NONE)


def read_parquet(path: Path) -> Columns:
    import pyarrow as pa
    import pyarrow.parquet as pq

    require_file(path, WHAT)
    try:
        table = pq.read_table(path)
    except (OSError, ValueError, pa.ArrowException) as exc:
        raise PtdistError(f"cannot read {path} as Parquet ({' '.join(str(exc).split())[:200]}); "
                          "give a Parquet file, or data in another format with its suffix "
                          f"({', '.join(FILE_READERS)})") from None
    if not table.num_rows:
        raise PtdistError(f"{path} holds no rows")
    return table.to_pydict()


def _delimited(path: Path, delimiter: str, quoting: int) -> Columns:
    """A table with a header row; blank lines are skipped, a row of another width than the
    header is named by its line."""
    text = read_text(path, WHAT)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, quoting=quoting)
    header, body, row = None, [], 0
    with _field_limit(len(text)):
        try:
            for fields in reader:
                if not fields:
                    continue
                if header is None:
                    header = fields
                    continue
                row += 1
                if len(fields) != len(header):
                    raise PtdistError(
                        f"{path}: data row {row} has {len(fields)} fields, the header "
                        f"{len(header)} (line {reader.line_num}); check the delimiter and "
                        "quoting of the file")
                body.append(fields)
        except csv.Error as exc:
            raise PtdistError(f"{path} line {reader.line_num}: {exc}; check the quoting of the "
                              "file") from None
    if header is None:
        raise PtdistError(f"{path} is empty; expected a header row and data rows")
    return {name: [r[k] for r in body] for k, name in enumerate(header)}


@contextmanager
def _field_limit(size: int) -> Iterator[None]:
    """csv's field size limit (128 KiB by default) raised to the text's length: a field can be
    no longer than the file, so none is refused for its size."""
    before = csv.field_size_limit()
    csv.field_size_limit(max(before, size + 1))
    try:
        yield
    finally:
        csv.field_size_limit(before)


def read_semeval_seg(path: Path) -> Columns:
    lines = read_text(path, WHAT).splitlines()
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
    text = [line.strip() for line in read_text(texts, WHAT).splitlines()]
    label = [line.strip() for line in read_text(labels, WHAT).splitlines()]
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
# No .tsv: a GLUE download keeps <data_dir>/sst2/train.tsv, which is the standard file of a
# record's source.local (read with its column renames), not a split file of ptdist's layout.
FILE_READERS: dict[str, Callable[[Path], Columns]] = {
    ".jsonl": read_jsonl, ".json": read_json, ".csv": read_csv, ".parquet": read_parquet}
