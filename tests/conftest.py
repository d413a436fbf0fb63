"""Shared fixtures: an isolated cache/store per session, and a small learnable task on disk.

The learnable task is SST-2-shaped (columns sentence, label) so it goes through the built-in
sst2 record and the real local-file loading path (`data_dir`), not a test-only code path.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

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
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        label = rng.randint(0, 1)
        words = rng.choices(FILLER, k=rng.randint(3, 7))
        words.insert(rng.randint(0, len(words)), rng.choice(POSITIVE if label else NEGATIVE))
        rows.append({"sentence": " ".join(words), "label": label})
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory) -> None:
    """Presets and `datasets` caches in a session temp folder, never the user's home."""
    cache = tmp_path_factory.mktemp("cache")
    os.environ["PTDIST_CACHE"] = str(cache / "ptdist")
    os.environ["HF_DATASETS_CACHE"] = str(cache / "datasets")


@pytest.fixture(scope="session")
def sentiment_dir(tmp_path_factory) -> Path:
    """A data folder holding sst2/train.jsonl and sst2/eval.jsonl (learnable)."""
    root = tmp_path_factory.mktemp("data")
    write_jsonl(root / "sst2" / "train.jsonl", sentiment_rows(256, seed=1))
    write_jsonl(root / "sst2" / "eval.jsonl", sentiment_rows(128, seed=2))
    return root
