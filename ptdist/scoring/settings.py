"""How prompts are scored: the settings of `ptdist.evaluate` and `ptdist.evaluate_projector`,
whose defaults a run's own evaluation reads too (`TrainConfig`)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class EvalSettings:
    """How prompts are scored on a task's evaluation split (`ptdist.evaluate`,
    `ptdist.evaluate_projector`).

    eval_limit: evaluation examples per task (a seeded subset; None: the whole split).
    batch_size: examples per forward pass. max_new_tokens: the longest answer a generation
    task decodes. data_dir: the data folder (`<data_dir>/<task>/eval.jsonl`...; None:
    $PTDIST_DATA_DIR, else the task's own source). precision: bf16 or fp32 (None: the one the
    prompts were trained in). device: e.g. "cuda:1" (None: the GPU this process holds, else
    the CPU). ds_config: a DeepSpeed config (a ``ds_configs/`` name or JSON path) to partition
    the model over the process group this runs in (None: the whole model in this process).
    """

    eval_limit: int | None = 1000
    batch_size: int = 64
    max_new_tokens: int = 64
    data_dir: str | None = None
    precision: str | None = None
    device: str | None = None
    # How it runs, not what it computes: not in repr, which a study's stamp key reads.
    ds_config: str | None = field(default=None, repr=False)
