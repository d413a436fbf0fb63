"""Entry point for `ray job submit`:

    ray job submit --working-dir . -- python ray_jobs/neurons.py capture \
        --model roberta-base --store /mnt/ptdist/store --chunks 8 --gpus 1
    ray job submit --working-dir . -- python ray_jobs/neurons.py indicators --model roberta-base \
        --store /mnt/ptdist/store
    ray job submit --working-dir . -- python ray_jobs/neurons.py correlate --model roberta-base \
        --store /mnt/ptdist/store

Takes the same arguments as `ptdist neurons capture|indicators|correlate`.
"""

import sys
from pathlib import Path

# The job runs in Ray's copy of --working-dir; use that copy's ptdist.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ptdist.cli import main  # noqa: E402

if __name__ == "__main__":
    main(["neurons", *sys.argv[1:]])
