"""Shared fixtures: an isolated cache/store per session, and a small learnable task on disk.

The learnable task is SST-2-shaped (columns sentence, label) so it goes through the built-in
sst2 record and the real local-file loading path (`data_dir`), not a test-only code path.
"""

from __future__ import annotations

import json
import os
import random
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.listeners import ListenerWatch

REPO = Path(__file__).resolve().parents[1]

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
# Every Ray the suite starts (ray.init in a test, `ray start`, a fake cluster) keeps to loopback,
# as the product's embedded Ray does: Ray reads this when it is first imported, which is after
# this file in every test process. `_loopback_only` checks it.
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

# One sentiment word per class: a prompt on a frozen *random* model can route a word to the
# readout and set a threshold, but cannot learn which of many random word embeddings belong
# together (with six words per class the tiny presets stay near chance).
POSITIVE = ["good"]
NEGATIVE = ["bad"]
FILLER = ["the", "movie", "film", "was", "story", "plot", "acting", "music", "really", "very",
          "quite", "scene", "ending", "it", "this", "and"]


def sentiment_rows(n: int, seed: int) -> list[dict]:
    """Sentences whose label is set by one sentiment word among filler: learnable in about a
    hundred steps by a prompt on a frozen random tiny model."""
    return keyword_rows(n, seed, (NEGATIVE, POSITIVE), "sentence")


def fit_small_head(folder: Path) -> Path:
    """The default-recipe MLM head of the headless checkpoint ``folder``, fitted on a few
    filler sentences: what loading it then puts in, without the data packages (CI has none)
    or the minutes a real fit takes. The head's folder."""
    import torch

    from ptdist.backbones.loading import _load
    from ptdist.offline.mlm_head import Corpus, cached_head

    backbone, missing, _ = _load(str(folder), torch.float32, 128)
    rng = random.Random(0)
    texts = [" ".join(rng.choices(FILLER, k=6)) for _ in range(60)]
    return cached_head(backbone, folder, missing,
                       corpus=lambda _: Corpus(texts[:50], texts[50:], "filler sentences"))[0]


LOCK = REPO / "requirements" / "lock.txt"


def locked_versions() -> dict[str, str]:
    """{normalised package name: version} of every exact pin in the project's lock."""
    import re

    found = {}
    for line in LOCK.read_text().splitlines():
        match = re.match(r"([A-Za-z0-9_.\-]+)==([^\s;]+)", line)
        if match:
            found.setdefault(re.sub(r"[-_.]+", "-", match.group(1).lower()), match.group(2))
    return found


# What a recorded number (a loss, a score measured once and written into a test) depends on.
NUMERIC_STACK = ("torch", "transformers", "deepspeed", "accelerate", "tokenizers", "safetensors",
                 "numpy")


@pytest.fixture
def under_the_lock() -> None:
    """Skips the test unless the numeric stack is installed at the lock's versions, which is
    what the README and CI install: a number recorded under those versions is compared only
    under them. (Nothing asserts on installed versions: another environment skips.)"""
    from importlib.metadata import version

    locked = locked_versions()
    other = [f"{name} {version(name)} (lock: {locked[name]})" for name in NUMERIC_STACK
             if version(name).split("+")[0] != locked[name]]
    if other:
        pytest.skip("recorded under the lock's versions; installed: " + ", ".join(other))


def free_port() -> int:
    """A TCP port on loopback that is free now (for a Ray head or a rendezvous a test starts)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def child_env(**extra: str) -> dict[str, str]:
    """The environment for a child process (a CLI run, a launcher, Ray): this one's, without
    the rendezvous variables an in-process run has set, which must not leak into children."""
    env = dict(os.environ, OMP_NUM_THREADS="1", RAY_USAGE_STATS_ENABLED="0", **extra)
    for var in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "RAY_ADDRESS"):
        env.pop(var, None)
    return env


def has_trained_checkpoint(folder: Path) -> bool:
    """Whether a run's folder holds a checkpoint of a trained step: a run's first checkpoint
    is its starting prompt's (step 0), so a run killed then resumes from nothing trained."""
    from ptdist.training.checkpoint import load_checkpoint

    saved = load_checkpoint(folder)
    return saved is not None and saved[1].step > 0


def load_example(name: str):
    """An examples/ script (not a package) imported as the module ``name``."""
    import importlib.util
    import sys

    path = Path(__file__).resolve().parents[1] / "examples" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and NamedTuples look their module up
    spec.loader.exec_module(module)
    return module


# Two tiny models of different widths and architectures on two tasks of two types (sst2 and
# the topic task of `task_prompts`): the sweep of the projector-pair and replicate tests.
TWO_MODEL_SPEC = """name: {name}
storage_path: {store}
data_dir: {data}
tasks: [sst2, {data}/topic.yaml]
train: {{steps: 40, eval_every: 20, prompt_length: 8, batch_size: 16, lr: 0.1, eval_limit: 48}}
models:
  tiny-roberta: {{}}
  tiny-t5-d96: {{}}
"""


def zero3_every_tensor_partitioned(tmp_path: Path) -> Path:
    """ds_configs/zero3.json, but with no small-tensor exemption: a tiny model has no tensor
    above the production persistence threshold, so this makes ZeRO-3 really partition it."""
    config = json.loads((REPO / "ds_configs" / "zero3.json").read_text())
    config["zero_optimization"]["stage3_param_persistence_threshold"] = 0
    path = tmp_path / "zero3_partition_all.json"
    path.write_text(json.dumps(config))
    return path


@contextmanager
def model_forwards() -> Iterator[list[tuple[str, str]]]:
    """The (dtype, device) of the weights of every Hugging Face model forward run inside the
    block (a global torch forward hook): what precision and device a stage really used."""
    import torch
    from transformers import PreTrainedModel

    seen: list[tuple[str, str]] = []

    def record(module, _inputs, _output) -> None:
        if isinstance(module, PreTrainedModel):
            weight = next(module.parameters())
            seen.append((str(weight.dtype).removeprefix("torch."), weight.device.type))

    hook = torch.nn.modules.module.register_module_forward_hook(record)
    try:
        yield seen
    finally:
        hook.remove()


@contextmanager
def released_after(fifo: Path, seconds: float):
    """If a reader still waits on ``fifo`` after ``seconds``, open and close its other end so
    that the reader sees the end of the file: a test of a hang fails instead of hanging."""
    stop = threading.Event()

    def release() -> None:
        if stop.wait(seconds):
            return
        while not stop.is_set():
            try:
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
            except OSError:  # no reader (yet)
                pass
            time.sleep(0.05)

    thread = threading.Thread(target=release, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="session")
def listener_watch() -> Iterator[ListenerWatch]:
    """The watch over what this test process and the processes it starts listen on."""
    watch = ListenerWatch(interval=2.0).start()
    yield watch
    outside = watch.stop()
    assert not outside, f"listening beyond loopback outside any test: {outside}"


@pytest.fixture(autouse=True)
def _loopback_only(listener_watch, request) -> Iterator[None]:
    """Fails the test during which a process of this test run (a Ray, a CLI run, a worker)
    listened on an address other than loopback."""
    listener_watch.begin(request.node.nodeid)
    yield
    found = listener_watch.end()
    if found:
        pytest.fail("listening beyond loopback during this test: " + "; ".join(found))


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory) -> None:
    """Presets and `datasets` caches in a session temp folder, never the user's home. DeepSpeed's
    CPU ops, a minute to compile, are built once for all the run's xdist workers (torch's
    build lock serialises them)."""
    cache = tmp_path_factory.mktemp("cache")
    os.environ["PTDIST_CACHE"] = str(cache / "ptdist")
    os.environ["HF_DATASETS_CACHE"] = str(cache / "datasets")
    run_temp = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        run_temp = run_temp.parent  # shared by the workers of this run
    os.environ["TORCH_EXTENSIONS_DIR"] = str(run_temp / "torch_extensions")


@pytest.fixture(scope="session")
def sentiment_dir(tmp_path_factory) -> Path:
    """A data folder holding sst2/train.jsonl and sst2/eval.jsonl (learnable)."""
    root = tmp_path_factory.mktemp("data")
    write_jsonl(root / "sst2" / "train.jsonl", sentiment_rows(256, seed=1))
    write_jsonl(root / "sst2" / "eval.jsonl", sentiment_rows(128, seed=2))
    return root


TOPIC_YAML = """name: {name}
type: topic
kind: classification
source: {{files: {{train: {name}/train.jsonl, eval: {name}/eval.jsonl}}}}
template: "{{text}}"
label_column: label
classes: [{first}, {second}]
label_words: {{mlm: [{first}, {second}], t5: [{first}, {second}]}}
metrics: [accuracy]
"""


def keyword_rows(n: int, seed: int, words: tuple[str | list[str], str | list[str]],
                 text_key: str) -> list[dict]:
    """Filler sentences whose label is set by one keyword: ``words[label]``, or one drawn from
    it when it is a list (a draw even from a one-word list, so the sentiment rows stay the rows
    the tests' scores were measured on)."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        label = rng.randint(0, 1)
        text = rng.choices(FILLER, k=rng.randint(3, 7))
        where = rng.randint(0, len(text))
        keyword = words[label] if isinstance(words[label], str) else rng.choice(words[label])
        text.insert(where, keyword)
        rows.append({text_key: " ".join(text), "label": label})
    return rows


def fault_rule(log: Path, match: str, fault: str, **extra) -> dict:
    """A PTDIST_FAULTS rule (`ptdist.faults`) that logs every visit of a site it matches to
    ``log``; with ``times=0`` it injects nothing and only counts attempts."""
    return {"match": match, "fault": fault, "log": str(log), **extra}


def attempts(log: Path) -> Counter:
    """Visits per site (attempts per job), from a fault rule's log."""
    return Counter(line.rsplit(" ", 1)[0] for line in log.read_text().splitlines()) \
        if log.exists() else Counter()


def prompts_copy(store: Path, into: Path) -> Path:
    """A store at ``into`` holding a copy of ``store``'s prompts: where a test trains or writes
    tables, so that a shared fixture's store stays what the fixture made."""
    import shutil

    shutil.copytree(store / "prompts", into / "prompts")
    return into


@pytest.fixture(scope="session")
def task_prompts(tmp_path_factory) -> tuple[Path, Path, dict[str, str]]:
    """(root, data folder, {task: prompt id}): prompts of tiny-roberta in root/store for four
    learnable tasks of two types, each keyed by its own words: sst2 and imdb (sentiment, built
    in) and topic and topic2 (user tasks in data/<name>.yaml). A test that trains adds to a
    copy (`prompts_copy`): the others count these four prompts."""
    from ptdist.store import Store
    from ptdist.training import TrainConfig, train

    root = tmp_path_factory.mktemp("transfer")
    data = root / "data"
    for task, words, key in (("sst2", ("bad", "good"), "sentence"),
                             ("imdb", ("awful", "great"), "text"),
                             ("topic", ("football", "guitar"), "text"),
                             ("topic2", ("tennis", "piano"), "text")):
        write_jsonl(data / task / "train.jsonl", keyword_rows(256, 1, words, key))
        write_jsonl(data / task / "eval.jsonl", keyword_rows(96, 2, words, key))
    for name, (first, second) in {"topic": ("sport", "music"),
                                  "topic2": ("game", "song")}.items():
        (data / f"{name}.yaml").write_text(TOPIC_YAML.format(name=name, first=first,
                                                             second=second))
    store = Store(root / "store")
    ids = {}
    for task in ("sst2", "imdb", str(data / "topic.yaml"), str(data / "topic2.yaml")):
        result = train(TrainConfig(model="tiny-roberta", task=task, steps=80, eval_every=20,
                                   prompt_length=8, batch_size=16, lr=0.1, eval_limit=None,
                                   data_dir=str(data)), store)
        ids[result.task] = result.prompt_id
    return root, data, ids
