"""The paper's tasks from their standard data files (`source.local` of the built-in records):
exact row and class counts of every task built from ../shared/data (the counts its README
states, made with quoting off), the QNLI holdout, the CoNLL-2003 NLI recast, and the format
readers' errors on hand-made files."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from ptdist.errors import PtdistError
from ptdist.store import Store
from ptdist.tasks import data_origin, get_task, load_split
from ptdist.tasks.formats import read_glue_tsv, read_semeval_seg, read_tweeteval
from ptdist.training import TrainConfig
from ptdist.training.run import plan_run

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
RECAST = str(REPO / "examples" / "recast_ner.yaml")
needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason=f"{SHARED} (the paper's task "
                                  "files, beside the checkout in CI) is not on this machine")

# (task, split): rows, {class: rows}. From ../shared/data/README.md, except QNLI's split of
# its dev set (the record's holdout rule, counted once) and the CoNLL recast (2 pairs per PER,
# LOC and ORG mention: the README's entity counts).
COUNTS = {
    ("sst2", "train"): (67349, {"negative": 29780, "positive": 37569}),
    ("sst2", "eval"): (872, {"negative": 428, "positive": 444}),
    ("mrpc", "train"): (3667, {"equivalent": 2473, "not_equivalent": 1194}),
    ("mrpc", "eval"): (408, {"equivalent": 279, "not_equivalent": 129}),
    ("qnli", "train"): (4371, {"entailment": 2140, "not_entailment": 2231}),
    ("qnli", "eval"): (1092, {"entailment": 562, "not_entailment": 530}),
    ("ethics_deontology", "train"): (18164, {"unreasonable": 8374, "reasonable": 9790}),
    ("ethics_deontology", "eval"): (3596, {"unreasonable": 1810, "reasonable": 1786}),
    ("ethics_deontology", "test"): (3536, {"unreasonable": 1773, "reasonable": 1763}),
    ("ethics_justice", "train"): (21791, {"unreasonable": 9961, "reasonable": 11830}),
    ("ethics_justice", "eval"): (2704, {"unreasonable": 1350, "reasonable": 1354}),
    ("ethics_justice", "test"): (2052, {"unreasonable": 1002, "reasonable": 1050}),
    ("laptop", "train"): (2328, {"positive": 994, "neutral": 464, "negative": 870}),
    ("laptop", "eval"): (638, {"positive": 341, "neutral": 169, "negative": 128}),
    ("restaurant", "train"): (3608, {"positive": 2164, "neutral": 637, "negative": 807}),
    ("restaurant", "eval"): (1120, {"positive": 728, "neutral": 196, "negative": 196}),
    ("tweet_eval_sentiment", "train"): (12284, {"negative": 3972, "neutral": 5937,
                                                "positive": 2375}),
    ("tweet_eval_sentiment", "eval"): (2000, {"negative": 312, "neutral": 869, "positive": 819}),
    (RECAST, "train"): (40122, {"entailment": 20061, "not_entailment": 20061}),
    (RECAST, "eval"): (10040, {"entailment": 5020, "not_entailment": 5020}),
    (RECAST, "test"): (9892, {"entailment": 4946, "not_entailment": 4946}),
}


@needs_shared
@pytest.mark.parametrize("task,split", list(COUNTS), ids=lambda v: Path(str(v)).stem)
def test_every_task_built_from_the_shared_files_has_its_exact_rows_and_classes(task, split):
    record = get_task(task)
    assert data_origin(record, split, str(SHARED)).kind == "local"
    rows = load_split(record, split, data_dir=str(SHARED))
    count, classes = COUNTS[(task, split)]
    assert len(rows) == count
    assert dict(Counter(record.classes[label] for label in rows["label"])) == classes


@needs_shared
def test_rows_read_back_as_their_files_hold_them(monkeypatch):
    monkeypatch.setenv("PTDIST_DATA_DIR", str(SHARED))  # the environment, not an argument
    first = {name: load_split(get_task(name), split)[0]
             for name, split in (("mrpc", "train"), ("laptop", "train"),
                                 ("tweet_eval_sentiment", "eval"), ("ethics_deontology",
                                                                    "eval"))}
    # MRPC: the BOM-led header's "#1 String"/"#2 String" columns, quotes kept as text.
    assert first["mrpc"]["text"].startswith('Amrozi accused his brother , whom he called " the '
                                            'witness " , of deliberately distorting')
    assert first["mrpc"]["label"] == 1
    # SemEval: the aspect term put back for $T$, then the template's "aspect:" part.
    assert first["laptop"]["text"] == ("I charge it at night and skip taking the cord with me "
                                       "because of the good battery life . aspect: cord")
    assert first["laptop"]["label"] == 1  # polarity 0: neutral
    # TweetEval: val is the eval split; the trailing space of every line is gone.
    assert first["tweet_eval_sentiment"]["text"] == ("Dark Souls 3 April Launch Date Confirmed "
                                                     "With New Trailer: Embrace the darkness.")
    assert first["ethics_deontology"]["text"].startswith("Aren't you supposed to be painting")


@needs_shared
def test_the_qnli_holdout_is_seeded_disjoint_and_complete():
    task = get_task("qnli")
    train = load_split(task, "train", data_dir=str(SHARED))["text"]
    held = load_split(task, "eval", data_dir=str(SHARED))["text"]
    whole = read_glue_tsv(SHARED / "qnli" / "dev.tsv")
    assert len(held) == int(len(whole["label"]) * 0.2) == 1092
    assert Counter(train) + Counter(held) == Counter(
        f"{q} {s}" for q, s in zip(whole["question"], whole["sentence"]))
    assert held == load_split(task, "eval", data_dir=str(SHARED))["text"]  # the same each time


@needs_shared
def test_runs_on_the_standard_files_are_told_apart_from_hub_runs(tmp_path):
    store = Store(tmp_path)
    config = TrainConfig(model="tiny-roberta", task="tweet_eval_sentiment")
    hub = plan_run(config, store).prompt_id
    local = plan_run(TrainConfig(**{**config.to_dict(), "data_dir": str(SHARED)}),
                     store).prompt_id
    elsewhere = plan_run(TrainConfig(**{**config.to_dict(), "data_dir": str(tmp_path)}),
                         store).prompt_id
    assert local != hub == elsewhere  # a folder without the task's files changes nothing


def test_without_the_files_the_hub_is_tried_and_the_error_names_what_was_looked_for(tmp_path):
    with pytest.raises(PtdistError) as err:
        load_split(get_task("laptop"), "train", data_dir=str(tmp_path))
    message = str(err.value)
    assert "tomaarsen/setfit-absa-semeval-laptops" in message
    assert f"{tmp_path}/laptop/Laptops_Train.xml.seg" in message


def test_the_format_readers_name_a_malformed_file(tmp_path):
    seg = tmp_path / "bad.xml.seg"
    seg.write_text("a sentence without the placeholder\nterm\n1\n")
    with pytest.raises(PtdistError, match=r"line 1: the sentence holds \$T\$ 0 times"):
        read_semeval_seg(seg)
    seg.write_text("a $T$ here\nterm\n")
    with pytest.raises(PtdistError, match="not a multiple of 3"):
        read_semeval_seg(seg)
    (tmp_path / "val_text.txt").write_text("one \ntwo \n")
    (tmp_path / "val_labels.txt").write_text("0\n")
    with pytest.raises(PtdistError, match="has 2 lines but .*val_labels.txt 1"):
        read_tweeteval(tmp_path / "val")
    tsv = tmp_path / "dev.tsv"
    tsv.write_text('\ufeffsentence\tlabel\nsays "hi\t1\nshort\n')
    with pytest.raises(PtdistError, match="data row 2 has 1 fields, the header 2"):
        read_glue_tsv(tsv)
    tsv.write_text('\ufeffsentence\tlabel\nsays "hi\t1\n')
    assert read_glue_tsv(tsv) == {"sentence": ['says "hi'], "label": ["1"]}  # BOM, quoting off


def test_a_local_source_is_checked_when_the_record_is_read(tmp_path):
    path = tmp_path / "t.yaml"
    base = ("name: t\ntype: sentiment\ntemplate: '{text}'\nclasses: [negative, positive]\n"
            "label_words: {mlm: [bad, good], t5: [bad, good]}\n")
    path.write_text(base + "source: {local: {folder: t, format: xml}}\n")
    with pytest.raises(PtdistError, match="format"):
        get_task(str(path))
    path.write_text(base + "source: {local: {folder: t, format: csv}}\n")
    with pytest.raises(PtdistError, match="exactly one of 'files' and 'holdout'"):
        get_task(str(path))
    path.write_text(base + "source: {local: {folder: t, format: csv, files: {train: a.csv}, "
                           "label_map: {-1: awful}}}\n")
    with pytest.raises(PtdistError, match="source.local.label_map maps to 'awful'"):
        get_task(str(path))
