"""The jobs of each command: prompt-tuning runs (`runs.py`), the analysis stages (`stages.py`),
projector pairs (`pairs.py`), whole studies (`replicate.py`), sweeps (`sweep.py`), and what a
study's jobs cost as they finish (`job_costs.py`)."""
