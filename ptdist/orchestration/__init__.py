"""Ray orchestration, the only package that imports Ray: it turns work into jobs (`graph.Job`),
places them (`resources.py`, `worker_group.py`), runs them on Ray or in this process under one
failure policy (`failures.py`), and builds the jobs of each command: sweeps of prompt-tuning
runs on Ray Tune (`sweep.py`), projector pairs (`pairs.py`), the analysis stages
(`stages.py`) and whole studies (`replicate.py`). Map: docs/architecture.md."""
