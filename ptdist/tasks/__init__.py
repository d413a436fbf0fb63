"""Task registry: declarative task records (builtin.yaml or a user's YAML), data loading from
the Hugging Face hub, standard data files or local files, and each benchmark's metrics.
Format: docs/tasks.md. Each name loads its module on first use (`ptdist.lazy`): the built-in
task names are read with yaml alone."""

from ptdist.lazy import lazy_face

__all__, __getattr__, __dir__ = lazy_face(__name__, {
    "loading": ("data_fingerprint", "data_origin", "load_split"),
    "metrics": ("compute_metrics",),
    "packaged_data": ("prepare_packaged_data", "unprepared_data"),
    "record": ("Source", "TaskRecord"),
    "registry": ("get_task", "list_tasks", "resolve_task", "task_names", "task_ref"),
})
