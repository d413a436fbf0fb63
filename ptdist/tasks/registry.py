"""Find a task: a built-in by name (builtin.yaml), or a user's task YAML by path; and resolve a
task argument once, the same way for every command (`resolve_task`). The names alone are read
with yaml only (`task_names`: every command's help lists them); the records are validated
(pydantic) when first asked for."""

from __future__ import annotations

import difflib
from collections.abc import Mapping
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
    if _names_a_file(path):
        if not path.exists():  # something else there (a FIFO) is named by parse_file
            raise PtdistError(f"task file {path} does not exist; check the path, or use a "
                              f"built-in task name ({', '.join(sorted(builtins))})")
        return parse_file(path)
    raise _unknown(name_or_path, {})


def _names_a_file(path: Path) -> bool:
    return path.suffix in (".yaml", ".yml") or path.is_file()


def _unknown(name: str, stored: Mapping[str, str]) -> PtdistError:
    builtins = _builtins()
    close = difflib.get_close_matches(_key(name), [*builtins, *stored], n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    defined = (f"; tasks defined in YAML that the store has prompts of: "
               f"{', '.join(sorted(stored))}" if stored else "")
    return PtdistError(f"unknown task '{name}'{hint}; known tasks: "
                       f"{', '.join(sorted(builtins))}{defined}; or give the path of a task "
                       "YAML file (format in docs/tasks.md)")


def task_ref(task: str, base: Path) -> str:
    """A task YAML path made absolute against ``base`` (runs execute in other working
    directories); a registered name unchanged. Nothing is read."""
    return str((base / task).resolve()) if task.endswith((".yaml", ".yml")) else task


def resolve_task(task: str, base: Path | None = None,
                 stored: Mapping[str, str] | None = None) -> str:
    """A task argument as runs carry it, checked now, before any work: a built-in name
    unchanged; a task file's path made absolute (against ``base``, default the working
    folder) and read; or the name of a task defined in YAML whose file ``stored`` names (task
    name -> file: the store's prompts record the file they were trained from,
    `PromptStore.task_files`), so a task written once in YAML is then known by its name too.
    Anything else stops with the unknown-task error."""
    if _key(task) in _builtins():
        return task
    path = (base or Path.cwd()) / Path(task).expanduser()  # an absolute path stays itself
    if _names_a_file(path):
        get_task(str(path))
        return str(path.resolve())
    if stored and task in stored:
        get_task(stored[task])  # the file may have moved since its prompts were trained
        return stored[task]
    raise _unknown(task, stored or {})
