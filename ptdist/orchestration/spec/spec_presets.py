"""Presets: the studies and sweep specs that ship with ptdist (``specs/``, see
`ptdist.shipped`), named without a path: ``--preset quickstart``, ``--spec tiny``.

A preset writes where the command runs, never into the installation it is read from: a
relative ``storage_path`` or ``data_dir`` in it stands for the working directory's store and
data folder, ``$PTDIST_STORE`` (else ``./store``) and ``$PTDIST_DATA_DIR`` (else ``./data``);
an absolute one (the paper preset's cluster mount) stays. What it reads (task files,
``cluster.yaml``, a DeepSpeed config file) is relative to the preset's own file, as in any
spec. A spec file given as a path keeps all its relative paths relative to itself.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ptdist.errors import PtdistError
from ptdist.shipped import listing, shipped_file, shipped_names
from ptdist.store import default_store_root

FOLDER, SUFFIX = "specs", ".yaml"


@dataclass(frozen=True)
class SpecFile:
    """A sweep spec or study to read: its file, and whether it is a preset read by name."""

    path: Path
    preset: bool = False


def preset(name: str) -> SpecFile:
    """The preset ``name``, or one error listing the presets."""
    return SpecFile(shipped_file(FOLDER, name, SUFFIX, "preset", "a study file (--study FILE)"),
                    preset=True)


def preset_names() -> list[str]:
    return shipped_names(FOLDER, SUFFIX)


def spec_file(given: str | os.PathLike | SpecFile, what: str = "sweep spec") -> SpecFile:
    """The spec or study ``given`` names: the file at that path when there is one (a path
    always wins), else the preset of that name."""
    if isinstance(given, SpecFile):
        return given
    path = Path(given).expanduser()
    if path.exists():
        return SpecFile(path)
    if str(given) in preset_names():
        return preset(str(given))
    raise PtdistError(f"{what} '{given}': no such file, and no preset of that name; give a YAML "
                      f"file or a preset: {listing(FOLDER, SUFFIX)}")


def written_here(raw: dict) -> dict[str, str]:
    """A preset's relative ``storage_path`` and ``data_dir`` (in ``raw``, as read) as the
    working directory's store and data folder."""
    here = {"storage_path": default_store_root(),
            "data_dir": Path(os.environ.get("PTDIST_DATA_DIR", "data"))}
    return {key: str(folder.expanduser().resolve()) for key, folder in here.items()
            if isinstance(raw.get(key), str) and "://" not in raw[key]
            and not Path(raw[key]).expanduser().is_absolute()}
