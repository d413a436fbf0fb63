"""Atomic file writes: temp file in the same folder, fsync, rename.

A reader (or a crashed writer's successor) sees either the old file or the new one, never a
partial write; this is what makes the store safe for many Ray workers at once. Files are created
with the process's umask applied, as any other file it creates (a group that shares a store
reads it), and JSON is strict: a NaN or infinity is a bug to surface, not a value to store.
"""

from __future__ import annotations

import json
import os
import stat
import uuid
from pathlib import Path
from typing import Any, Callable

from ptdist.faults import reach


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp_path)`` then move ``tmp_path`` onto ``path`` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    # Created here, so the umask applies (mkstemp makes every file 0600), and that mode put back
    # after ``write``: some writers (safetensors) replace the file with one of their own.
    os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
    mode = stat.S_IMODE(tmp.stat().st_mode)
    try:
        write(str(tmp))
        os.chmod(tmp, mode)
        fsync_file(tmp)
        reach(f"write {path.absolute()}")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return path


def fsync_file(path: str | os.PathLike) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def fsync_dir(folder: str | os.PathLike) -> None:
    """Make the renames and new names in ``folder`` durable."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def temp_path(path: Path) -> Path:
    """A hidden, unique name beside ``path`` for a file being written (readers of the folder
    skip names starting with a dot)."""
    return path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)

    return atomic_write(path, write)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, allow_nan=False)
                             + "\n")
