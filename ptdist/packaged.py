"""`pkg:PACKAGE/path` references: files shipped inside an installed Python package.

Some real models and data sets install from PyPI as packages (see docs/models_data.md); a
reference names them without a site-packages path that differs between machines. The package
is located with importlib.util.find_spec, which does not import (or run) it.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from ptdist.errors import PtdistError

PREFIX = "pkg:"


def is_packaged(ref: str) -> bool:
    return ref.startswith(PREFIX)


def resolve_packaged(ref: str) -> Path:
    """The file or folder that ``pkg:PACKAGE/relative/path`` names."""
    package, _, relative = ref[len(PREFIX):].partition("/")
    spec = importlib.util.find_spec(package) if package else None
    if spec is None or not spec.submodule_search_locations:
        raise PtdistError(f"'{ref}': no installed package '{package}'; install it (pip install "
                          f"{package.replace('_', '-')}) or give a local path instead")
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    if not path.exists():
        raise PtdistError(f"'{ref}': package '{package}' has no '{relative}' (looked in {path})")
    return path
