"""What ptdist reads from a path it is given (a data file, a spec, a manifest, a prompt file):
a regular file, checked by its type before it is opened, since opening a FIFO waits for a writer
for ever and a folder or a device is no file to parse; and text as UTF-8, a file that is not
named with the offset of its first bad byte and the command that converts it.

Used by every layer, so it imports nothing else of ptdist but its error type.
"""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path

from ptdist.errors import PtdistError

_KINDS = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
          (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"))


def not_a_file(path: str | os.PathLike) -> str | None:
    """None for a regular file (a link to one counts); else what ``path`` is instead, in words:
    missing, a dangling link, a folder, a FIFO..."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "a symbolic link to a missing file" if os.path.islink(path) else "missing"
    except OSError as exc:
        return f"unreadable ({exc.strerror or exc})"
    if stat.S_ISREG(mode):
        return None
    return next((kind for test, kind in _KINDS if test(mode)), "not a regular file")


def require_file(path: str | os.PathLike, what: str,
                 fix: str | None = "give the path of a regular file") -> Path:
    """``path``, if it is a regular file; else one error naming ``what`` (e.g. "data file"),
    what the path is instead and, unless None, the ``fix``."""
    kind = not_a_file(path)
    if kind == "missing":
        problem = f"{what} {path} does not exist"
        fix = fix and "check the path"
    elif kind is not None:
        problem = f"{what} {path} is {kind}, not a regular file"
    else:
        return Path(path)
    raise PtdistError(problem + (f"; {fix}" if fix else ""))


def read_bytes(path: str | os.PathLike, what: str,
               fix: str | None = "give the path of a regular file") -> bytes:
    """The content of the regular file ``path``; anything else, or a read that fails, is one
    error naming ``what`` and the path (`require_file`)."""
    try:
        return require_file(path, what, fix).read_bytes()
    except OSError as exc:
        raise PtdistError(f"cannot read {what} {path}: {exc.strerror or exc}") from None


def read_text(path: str | os.PathLike, what: str) -> str:
    """The UTF-8 text of the regular file ``path``, without a leading byte-order mark."""
    return decode_utf8(read_bytes(path, what), path, what)


def decode_utf8(data: bytes, path: str | os.PathLike, what: str) -> str:
    """``data`` (the content of ``path``) as UTF-8 text; a byte that is not UTF-8 is one error
    naming the file, the byte's offset and how to convert the file."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise PtdistError(
            f"{what} {path} is not UTF-8 text: byte {exc.start} (0x{data[exc.start]:02x}) "
            f"{exc.reason}; save it as UTF-8, e.g. `iconv -f latin1 -t utf-8 {path} > NEW` "
            "for a Latin-1 file") from None


def require_folder_path(path: Path, what: str, fix: str) -> None:
    """``path`` is a folder, or a path that can become one: its nearest part that exists is a
    folder, and no part is a symbolic link to nothing (making the folder would fail there)."""
    for part in (path, *path.parents):
        if part.is_symlink() and not part.exists():
            raise PtdistError(f"{what} {path}: {part} is a symbolic link to "
                              f"{os.readlink(part)}, which does not exist; {fix}")
        if part.exists():
            if not part.is_dir():
                raise PtdistError(f"{what} {path}: {part} is a file, not a folder; {fix}")
            return


def require_writable_folder(path: Path, what: str, fix: str) -> None:
    """This process can create the folder ``path`` (`require_folder_path`) or write in it:
    tried by making and removing a folder there, since permissions alone do not tell (root
    passes them; /proc refuses new names whatever they say; a mount may be read-only)."""
    require_folder_path(path, what, fix)
    existing = next(p for p in (path, *path.parents) if p.exists())
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".ptdist-write-check-", dir=existing))
    except OSError as exc:
        where = "its folder" if existing == path else f"it would be created in {existing}, which"
        raise PtdistError(f"{what} {path} is not writable: {where} does not take new files "
                          f"({exc.strerror or exc}); {fix}") from None
