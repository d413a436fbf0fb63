"""Find a task: a built-in by name (builtin.yaml), or a user's task YAML by path. The names
alone are read with yaml only (`task_names`: every command's help lists them); the records are
validated (pydantic) when first asked for."""

from __future__ import annotations

import difflib
from functools import lru_cache
from pathlib import Path

import yaml

from ptdist.errors import PtdistError
from ptdist.shipped import package_data
from ptdist.tasks.record import TYPE_KINDS, TaskRecord

BUILTIN_FILE = package_data("ptdist.tasks", "builtin.yaml")


def _builtin_bodies() -> list:
    # libyaml's safe loader where PyYAML was built with it: a fifth of the pure-Python one's
    # time, and every command's help reads this file
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    return yaml.load(BUILTIN_FILE.read_text(encoding="utf-8"), Loader=loader)["tasks"]


@lru_cache(maxsize=1)
def _builtins() -> dict[str, TaskRecord]:
    from ptdist.tasks.parsing import parse_task

    tasks: dict[str, TaskRecord] = {}
    for i, body in enumerate(_builtin_bodies()):
        name = body.get("name", f"#{i}") if isinstance(body, dict) else f"#{i}"
        task = parse_task(body, where=f"built-in task '{name}' ({BUILTIN_FILE})")
        tasks[_key(task.name)] = task
    return tasks


def _key(name: str) -> str:
    return name.strip().lower().replace("-", "_")


def _order(type_: str, name: str) -> tuple[int, str]:
    """Where a built-in task is listed: by type (in the paper's order), then by name."""
    return list(TYPE_KINDS).index(type_), name


def list_tasks() -> list[TaskRecord]:
    """The built-in tasks, sorted by type (in the paper's order) then name."""
    return sorted(_builtins().values(), key=lambda t: _order(t.type, t.name))


@lru_cache(maxsize=1)
def task_names() -> tuple[str, ...]:
    """The built-in tasks' names in `list_tasks`' order, read from builtin.yaml without
    validating it (tests/test_cli_start.py checks they are list_tasks' names)."""
    bodies = sorted(_builtin_bodies(), key=lambda body: _order(body["type"], body["name"]))
    return tuple(body["name"] for body in bodies)


def get_task(name_or_path: str) -> TaskRecord:
    """A built-in task by name (case-insensitive, '-' or '_'), or the task in a YAML file."""
    from ptdist.tasks.parsing import parse_file

    builtins = _builtins()
    if _key(name_or_path) in builtins:
        return builtins[_key(name_or_path)]
    path = Path(name_or_path).expanduser()
    if path.suffix in (".yaml", ".yml") or path.is_file():
        if not path.exists():  # something else there (a FIFO) is named by parse_file
            raise PtdistError(f"task file {path} does not exist; check the path, or use a "
                              f"built-in task name ({', '.join(sorted(builtins))})")
        return parse_file(path)
    close = difflib.get_close_matches(_key(name_or_path), list(builtins), n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    raise PtdistError(f"unknown task '{name_or_path}'{hint}; known tasks: "
                      f"{', '.join(sorted(builtins))}; or give the path of a task YAML file "
                      "(format in docs/tasks.md)")
