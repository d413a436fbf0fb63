"""The third audit's broken inputs (issue 27), as a user meets them on the command line: each
is one `ptdist: error:` line, exit 2, before any model loads, with nothing written; what hung
is refused at once; what gave a wrong result with exit 0 is refused. docs/reliability.md lists
every case with its test."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch
import yaml

from ptdist.store import Store
from ptdist.store.prompts import write_prompt_file
from tests.conftest import REPO, child_env, released_after, sentiment_rows, write_jsonl
from tests.test_cli import TRAIN, _assert_one_clear_error, _written, run
from tests.test_store import manifest

LOADED = "[ptdist] loaded"  # the line every model load prints


def train(capsys, store, *extra: str) -> tuple[int, str, str]:
    return run(capsys, *TRAIN, "--model", "tiny-roberta", "--task", "sst2", "--store",
               str(store), *extra)


def _spec(tmp_path: Path, store, **train) -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump({
        "storage_path": str(store), "tasks": ["sst2"], "models": {"tiny-roberta": {}},
        "train": {"steps": 2, "batch_size": 4, "prompt_length": 4, **train}}))
    return path


# --- 1, 9: store paths ------------------------------------------------------------------------

@pytest.mark.skipif(not Path("/proc/self").exists(), reason="needs Linux's /proc")
def test_a_store_in_a_folder_that_takes_no_new_files_is_refused_before_the_model_loads(
        capsys, tmp_path, sentiment_dir):
    """/proc refuses new names whatever its permissions say (to root too): `train` stopped
    with a FileNotFoundError traceback after the model loaded; the sweep's dry run said
    "1 to run"."""
    code, _, err = train(capsys, "/proc/ptdist-store", "--data-dir", str(sentiment_dir))
    _assert_one_clear_error(code, err, "store /proc/ptdist-store is not writable",
                            "it would be created in /proc")
    assert LOADED not in err
    code, out, err = run(capsys, "sweep", "--spec", str(_spec(tmp_path, "/proc/ptdist-store")),
                         "--dry-run")
    _assert_one_clear_error(code, err, "store /proc/ptdist-store is not writable")
    assert "to run" not in err + out


def test_a_store_at_a_dangling_link_is_refused_before_the_model_loads(capsys, tmp_path,
                                                                      sentiment_dir):
    """A link to a folder that does not exist: FileExistsError after the model loaded."""
    (tmp_path / "store").symlink_to(tmp_path / "gone")
    code, _, err = train(capsys, tmp_path / "store", "--data-dir", str(sentiment_dir))
    _assert_one_clear_error(code, err, f"{tmp_path / 'store'} is a symbolic link to "
                                       f"{tmp_path / 'gone'}, which does not exist")
    assert LOADED not in err and _written(tmp_path) == [] and not (tmp_path / "gone").exists()


def test_a_read_only_store_is_refused_before_the_model_loads():
    """A folder without write permission, as a user whose permissions it binds (this one, or
    `nobody` when the tests run as root, since root writes anyway)."""
    as_user: list[str] = []
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("running as root, and no setpriv to run as another user")
        as_user = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    base = Path(tempfile.mkdtemp(prefix="ptdist-read-only-", dir="/tmp"))  # others may enter
    try:
        base.chmod(0o755)
        (base / "cache").mkdir(mode=0o777)
        (base / "cache").chmod(0o777)
        write_jsonl(base / "data" / "sst2" / "train.jsonl", sentiment_rows(16, 1))
        write_jsonl(base / "data" / "sst2" / "eval.jsonl", sentiment_rows(8, 2))
        (base / "shared").mkdir(mode=0o555)
        (base / "shared").chmod(0o555)
        store = base / "shared" / "store"
        env = child_env(HOME=str(base / "cache"), PTDIST_CACHE=str(base / "cache"),
                        HF_HOME=str(base / "cache"), PYTHONPATH=str(REPO))
        done = subprocess.run([*as_user, sys.executable, "-m", "ptdist", *TRAIN, "--model",
                               "tiny-roberta", "--task", "sst2", "--data-dir",
                               str(base / "data"), "--store", str(store)],
                              cwd=base, env=env, capture_output=True, text=True, timeout=300)
        _assert_one_clear_error(done.returncode, done.stderr, f"store {store} is not writable",
                                "Permission denied")
        assert LOADED not in done.stderr and sorted(os.listdir(base / "shared")) == []
    finally:
        (base / "shared").chmod(0o755)
        shutil.rmtree(base)


def test_an_empty_store_path_is_refused(capsys, tmp_path, monkeypatch, sentiment_dir):
    """`--store ""` trained into the working directory (the documented default is ./store)."""
    monkeypatch.chdir(tmp_path)
    code, _, err = train(capsys, "", "--data-dir", str(sentiment_dir))
    _assert_one_clear_error(code, err, "the store path is empty", "./store")
    assert LOADED not in err and _written(tmp_path) == []


# --- 2: damaged standard data files -------------------------------------------------------

def _glue_sst2(root: Path, train_tsv: bytes) -> Path:
    """A data folder holding sst2's standard GLUE files, train.tsv as given."""
    (root / "sst2").mkdir(parents=True)
    (root / "sst2" / "train.tsv").write_bytes(train_tsv)
    (root / "sst2" / "dev.tsv").write_text("sentence\tlabel\na fine film\t1\ndull\t0\n")
    return root


@pytest.mark.parametrize("content,needles", [
    ("sentence\tlabel\ncaf\xe9 good\t1\n".encode("latin-1"),
     ["train.tsv is not UTF-8 text: byte 18 (0xe9)", "iconv -f latin1 -t utf-8"]),
    (b"sentence\tlabel\n" + random.Random(0).randbytes(4096),
     ["train.tsv is not UTF-8 text: byte", "iconv"]),
    (b"sentence\tlabel\n" + b"x" * 10_000_000 + b"\n",
     ["train.tsv: data row 1 has 1 fields, the header 2 (line 2)", "delimiter"]),
], ids=["latin-1", "random bytes", "a 10 MB line"])
def test_a_damaged_glue_file_is_one_line_before_the_model_loads(capsys, tmp_path, content,
                                                                needles):
    data = _glue_sst2(tmp_path / "data", content)
    before = _written(tmp_path)
    code, _, err = train(capsys, tmp_path / "store", "--data-dir", str(data))
    _assert_one_clear_error(code, err, *needles)
    assert LOADED not in err and _written(tmp_path) == before


# --- 3: a YAML alias bomb -------------------------------------------------------------------

def _alias_bomb(levels: int = 10, fold: int = 9) -> str:
    lines = ["a0: &a0 [" + ", ".join(["0"] * fold) + "]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * fold) + "]"
              for i in range(1, levels)]
    return "\n".join(lines) + f"\nseeds: *a{levels - 1}\n"


def test_a_spec_that_aliases_a_billion_values_is_refused_at_once(tmp_path):
    """9-fold lists of aliases nested 10 deep (3.5 billion values) in 11 lines: `sweep
    --dry-run` printed nothing and grew past 1.4 GB in 2 minutes. Run as a process of its own,
    its memory capped, so the bomb cannot take the test run down with it."""
    spec = tmp_path / "spec.yaml"
    spec.write_text(_spec(tmp_path, tmp_path / "store").read_text() + _alias_bomb())

    def cap_memory() -> None:
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))

    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "ptdist", "sweep", "--spec", str(spec),
                           "--dry-run"], env=child_env(PYTHONPATH=str(REPO)), timeout=240,
                          capture_output=True, text=True, preexec_fn=cap_memory)
    _assert_one_clear_error(done.returncode, done.stderr, f"sweep spec {spec} expands to more "
                            "than 100,000 values through its aliases")
    assert time.monotonic() - started < 120 and _written(tmp_path) == ["spec.yaml"]


# --- 4, 5, 7, 8: damaged records --------------------------------------------------------------

def _store_of_two(root: Path) -> Store:
    store = Store(root)
    for i in range(2):
        prompt = torch.randn(4, 64)
        store.prompts.put(prompt, manifest(f"p{i}", prompt, created=float(i)))
    return store


def _timed(capsys, *argv: str) -> tuple[int, str, str, float]:
    started = time.monotonic()
    code, out, err = run(capsys, *argv)
    return code, out, err, time.monotonic() - started


def test_a_fifo_for_a_manifest_is_refused_by_its_type_not_waited_on(capsys, tmp_path):
    """`ptdist prompts` and `prompts --check` waited for ever on a FIFO put where p1's
    manifest was."""
    run(capsys, "prompts", "--store", str(tmp_path / "none"))  # the CLI's imports, untimed
    store = _store_of_two(tmp_path / "store")
    fifo = store.prompts.folder("p1") / "manifest.json"
    fifo.unlink()
    os.mkfifo(fifo)
    with released_after(fifo, 20):
        code, out, err, took = _timed(capsys, "prompts", "--store", str(store.root))
        assert took < 5 and code == 0 and "p0" in out and "Traceback" not in err
        assert "prompt p1 is left out" in err and "is a FIFO (named pipe)" in err
        code, out, err, took = _timed(capsys, "prompts", "--check", "--store", str(store.root))
        assert took < 5
        _assert_one_clear_error(code, err, "1 of 2 record(s)", "damaged: p1")
        assert "DAMAGED: manifest: manifest" in out and "is a FIFO" in out


@pytest.mark.parametrize("argv,name", [
    (["sweep", "--dry-run", "--spec"], "spec.yaml"),
    ([*TRAIN, "--model", "tiny-roberta", "--task"], "task.yaml"),
    ([*TRAIN, "--model", "tiny-roberta", "--task", "sst2", "--ds-config"], "ds.json"),
], ids=["sweep spec", "task file", "DeepSpeed config"])
def test_a_fifo_for_a_settings_file_is_refused_by_its_type(capsys, tmp_path, argv, name):
    run(capsys, "prompts", "--store", str(tmp_path / "none"))  # the CLI's imports, untimed
    fifo = tmp_path / name
    os.mkfifo(fifo)
    with released_after(fifo, 20):
        code, _, err, took = _timed(capsys, *argv, str(fifo), "--store", str(tmp_path / "s"))
    _assert_one_clear_error(code, err, f"{fifo} is a FIFO (named pipe), not a regular file")
    assert took < 5 and LOADED not in err and _written(tmp_path) == []


def _manifest_a_folder(store: Store) -> str:
    path = store.prompts.folder("p1") / "manifest.json"
    path.unlink()
    path.mkdir()
    return "is a folder, not a regular file"


def _tensor_file_a_folder(store: Store) -> str:
    path = store.prompts.folder("p1") / "prompt.safetensors"
    path.unlink()
    path.mkdir()
    return "prompt.safetensors is a folder, not a regular file"


def _manifest_nested_deep(store: Store) -> str:
    (store.prompts.folder("p1") / "manifest.json").write_text("[" * 100_000 + "]" * 100_000)
    return "nest deeper than Python's JSON reader goes"


@pytest.mark.parametrize("damage", [_manifest_a_folder, _tensor_file_a_folder,
                                    _manifest_nested_deep],
                         ids=["manifest a folder", "tensor file a folder",
                              "manifest nested 100,000 deep"])
def test_a_record_of_the_wrong_shape_on_disk_is_damaged_not_a_traceback(capsys, tmp_path,
                                                                        damage):
    """IsADirectoryError and RecursionError tracebacks from `prompts`, `prompts --check` and
    `export-peft`: the guard caught parse errors only."""
    store = _store_of_two(tmp_path / "store")
    needle = damage(store)
    code, out, err = run(capsys, "prompts", "--store", str(store.root))
    assert code == 0 and "Traceback" not in err
    left_out = "p1" not in out.split("\n", 1)[1]
    assert left_out == (damage is not _tensor_file_a_folder)  # a listing reads manifests only
    code, out, err = run(capsys, "prompts", "--check", "--store", str(store.root))
    _assert_one_clear_error(code, err, "1 of 2 record(s)", "damaged: p1")
    assert needle in out
    code, _, err = run(capsys, "export-peft", "p1", str(tmp_path / "peft"), "--store",
                       str(store.root))
    _assert_one_clear_error(code, err, "prompt p1 in store", "is damaged", needle)
    assert not (tmp_path / "peft").exists()


def test_export_refuses_a_tensor_of_another_shape_than_its_manifest(capsys, tmp_path):
    """A [8, 32] tensor with its checksum, where the manifest says [8, 64]: export-peft wrote a
    `token_dim: 32` adapter and exited 0."""
    from ptdist.checksum import file_sha256

    store = Store(tmp_path / "store")
    wide = torch.randn(8, 64)
    folder = store.prompts.put(wide, manifest("p0", wide))
    write_prompt_file(folder / "prompt.safetensors", torch.randn(8, 32), {"id": "p0"})
    record = json.loads((folder / "manifest.json").read_text())
    record["file_sha256"] = file_sha256(folder / "prompt.safetensors")
    (folder / "manifest.json").write_text(json.dumps(record))
    assert store.prompts.manifest("p0").shape == [8, 64]  # the manifest still reads
    code, _, err = run(capsys, "export-peft", "p0", str(tmp_path / "peft"), "--store",
                       str(store.root))
    _assert_one_clear_error(code, err, "prompt p0", "prompt.safetensors has shape [8, 32], its "
                                                    "manifest [8, 64]")
    assert not (tmp_path / "peft").exists()


def test_check_fails_for_a_store_that_is_not_there(capsys, tmp_path):
    """"0 record(s) checked, 0 damaged", exit 0, for a path that holds no store."""
    code, out, err = run(capsys, "prompts", "--check", "--store", str(tmp_path / "absent"))
    _assert_one_clear_error(code, err, f"store {tmp_path / 'absent'} does not exist")
    assert "0 damaged" not in out


def test_check_fails_for_a_store_whose_prompts_folder_is_a_file(capsys, tmp_path):
    store = _store_of_two(tmp_path / "store")
    shutil.rmtree(store.layout.prompts_dir())
    store.layout.prompts_dir().write_text("not a folder")
    for argv in (["--check"], []):
        code, out, err = run(capsys, "prompts", *argv, "--store", str(store.root))
        _assert_one_clear_error(code, err, f"{store.layout.prompts_dir()} in store",
                                "is a file, where the store keeps its prompts in a folder")


def test_a_record_folder_linked_out_of_the_store_is_flagged_and_never_written(
        capsys, tmp_path, sentiment_dir):
    """`--check` called a record folder that links out of the store `ok`, and a run stored
    under that id wrote through the link."""
    from ptdist.training import TrainConfig
    from ptdist.training.run import plan_run

    store = _store_of_two(tmp_path / "store")
    outside = tmp_path / "outside"
    shutil.copytree(store.prompts.folder("p1"), outside)
    shutil.rmtree(store.prompts.folder("p1"))
    store.prompts.folder("p1").symlink_to(outside)
    code, out, err = run(capsys, "prompts", "--check", "--store", str(store.root))
    _assert_one_clear_error(code, err, "1 of 2 record(s)", "damaged: p1")
    assert f"is a symbolic link (to {outside}), not a folder of the store" in out
    code, out, err = run(capsys, "prompts", "--store", str(store.root))
    assert code == 0 and "p1" not in out.split("\n", 1)[1] and "p1 is left out" in err

    config = TrainConfig(model="tiny-roberta", task="sst2", steps=2, prompt_length=4,
                         batch_size=4, data_dir=str(sentiment_dir))
    run_id = plan_run(config, store).prompt_id
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    store.prompts.folder(run_id).symlink_to(elsewhere)
    code, _, err = train(capsys, store.root, "--data-dir", str(sentiment_dir))
    _assert_one_clear_error(code, err, f"cannot store prompt {run_id}", "symbolic link",
                            "nothing is written through a link")
    assert LOADED not in err and list(elsewhere.iterdir()) == []


# --- 6: neurons embedding ------------------------------------------------------------------

def _two_prompts(folder: Path) -> Path:
    folder.mkdir()
    for task in ("sst2", "imdb"):
        write_prompt_file(folder / f"{task}.safetensors", torch.randn(4, 8), {})
    return folder


def _matrix_csv(path: Path, *rows: str) -> Path:
    path.write_text("source,target,relative\n" + "".join(f"{r}\n" for r in rows))
    return path


def _embedding(capsys, tmp_path: Path, prompts: Path, matrix: Path, out: Path | None = None):
    return run(capsys, "neurons", "embedding", "--prompts", str(prompts), "--matrix",
               str(matrix), "--out", str(out or tmp_path / "out"))


@pytest.mark.parametrize("cells,needles", [
    (["sst2,imdb,high", "imdb,sst2,80"],
     ["relative is not a finite number in data row(s) 1 ('high')"]),
    (["sst2,imdb,nan", "imdb,sst2,nan"],
     ["relative is not a finite number in data row(s) 1 ('nan'); 2 ('nan')"]),
    (["sst2,imdb,inf", "imdb,sst2,-inf"],
     ["relative is not a finite number in data row(s) 1 ('inf'); 2 ('-inf')"]),
    (["sst2,imdb,70", "imdb,sst2,80", "sst2,imdb,90"],
     ["gives one (source, target) cell more than once: data rows 1, 3 (sst2 -> imdb)"]),
], ids=["text scores", "all NaN", "all infinite", "a cell twice"])
def test_a_transfer_matrix_with_cells_that_are_not_one_number_each_is_refused(
        capsys, tmp_path, cells, needles):
    """Text scores were a ValueError traceback; NaN and infinite matrices a table of
    "undefined" with exit 0; a duplicated cell was accepted."""
    matrix = _matrix_csv(tmp_path / "matrix.csv", *cells)
    code, _, err = _embedding(capsys, tmp_path, _two_prompts(tmp_path / "prompts"), matrix)
    _assert_one_clear_error(code, err, f"{matrix}", *needles)
    assert not (tmp_path / "out").exists()


def test_a_garbage_parquet_matrix_is_one_line(capsys, tmp_path):
    """ArrowInvalid traceback."""
    matrix = tmp_path / "matrix.parquet"
    matrix.write_bytes(random.Random(0).randbytes(2048))
    code, _, err = _embedding(capsys, tmp_path, _two_prompts(tmp_path / "prompts"), matrix)
    _assert_one_clear_error(code, err, f"cannot read {matrix} as Parquet")
    assert not (tmp_path / "out").exists()


def test_embedding_out_at_an_existing_file_is_refused_before_any_work(capsys, tmp_path):
    """FileExistsError after the indicators were computed."""
    (tmp_path / "out").write_text("mine")
    matrix = _matrix_csv(tmp_path / "matrix.csv", "sst2,imdb,70", "imdb,sst2,80")
    code, _, err = _embedding(capsys, tmp_path, _two_prompts(tmp_path / "prompts"), matrix)
    _assert_one_clear_error(code, err, f"--out {tmp_path / 'out'}", "is a file, not a folder")
    assert (tmp_path / "out").read_text() == "mine"


def test_a_peft_adapter_whose_config_is_broken_is_refused(capsys, tmp_path):
    """It was read from its tensor file as if its config did not matter."""
    from safetensors.torch import save_file

    adapters = tmp_path / "adapters"
    for task in ("sst2", "imdb"):
        (adapters / task).mkdir(parents=True)
        save_file({"prompt_embeddings": torch.randn(4, 8)},
                  adapters / task / "adapter_model.safetensors")
        (adapters / task / "adapter_config.json").write_text(
            '{"peft_type": "PROMPT_TUNING", "num_virtual_tokens": 4, "token_dim": 8}')
    (adapters / "imdb" / "adapter_config.json").write_text('{"peft_type": "PROMPT_TU')
    code, _, err = run(capsys, "neurons", "embedding", "--prompts", str(adapters), "--out",
                       str(tmp_path / "out"))
    _assert_one_clear_error(code, err, f"adapter config {adapters / 'imdb'}",
                            "not valid JSON", "export the adapter again")
    (adapters / "imdb" / "adapter_config.json").write_text(
        '{"peft_type": "LORA", "num_virtual_tokens": 4, "token_dim": 16}')
    code, _, err = run(capsys, "neurons", "embedding", "--prompts", str(adapters), "--out",
                       str(tmp_path / "out"))
    _assert_one_clear_error(code, err, "does not describe a prompt-tuning adapter",
                            "peft_type 'LORA'", "token_dim 16")
    assert not (tmp_path / "out").exists()


# --- 10: a prompt longer than the model's positions ------------------------------------------

def test_a_sweep_dry_run_refuses_the_prompt_length_train_refuses(capsys, tmp_path):
    """`prompt_length: 100000` passed `sweep --dry-run` with a 20.9 GB memory plan; `ptdist
    train` refused it, after loading the model. Both now refuse it with the same line, before
    any model loads."""
    code, _, train_err = train(capsys, tmp_path / "store", "--prompt-length", "100000")
    _assert_one_clear_error(code, train_err, "prompt length 100000 plus max_length 128",
                            "'tiny-roberta' has 512")
    code, out, err = run(capsys, "sweep", "--spec", str(_spec(tmp_path, tmp_path / "store",
                                                               prompt_length=100_000)),
                         "--dry-run")
    _assert_one_clear_error(code, err, "prompt length 100000 plus max_length 128")
    line = next(x for x in err.splitlines() if x.startswith("ptdist: error:"))
    assert line in train_err and "memory plan" not in out
    assert LOADED not in train_err + err and _written(tmp_path) == ["spec.yaml"]


# --- 11: templates ---------------------------------------------------------------------------

@pytest.mark.parametrize("template", ["{text.__class__.__mro__}", "{text[0]}", "{text!r}",
                                      "{text:>64}"])
def test_a_template_reads_plain_fields_only(capsys, tmp_path, template):
    """`{text.__class__.__mro__}` trained and stored a prompt on the text
    "(<class 'str'>, <class 'object'>)". (A format spec pads to any width: `{text:>999999999}`
    made every row a gigabyte; a modest one stands for it here.)"""
    write_jsonl(tmp_path / "rows.jsonl", [{"text": "good", "label": 1},
                                          {"text": "bad", "label": 0}])
    (tmp_path / "task.yaml").write_text(yaml.safe_dump({
        "name": "t", "type": "sentiment", "template": template,
        "source": {"files": {"train": "rows.jsonl", "eval": "rows.jsonl"}},
        "classes": ["negative", "positive"],
        "label_words": {"mlm": ["bad", "good"], "t5": ["bad", "good"]}}))
    before = _written(tmp_path)
    code, _, err = run(capsys, *TRAIN, "--model", "tiny-roberta", "--task",
                       str(tmp_path / "task.yaml"), "--store", str(tmp_path / "store"))
    _assert_one_clear_error(code, err, f"'template' field {template} is not a plain column "
                                       "name")
    assert LOADED not in err and _written(tmp_path) == before
