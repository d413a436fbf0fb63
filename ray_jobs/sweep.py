"""Entry point for `ray job submit`:

    ray job submit --working-dir . -- python ray_jobs/sweep.py --spec specs/tiny.yaml \
        --store /mnt/ptdist/store

Takes the same arguments as `ptdist sweep`. In a submitted job RAY_ADDRESS is set, so the sweep
runs on that cluster.
"""

import sys
from pathlib import Path

# The job runs in Ray's copy of --working-dir; use that copy's ptdist.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ptdist.cli import main  # noqa: E402

if __name__ == "__main__":
    main(["sweep", *sys.argv[1:]])
