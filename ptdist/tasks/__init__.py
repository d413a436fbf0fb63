"""Task registry: declarative task records (builtin.yaml or a user's YAML), data loading from
the Hugging Face hub, standard data files or local files, and each benchmark's metrics.
Format: docs/tasks.md."""

from ptdist.tasks.loading import data_fingerprint, data_origin, load_split
from ptdist.tasks.metrics import compute_metrics
from ptdist.tasks.record import Source, TaskRecord
from ptdist.tasks.registry import get_task, list_tasks

__all__ = ["Source", "TaskRecord", "compute_metrics", "data_fingerprint", "data_origin",
           "get_task", "list_tasks", "load_split"]
