"""Entry point for `ray job submit`:

    ray job submit --working-dir . -- python ray_jobs/transfer.py matrix \
        --model roberta-base --tasks sst2 imdb mnli snli --store /mnt/ptdist/store
    ray job submit --working-dir . -- python ray_jobs/transfer.py tpt \
        --model roberta-base --target-tasks imdb --source-tasks sst2 mnli --store /mnt/ptdist/store

Takes the same arguments as `ptdist transfer matrix|tpt`, on the cluster the job runs on.
"""

import sys
from pathlib import Path

# The job runs in Ray's copy of --working-dir; use that copy's ptdist.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ptdist.cli import main  # noqa: E402

if __name__ == "__main__":
    main(["transfer", *sys.argv[1:]])
