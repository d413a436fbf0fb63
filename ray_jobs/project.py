"""Entry point for `ray job submit`:

    ray job submit --working-dir . -- python ray_jobs/project.py pairs \
        --spec specs/paper.yaml --mode task --train-tasks sst2
    ray job submit --working-dir . -- python ray_jobs/project.py eval \
        --projector 8e5fe180c2337c0f --tasks sst2 imdb --store /mnt/ptdist/store
    ray job submit --working-dir . -- python ray_jobs/project.py tpt \
        --projector 8e5fe180c2337c0f --target-tasks imdb --store /mnt/ptdist/store

Takes the same arguments as `ptdist project train|eval|tpt|pairs|list`, on the cluster the
job runs on.
"""

import sys
from pathlib import Path

# The job runs in Ray's copy of --working-dir; use that copy's ptdist.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ptdist.cli import main  # noqa: E402

if __name__ == "__main__":
    main(["project", *sys.argv[1:]])
