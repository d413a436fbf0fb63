"""Find a task: a built-in by name (builtin.yaml), or a user's task YAML by path."""

from __future__ import annotations

import difflib
from functools import lru_cache
from pathlib import Path

import yaml

from ptdist.errors import PtdistError
from ptdist.shipped import package_data
from ptdist.tasks.parsing import parse_file, parse_task
from ptdist.tasks.record import TYPE_KINDS, TaskRecord

BUILTIN_FILE = package_data("ptdist.tasks", "builtin.yaml")


@lru_cache(maxsize=1)
def _builtins() -> dict[str, TaskRecord]:
    data = yaml.safe_load(BUILTIN_FILE.read_text(encoding="utf-8"))
    tasks: dict[str, TaskRecord] = {}
    for i, body in enumerate(data["tasks"]):
        name = body.get("name", f"#{i}") if isinstance(body, dict) else f"#{i}"
        task = parse_task(body, where=f"built-in task '{name}' ({BUILTIN_FILE})")
        tasks[_key(task.name)] = task
    return tasks


def _key(name: str) -> str:
    return name.strip().lower().replace("-", "_")


def list_tasks() -> list[TaskRecord]:
    """The built-in tasks, sorted by type (in the paper's order) then name."""
    order = list(TYPE_KINDS)
    return sorted(_builtins().values(), key=lambda t: (order.index(t.type), t.name))


def get_task(name_or_path: str) -> TaskRecord:
    """A built-in task by name (case-insensitive, '-' or '_'), or the task in a YAML file."""
    builtins = _builtins()
    if _key(name_or_path) in builtins:
        return builtins[_key(name_or_path)]
    path = Path(name_or_path).expanduser()
    if path.suffix in (".yaml", ".yml") or path.is_file():
        if not path.is_file():
            raise PtdistError(f"task file {path} does not exist; check the path, or use a "
                              f"built-in task name ({', '.join(sorted(builtins))})")
        return parse_file(path)
    close = difflib.get_close_matches(_key(name_or_path), list(builtins), n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    raise PtdistError(f"unknown task '{name_or_path}'{hint}; known tasks: "
                      f"{', '.join(sorted(builtins))}; or give the path of a task YAML file "
                      "(format in docs/tasks.md)")
