"""The task registry: records, YAML validation, loading from local files, the hub-failure
message, and metrics against hand-computed values. Offline; real `datasets`, real files."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from ptdist.errors import PtdistError
from ptdist.tasks import TaskRecord, compute_metrics, get_task, list_tasks, load_split
from ptdist.tasks.record import TYPE_KINDS

NAMES = {"sst2", "imdb", "laptop", "restaurant", "movie_rationales", "tweet_eval_sentiment",
         "mnli", "qnli", "snli", "ethics_deontology", "ethics_justice", "qqp", "mrpc", "squad",
         "nq_open", "multi_news", "samsum"}


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def write_yaml(path: Path, body: dict) -> Path:
    path.write_text(yaml.safe_dump(body, sort_keys=False))
    return path


def nli_task(**overrides) -> dict:
    body = {
        "name": "my_nli", "type": "nli", "template": "{premise} ? {hypothesis}",
        "source": {"files": {"train": "data/train.jsonl", "eval": "data/dev.csv"}},
        "classes": ["entailment", "contradiction"],
        "label_words": {"mlm": ["yes", "no"], "t5": ["yes", "no"]},
        "metrics": ["accuracy", "f1"],
    }
    body.update(overrides)
    return body


# --- records ------------------------------------------------------------------------------

def test_builtin_records_are_the_papers_17_tasks_and_line_up():
    tasks = list_tasks()
    assert {t.name for t in tasks} == NAMES
    order = list(TYPE_KINDS)
    assert [(order.index(t.type), t.name) for t in tasks] == \
        sorted((order.index(t.type), t.name) for t in tasks)
    for t in tasks:
        assert isinstance(t, TaskRecord) and t.kind == TYPE_KINDS[t.type]
        assert t.primary_metric in t.metrics and t.source.hub and {"train", "eval"} <= set(
            t.source.splits)
        assert set(t.input_columns) <= set(t.required_columns)
        if t.is_classification:
            assert t.backbones == "any" and t.label_column not in t.input_columns
            for family in ("mlm", "t5"):
                words = t.label_words[family]
                assert len(words) == len(t.classes) == len(set(words))
        else:
            assert t.backbones == "seq2seq" and not t.classes and t.target_column


def test_label_encodings_of_the_benchmarks():
    assert get_task("mnli").classes == ("entailment", "neutral", "contradiction")
    assert get_task("snli").classes == ("entailment", "neutral", "contradiction")
    assert get_task("qnli").classes == ("entailment", "not_entailment")
    assert get_task("tweet_eval_sentiment").classes == ("negative", "neutral", "positive")
    assert get_task("ethics_deontology").classes[1] == "reasonable"
    assert get_task("mrpc").classes[1] == "equivalent" and get_task("qqp").classes[1] == "duplicate"
    assert get_task("mnli").source.splits["eval"] == "validation_matched"
    assert get_task("tweet_eval_sentiment").primary_metric == "macro_recall"


def test_paraphrase_verbalizers_differ_from_nli_ones():
    """As in the reference implementation: paraphrase reads false/true, NLI yes/(neutral)/no,
    so no label word is shared between the two types (a shared word would let a prompt of
    one type score on the other by its verbalizer alone)."""
    by_type: dict[str, set[str]] = {}
    for t in list_tasks():
        if t.type in ("nli", "paraphrase"):
            for family in ("mlm", "t5"):
                by_type.setdefault(t.type, set()).update(t.label_words[family])
    assert by_type["paraphrase"] == {"false", "true"}
    assert by_type["nli"] == {"yes", "neutral", "no"}
    assert get_task("snli").words_for("mlm") == ["yes", "neutral", "no"]  # entailment first
    assert get_task("laptop").words_for("mlm") == ["negative", "moderate", "positive"]
    assert get_task("ethics_justice").words_for("seq2seq") == ["unacceptable", "acceptable"]
    assert get_task("mrpc").words_for("mlm") == ["false", "true"]  # not_equivalent, equivalent
    assert get_task("qqp").words_for("seq2seq") == ["false", "true"]


def test_get_task_by_name_is_case_insensitive():
    assert get_task("SST2") is get_task("sst2")
    assert get_task("Ethics-Justice").name == "ethics_justice"


def test_unknown_task_lists_the_names_and_the_yaml_option():
    with pytest.raises(PtdistError) as err:
        get_task("sst3")
    message = str(err.value)
    assert "sst3" in message and "did you mean 'sst2'" in message and "YAML" in message
    assert all(name in message for name in NAMES)


def test_get_task_by_yaml_path(tmp_path):
    path = write_yaml(tmp_path / "task.yaml", nli_task())
    task = get_task(str(path))
    assert task.name == "my_nli" and task.kind == "classification" and task.backbones == "any"
    assert task.source.files["train"] == str(tmp_path / "data" / "train.jsonl")
    assert task.source_label == "local files"


@pytest.mark.parametrize("change, needles", [
    ({"lables": ["a"]}, ["unknown key 'lables'", "label_words"]),
    ({"source": {"files": {"train": "t.jsonl"}, "hub_id": "x"}},
     ["unknown key 'hub_id' in source (did you mean 'hub'?)"]),
    ({"template": "{premise"}, ["template", "format string"]),
    ({"template": "no columns here"}, ["template", "columns in braces"]),
    ({"template": "{premise} {label}"}, ["label column 'label'"]),
    ({"label_words": {"mlm": ["yes"], "t5": ["yes", "no"]}}, ["label_words.mlm has 1 words",
                                                             "2 classes"]),
    ({"label_words": {"mlm": ["yes", "no"]}}, ["mlm and t5"]),
    ({"metrics": ["acuracy"]}, ["metric 'acuracy'", "accuracy"]),
    ({"metrics": ["accuracy"], "primary_metric": "f1"}, ["primary_metric 'f1'"]),
    ({"classes": ["a", "b", "c"], "label_words": {"mlm": list("xyz"), "t5": list("xyz")}},
     ["binary F1", "macro_f1"]),
    ({"type": "topic"}, ["type 'topic'", "kind"]),
    ({"label_map": {"E": "entailment", "X": "maybe"}}, ["label_map maps to 'maybe'"]),
    ({"source": {}}, ["source names no data"]),
    # Strict: a value of another type is refused, not converted.
    ({"classes": "a b"}, ["'classes' must be a list (got 'a b')"]),
    ({"label_words": {"mlm": [True, False], "t5": ["yes", "no"]}},
     ["'label_words.mlm[0]' must be a string (got True)", "quote it"]),
    ({"label_words": {"mlm": ["a b", "no"], "t5": ["yes", "no"]}},
     ["'label_words.mlm[0]' must be a single word"]),
    ({"label_words": {"mlm": ["yes", "no"], "t5": ["yes", "no"], "bert": ["a", "b"]}},
     ["unknown key 'bert' in label_words", "allowed: mlm, t5"]),
    ({"metrics": ["accuracy", "accuracy"]},
     ["'metrics' repeats a value (got ['accuracy', 'accuracy'])"]),
    ({"kind": "regression"}, ["'kind' must be 'classification' or 'generation'"]),
    ({"source": {"files": {"train": "train.txt"}}},
     ["'source.files.train' must end in one of .jsonl, .json, .csv, .parquet (got 'train.txt')"]),
    ({"source": "my-org/data"}, ["'source' must be a mapping (got 'my-org/data')",
                                 "source: {hub: <dataset id>"]),
])
def test_invalid_yaml_names_the_file_the_key_and_the_fix(tmp_path, change, needles):
    body = nli_task()
    body.update(change)
    path = write_yaml(tmp_path / "bad.yaml", body)
    with pytest.raises(PtdistError) as err:
        get_task(str(path))
    message = str(err.value)
    assert str(path) in message and "docs/tasks.md" in message
    for needle in needles:
        assert needle in message, message


def test_missing_required_key_and_unreadable_files(tmp_path):
    body = nli_task()
    del body["template"]
    with pytest.raises(PtdistError, match="missing required key 'template'"):
        get_task(str(write_yaml(tmp_path / "t.yaml", body)))
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: [unclosed\n")
    with pytest.raises(PtdistError, match="not valid YAML"):
        get_task(str(broken))
    with pytest.raises(PtdistError, match="does not exist"):
        get_task(str(tmp_path / "absent.yaml"))


def test_generation_tasks_need_a_seq2seq_backbone(tmp_path):
    body = {"name": "qa", "type": "qa", "template": "question: {q}", "target_column": "a",
            "source": {"files": {"train": "t.jsonl"}}, "metrics": ["exact_match"],
            "backbones": "any"}
    with pytest.raises(PtdistError, match="seq2seq"):
        get_task(str(write_yaml(tmp_path / "qa.yaml", body)))


# --- loading ------------------------------------------------------------------------------

def test_user_yaml_task_with_local_files_loads_and_templates(tmp_path):
    write_jsonl(tmp_path / "data" / "train.jsonl", [
        {"premise": "A dog runs", "hypothesis": "An animal moves", "label": 0},
        {"premise": "A cat sleeps", "hypothesis": "A cat runs", "label": 1},
    ])
    (tmp_path / "data" / "dev.csv").write_text(
        "premise,hypothesis,label\nIt rains,It is wet,0\nIt is dry,It rains,1\n")
    task = get_task(str(write_yaml(tmp_path / "task.yaml", nli_task())))
    train = load_split(task, "train")
    assert train.column_names == ["text", "label"]
    assert train.to_list() == [{"text": "A dog runs ? An animal moves", "label": 0},
                               {"text": "A cat sleeps ? A cat runs", "label": 1}]
    assert load_split(task, "eval")["text"] == ["It rains ? It is wet", "It is dry ? It rains"]


def test_data_dir_overrides_the_hub_for_a_builtin_task(tmp_path, monkeypatch):
    rows = [{"sentence": "a fine film", "label": 1}, {"sentence": "dull", "label": 0}]
    write_jsonl(tmp_path / "sst2" / "train.jsonl", rows)
    sst2 = get_task("sst2")
    assert load_split(sst2, "train", data_dir=str(tmp_path))["text"] == ["a fine film", "dull"]
    monkeypatch.setenv("PTDIST_DATA_DIR", str(tmp_path))
    assert load_split(sst2, "train")["label"] == [1, 0]


def test_parquet_files_and_nested_references(tmp_path):
    table = pa.table({
        "question": ["Who?", "Where?", "Why?"], "context": ["Ann met Bo.", "In Paris.", "No."],
        "answers": [{"text": ["Ann", "Ann and Bo"]}, {"text": ["Paris"]}, {"text": []}],
    })
    (tmp_path / "squad").mkdir()
    pq.write_table(table, tmp_path / "squad" / "eval.parquet")
    rows = load_split(get_task("squad"), "eval", data_dir=str(tmp_path)).to_list()
    assert rows == [  # the row without an answer is dropped
        {"text": "question: Who? context: Ann met Bo.", "target": "Ann",
         "references": ["Ann", "Ann and Bo"]},
        {"text": "question: Where? context: In Paris.", "target": "Paris",
         "references": ["Paris"]},
    ]


def test_missing_column_names_the_file_and_the_columns(tmp_path):
    path = write_jsonl(tmp_path / "sst2" / "train.jsonl", [{"text": "good", "label": 1}])
    with pytest.raises(PtdistError) as err:
        load_split(get_task("sst2"), "train", data_dir=str(tmp_path))
    message = str(err.value)
    assert str(path) in message and "'sentence'" in message and "text, label" in message


def test_hub_unreachable_explains_how_to_use_local_files(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.delenv("PTDIST_DATA_DIR", raising=False)
    with pytest.raises(PtdistError) as err:
        load_split(get_task("mnli"), "eval", data_dir=str(tmp_path))
    message = str(err.value)
    for needle in ("nyu-mll/glue", "validation_matched", "--data-dir", "PTDIST_DATA_DIR",
                   "eval.jsonl", "premise, hypothesis, label", "source.files",
                   str(tmp_path / "mnli")):
        assert needle in message, message


def test_label_map_and_dropped_rows(tmp_path, caplog):
    write_jsonl(tmp_path / "train.jsonl", [
        {"review": "great", "verdict": "POS"}, {"review": "awful", "verdict": "NEG"},
        {"review": "meh", "verdict": "conflict"}, {"review": None, "verdict": "POS"},
    ])
    body = {"name": "reviews", "type": "sentiment", "template": "{review}",
            "source": {"files": {"train": "train.jsonl"}}, "label_column": "verdict",
            "classes": ["negative", "positive"],
            "label_map": {"NEG": "negative", "POS": "positive"},
            "label_words": {"mlm": ["bad", "good"], "t5": ["bad", "good"]}}
    task = get_task(str(write_yaml(tmp_path / "reviews.yaml", body)))
    with caplog.at_level(logging.WARNING, logger="ptdist.tasks.loading"):
        rows = load_split(task, "train").to_list()
    assert rows == [{"text": "great", "label": 1}, {"text": "awful", "label": 0}]
    assert "dropped 2 of 4 rows" in caplog.text and "'conflict'" in caplog.text

    write_jsonl(tmp_path / "train.jsonl", [{"review": "meh", "verdict": "conflict"}])
    with pytest.raises(PtdistError, match="none of its 1 rows is usable"):
        load_split(task, "train")


def test_string_labels_that_name_classes_need_no_map(tmp_path):
    write_jsonl(tmp_path / "laptop" / "eval.jsonl", [
        {"text": "Great battery", "span": "battery", "label": "positive"},
        {"text": "Fine screen", "span": "screen", "label": "neutral"},
        {"text": "Both", "span": "price", "label": "conflict"},
    ])
    rows = load_split(get_task("laptop"), "eval", data_dir=str(tmp_path)).to_list()
    assert rows == [{"text": "Great battery aspect: battery", "label": 2},
                    {"text": "Fine screen aspect: screen", "label": 1}]


def test_limit_is_a_deterministic_seeded_subset(tmp_path):
    write_jsonl(tmp_path / "sst2" / "train.jsonl",
                [{"sentence": f"s{i}", "label": i % 2} for i in range(50)])
    sst2, folder = get_task("sst2"), str(tmp_path)
    first = load_split(sst2, "train", limit=10, data_dir=folder, seed=3)["text"]
    assert len(first) == 10
    assert first == load_split(sst2, "train", limit=10, data_dir=folder, seed=3)["text"]
    assert first != load_split(sst2, "train", limit=10, data_dir=folder, seed=4)["text"]
    assert len(load_split(sst2, "train", limit=500, data_dir=folder)) == 50
    with pytest.raises(PtdistError, match="positive number"):
        load_split(sst2, "train", limit=0, data_dir=folder)


def test_unknown_split_and_missing_declared_file(tmp_path):
    with pytest.raises(PtdistError, match="no split 'dev'"):
        load_split(get_task("sst2"), "dev")
    task = get_task(str(write_yaml(tmp_path / "task.yaml", nli_task())))
    with pytest.raises(PtdistError, match="does not exist"):
        load_split(task, "train")


# --- one reader policy for every data format -----------------------------------------------

# A small valid file of each format ptdist reads (by suffix, and by source.local format), its
# text holding "café": a new format without a sample here fails the coverage test below.
SAMPLES = {
    ".jsonl": ("s.jsonl", '{"text": "café", "label": 1}\n'),
    ".json": ("s.json", '[{"text": "café", "label": 1}]\n'),
    ".csv": ("s.csv", "text,label\ncafé,1\n"),
    ".parquet": ("s.parquet", None),
    "glue_tsv": ("s.tsv", "text\tlabel\ncafé\t1\n"),
    "csv": ("s.csv", "text,label\ncafé,1\n"),
    "semeval_seg": ("s.xml.seg", "the $T$ was fine\ncafé\n1\n"),
    "tweeteval": ("s", "café\n"),
    "conll_nli": ("s.txt", "café B-LOC\nopened O\n"),
}


def _reader_of(fmt: str):
    from ptdist.tasks.formats import FILE_READERS, reader

    return FILE_READERS[fmt] if fmt.startswith(".") else reader(fmt)


def _sample(folder: Path, fmt: str, encoding: str = "utf-8") -> tuple[Path, list[Path]]:
    """The sample of ``fmt`` written in ``folder``: the path its reader takes, and the files
    that path stands for (TweetEval's split prefix is two files)."""
    name, text = SAMPLES[fmt]
    path = folder / name
    if text is None:
        pq.write_table(pa.table({"text": ["café"], "label": [1]}), path)
        return path, [path]
    files = [folder / f"{name}_text.txt", folder / f"{name}_labels.txt"] \
        if fmt == "tweeteval" else [path]
    for file in files:
        file.write_bytes((text if file.name != "s_labels.txt" else "1\n").encode(encoding))
    return path, files


def test_every_format_has_its_sample_for_the_policy_tests():
    from ptdist.tasks.formats import FILE_READERS, FORMATS

    assert set(SAMPLES) == set(FILE_READERS) | set(FORMATS)


@pytest.mark.parametrize("fmt", [f for f, (_, text) in SAMPLES.items() if text is not None])
def test_every_text_format_names_the_first_byte_that_is_not_utf8(tmp_path, fmt):
    path, files = _sample(tmp_path, fmt)
    values = [v for column in _reader_of(fmt)(path).values() for v in column]
    assert any("café" in str(v) for v in values), values
    _sample(tmp_path, fmt, encoding="latin-1")
    with pytest.raises(PtdistError) as err:
        _reader_of(fmt)(path)
    offset = files[0].read_bytes().index(b"\xe9")
    assert f"{files[0]} is not UTF-8 text: byte {offset} (0xe9)" in str(err.value)
    assert "iconv -f latin1 -t utf-8" in str(err.value)


@pytest.mark.parametrize("fmt", list(SAMPLES))
def test_every_format_refuses_a_fifo_by_its_type_at_once(tmp_path, fmt):
    """Opening a FIFO waits for a writer for ever: refused before it is opened."""
    import os
    import time

    from tests.conftest import released_after

    path, files = _sample(tmp_path, fmt)
    files[0].unlink()
    os.mkfifo(files[0])
    started = time.monotonic()
    with released_after(files[0], 20), pytest.raises(PtdistError) as err:
        _reader_of(fmt)(path)
    assert time.monotonic() - started < 5
    assert f"{files[0]} is a FIFO (named pipe), not a regular file" in str(err.value)


@pytest.mark.parametrize("fmt,text", [
    (".jsonl", '{"text": "a", "label": 1}\n\n{"text": "b", "label": 0\n'),
    (".jsonl", '{"text": "a", "label": 1}\n["b", 0]\n'),
    (".json", '[{"text": "a", "label": 1}, "b"]'),
    (".json", '[{"text": "a", "label": 1}'),
    (".csv", 'text,label\na,1\n"b, with a comma",0,extra\n'),
    ("glue_tsv", "text\tlabel\na\t1\nb\n"),
], ids=["jsonl bad line", "jsonl not an object", "json item not an object", "json cut short",
        "csv extra field", "tsv missing field"])
def test_a_malformed_row_is_named_by_its_number(tmp_path, fmt, text):
    path = tmp_path / ("s.tsv" if fmt == "glue_tsv" else f"s{fmt}")
    path.write_text(text)
    where = {"jsonl bad line": "line 3 is not valid JSON", "jsonl not an object":
             "line 2 is list", "json item not an object": "item 2 is str",
             "json cut short": "is not valid JSON", "csv extra field":
             "data row 2 has 3 fields, the header 2 (line 3)", "tsv missing field":
             "data row 2 has 1 fields, the header 2 (line 3)"}
    with pytest.raises(PtdistError) as err:
        _reader_of(fmt)(path)
    message = str(err.value)
    assert str(path) in message and any(w in message for w in where.values()), message


@pytest.mark.parametrize("fmt", [".jsonl", ".json", ".csv", "glue_tsv"])
def test_a_field_as_long_as_ten_megabytes_is_read(tmp_path, fmt):
    """csv's field limit (128 KiB) made such a field a `_csv.Error`."""
    long = "x" * 10_000_000
    body = {".jsonl": json.dumps({"text": long, "label": 1}) + "\n",
            ".json": json.dumps([{"text": long, "label": 1}]), ".csv": f"text,label\n{long},1\n",
            "glue_tsv": f"text\tlabel\n{long}\t1\n"}[fmt]
    path = tmp_path / ("s.tsv" if fmt == "glue_tsv" else f"s{fmt}")
    path.write_text(body)
    assert _reader_of(fmt)(path)["text"] == [long]


@pytest.mark.parametrize("fmt", [".jsonl", ".json", ".csv", ".parquet", "glue_tsv"])
def test_a_file_without_rows_is_refused(tmp_path, fmt):
    path = tmp_path / ("s.tsv" if fmt == "glue_tsv" else f"s{fmt}")
    if fmt == ".parquet":
        pq.write_table(pa.table({"text": pa.array([], pa.string())}), path)
    else:
        path.write_text("" if fmt != ".json" else "[]")
    with pytest.raises(PtdistError, match="holds no rows|is empty"):
        _reader_of(fmt)(path)


def test_a_json_array_is_a_data_file_like_json_lines(tmp_path):
    rows = [{"sentence": "a fine film", "label": 1}, {"sentence": "dull", "label": 0}]
    (tmp_path / "sst2").mkdir()
    (tmp_path / "sst2" / "train.json").write_text(json.dumps(rows, indent=2))
    sst2 = get_task("sst2")
    assert load_split(sst2, "train", data_dir=str(tmp_path)).to_list() == \
        [{"text": "a fine film", "label": 1}, {"text": "dull", "label": 0}]
    (tmp_path / "sst2" / "train.json").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert load_split(sst2, "train", data_dir=str(tmp_path))["label"] == [1, 0]


# --- metrics ------------------------------------------------------------------------------

def test_classification_metrics_by_hand():
    # refs 1,1,0,0,1; preds 1,0,0,1,1: TP=2, FP=1, FN=1 -> binary F1 = 4/6.
    scores = compute_metrics(get_task("mrpc"), [1, 0, 0, 1, 1], [1, 1, 0, 0, 1])
    assert scores == pytest.approx({"accuracy": 60.0, "f1": 400 / 6})
    # Per-class recall: negative 1/2, neutral 1/1, positive 0/1 -> 50; accuracy 2/4.
    tweets = compute_metrics(get_task("tweet_eval_sentiment"), [0, 1, 1, 0], [0, 0, 1, 2])
    assert tweets == pytest.approx({"macro_recall": 50.0, "accuracy": 50.0})
    # Per-class F1: negative 2*1/(2+1+1) = 1/2, neutral 2/3, positive 0 -> macro 7/18.
    laptop = compute_metrics(get_task("laptop"), [0, 1, 1, 0], [0, 0, 1, 2])
    assert laptop["macro_f1"] == pytest.approx(700 / 18)


def test_squad_exact_match_and_f1_with_normalisation():
    squad = get_task("squad")
    # "The  Eiffel Tower!" normalises to "eiffel tower": exact match on the second reference.
    assert compute_metrics(squad, ["The  Eiffel Tower!"], [["Paris", "eiffel tower"]]) == \
        {"exact_match": 100.0, "f1": 100.0}
    # pred "big red car" vs ref "the red car": overlap 2, precision 2/3, recall 2/2 -> F1 0.8.
    scores = compute_metrics(squad, ["big red car", "nothing"], [["the red car"], ["car"]])
    assert scores == pytest.approx({"exact_match": 0.0, "f1": 40.0})
    assert compute_metrics(get_task("nq_open"), ["An apple"], ["apple"])["exact_match"] == 100.0


def test_rouge_on_known_cases():
    samsum = get_task("samsum")
    same = compute_metrics(samsum, ["Amanda baked cookies."], [["Amanda baked cookies."]])
    assert same == pytest.approx({"rouge1": 100.0, "rouge2": 100.0, "rougeL": 100.0})
    disjoint = compute_metrics(samsum, ["blue sky"], ["green grass"])
    assert disjoint == {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}
    # Stemming: "cats sat" vs "cat sits" share "cat" (and "sat"/"sit" do not): R1 = 1/2.
    assert compute_metrics(samsum, ["cats sat"], ["cat sits"])["rouge1"] == pytest.approx(50.0)
