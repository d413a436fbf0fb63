"""Ray orchestration: sweep specs, resources, and sweeps of prompt-tuning runs on Ray Tune
(Ray Train for multi-worker runs), idempotent and fault tolerant through the prompt store."""

from ptdist.orchestration.spec import Resources, RunSpec, SweepSpec, load_spec, parse_spec
from ptdist.orchestration.sweep import SweepOutcome, plan_sweep, require_no_failures, run_sweep

__all__ = ["Resources", "RunSpec", "SweepOutcome", "SweepSpec", "load_spec", "parse_spec",
           "plan_sweep", "require_no_failures", "run_sweep"]
