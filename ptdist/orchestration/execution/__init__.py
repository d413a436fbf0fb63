"""Running jobs: the job graph on Ray or in this process (`graph.py`) under the one failure
policy (`failures.py`), what every attempt does first (`attempt.py`), joining or starting Ray
(`cluster.py`), worker groups and where they meet (`worker_group.py`, `rendezvous.py`), and a
Tune sweep's progress lines (`tune_progress.py`)."""
