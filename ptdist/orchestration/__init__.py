"""Ray orchestration, the only package that imports Ray: it turns work into jobs, places them and
runs them on Ray or in this process under one failure policy. One sub-package per job:

- `spec`: reads a sweep spec or a study (YAML) into validated settings (`sweep_spec.py`,
  `study_spec.py`), a preset by its name (`spec_presets.py`);
- `planning`: decides before anything runs: what the cluster offers (`resources.py`), each
  model's placement plan and the packing of runs (`plans.py`, on the cost model `cost_model.py`
  and the least-compute placement `placement.py`), a dry run's estimate and schedule
  (`estimate.py`, `schedule.py`);
- `jobs`: builds the jobs of each command: prompt-tuning runs (`runs.py`), the analysis stages
  (`stages.py`), projector pairs (`pairs.py`), whole studies (`replicate.py`), sweeps on Ray Tune
  (`sweep.py`), and records what a study's jobs cost as they finish (`job_costs.py`);
- `execution`: runs jobs: the job graph (`graph.py`) under the failure policy (`failures.py`),
  what every attempt does first (`attempt.py`), joining or starting Ray (`cluster.py`), worker
  groups and where they meet (`worker_group.py`, `rendezvous.py`), a Tune sweep's progress
  (`tune_progress.py`).

Map: docs/architecture.md."""
