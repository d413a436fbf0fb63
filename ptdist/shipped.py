"""The repository's top-level files that ptdist reads at run time: the DeepSpeed configs
(``ds_configs/``), the presets (``specs/``), the task files they name (``examples/tasks/``)
and the cluster config the paper preset's runs are checked against (``cluster.yaml``).

They live where a checkout has them. pyproject.toml maps them into the wheel as the package
data of ``ptdist/_toplevel/``, one mapping and no second copy, in the checkout's layout, so a
preset's relative references (``../examples/tasks/tweets.yaml``) hold in both. An installed
wheel reads them from there; ptdist run from a source checkout (an editable install, or the
checkout on ``sys.path``) reads the checkout's own, which a wheel does not hold.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from ptdist.errors import PtdistError

WHEEL_FOLDER = "_toplevel"  # pyproject.toml's [tool.setuptools.package-dir]


def package_data(package: str, name: str) -> Path:
    """A data file or folder of one of ptdist's own packages (``ptdist.tasks``...). ptdist is
    installed as files, never zipped: what it reads it reads as paths."""
    return Path(str(resources.files(package) / name))


def top_level() -> Path:
    """Where the top-level files are: inside the installed wheel, else the source checkout."""
    shipped = package_data("ptdist", WHEEL_FOLDER)
    return shipped if shipped.is_dir() else _checkout()


def shipped_file(folder: str, name: str, suffix: str, what: str, other: str) -> Path:
    """``<folder>/<name><suffix>`` among the top-level files, or one error naming the ``what``
    ("DeepSpeed config"...), the ``other`` way to give one ("a JSON file path") and the names
    there."""
    path = top_level() / folder / f"{name}{suffix}"
    if path.is_file():
        return path
    raise PtdistError(f"{what} '{name}' not found; give {other} or one of: "
                      f"{listing(folder, suffix)}")


def shipped_names(folder: str, suffix: str) -> list[str]:
    """The names of the ``*<suffix>`` files of ``folder`` among the top-level files."""
    return sorted(p.name[:-len(suffix)] for p in (top_level() / folder).glob(f"*{suffix}"))


def listing(folder: str, suffix: str) -> str:
    """`shipped_names` for a message; where there are none, why."""
    names = shipped_names(folder, suffix)
    return ", ".join(names) if names else f"none, as {top_level() / folder} is missing (install " \
        "ptdist from its wheel, or run it from a whole checkout)"


def _checkout() -> Path:
    """The source checkout ptdist runs from (an editable install, the checkout on sys.path, or
    Ray's copy of a `--working-dir`): the folder that holds the package, whose top-level files
    pyproject.toml maps into a wheel. Never the working directory: Ray Tune runs each trial in
    a folder of its own."""
    return package_data("ptdist", ".").resolve().parent
