"""Entry point for `ray job submit`:

    ray job submit --working-dir . -- python ray_jobs/replicate.py --study specs/paper.yaml

Takes the same arguments as `ptdist replicate`, on the cluster the job runs on.
"""

import sys
from pathlib import Path

# The job runs in Ray's copy of --working-dir; use that copy's ptdist.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ptdist.cli import main  # noqa: E402

if __name__ == "__main__":
    main(["replicate", *sys.argv[1:]])
