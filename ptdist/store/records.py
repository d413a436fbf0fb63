"""What the prompt and projector stores share: one folder per record, named by its
content-addressed id, holding one safetensors file and ``manifest.json``.

The manifest is written last and marks the record complete; it records the sha256 of the tensor
file, verified whenever the file is read. A damaged record (a manifest that is not strict JSON
or not of its schema, a missing or altered tensor file, a file that is a folder or a FIFO, a
record folder that is a symbolic link rather than a folder of the store) never takes the store
down with it: listing the store names it on stderr and carries on with the others; a command
about that one record stops with one line saying what is wrong and what to do; `check`
examines every record. Nothing is written through a link: a record folder that is one is
refused.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Generic, TypeVar

from ptdist.checksum import file_sha256
from ptdist.errors import PtdistError
from ptdist.files import not_a_file, read_bytes
from ptdist.store.atomic import atomic_write, atomic_write_text
from ptdist.store.manifests import NewerSchema, read_manifest

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
M = TypeVar("M")


@dataclass(frozen=True)
class Checked:
    """One record's folder as `RecordFolders.check` found it: ``problem`` None when sound."""

    id: str
    problem: str | None
    note: str | None = None  # sound, but worth saying (an old schema without a checksum)


class RecordFolders(Generic[M]):
    """The records of one kind (``kind``: "prompt", "projector") of the store at ``store``:
    ``folder(id)`` is ``<root>/<id>``, holding ``tensor_file`` and ``manifest.json``;
    ``listing`` is the command that lists them."""

    def __init__(self, store: Path, root: Path, folder: Callable[[str], Path],
                 manifest_type: type[M], kind: str, tensor_file: str, listing: str):
        self.store, self.root, self._folder = store, root, folder
        self.manifest_type, self.kind = manifest_type, kind
        self.tensor_file, self.listing = tensor_file, listing
        self._reported: set[str] = set()

    def folder(self, record_id: str) -> Path:
        return self._folder(record_id)

    def has(self, record_id: str) -> bool:
        return (self.folder(record_id) / MANIFEST).exists()

    def write(self, manifest: M, write_tensors: Callable[[str], None]) -> Path:
        """Store a record: its tensor file (``write_tensors(path)``), then the manifest holding
        the file's checksum, each atomically. The manifest is serialised first, so one that is
        not strict JSON stops the write before anything is on disk."""
        json.dumps(manifest.to_json(), allow_nan=False)
        folder = self.require_own_folder(manifest.id)
        tensors = atomic_write(folder / self.tensor_file, write_tensors)
        manifest = replace(manifest, file_sha256=file_sha256(tensors))
        atomic_write_text(folder / MANIFEST, json.dumps(manifest.to_json(), indent=2,
                                                        sort_keys=True, allow_nan=False) + "\n")
        return folder

    def require_own_folder(self, record_id: str) -> Path:
        """The folder ``record_id`` is stored in, unless it is a symbolic link: nothing is
        written through one (a link out of the store would put the record elsewhere)."""
        folder = self.folder(record_id)
        linked = self._link_problem(folder)
        if linked:
            raise PtdistError(f"cannot store {self.kind} {record_id}: its folder {linked}; "
                              "nothing is written through a link. Remove the link and run "
                              "the command again")
        return folder

    def manifest(self, record_id: str) -> M:
        """The manifest of ``record_id``; an unknown id or a damaged manifest is one error."""
        if not self.has(record_id):
            raise PtdistError(f"no {self.kind} '{record_id}' in store {self.store}; "
                              f"`{self.listing} --store {self.store}` lists what it holds")
        try:
            return self._read(record_id)
        except NewerSchema:
            raise
        except PtdistError as exc:
            raise self._damaged(record_id, str(exc)) from None

    def tensor_path(self, record_id: str) -> Path:
        """The tensor file of ``record_id``, after checking it against its manifest's
        checksum (a version-2 manifest has none to check)."""
        expected = self.manifest(record_id).file_sha256
        path = self.folder(record_id) / self.tensor_file
        problem = self._file_problem(path, expected)
        if problem:
            raise self._damaged(record_id, problem)
        return path

    def manifests(self) -> list[M]:
        """Every complete record's manifest, oldest first. A damaged one is named on stderr
        (once per store handle) and left out."""
        rows = []
        self._check_root()
        for path in self.root.glob(f"*/{MANIFEST}"):
            try:
                rows.append(self._read(path.parent.name))
            except PtdistError as exc:
                if path.parent.name not in self._reported:
                    self._reported.add(path.parent.name)
                    why = str(exc) if isinstance(exc, NewerSchema) else \
                        f"its manifest {path} is damaged ({exc}); `ptdist prompts --check " \
                        f"--store {self.store}` checks every record"
                    log.warning(f"{self.kind} {path.parent.name} is left out: {why}")
        return sorted(rows, key=lambda m: (m.created, m.id))

    def check(self) -> list[Checked]:
        """Every folder under the root, examined: manifest, id, tensor file and checksum; a
        link where a folder should be is damaged. A store that does not exist is an error,
        not a store of no records."""
        if not self.store.is_dir():
            raise PtdistError(f"store {self.store} does not exist (or is no folder), so there "
                              "is nothing to check; give --store the folder of a store")
        self._check_root()
        found = []
        for folder in sorted(p for p in self.root.glob("*") if p.is_dir() or p.is_symlink()):
            record_id = folder.name
            linked = self._link_problem(folder)
            if linked:
                found.append(Checked(record_id, f"the record folder {linked}"))
                continue
            if not (folder / MANIFEST).exists():
                found.append(Checked(record_id, None, "incomplete: no manifest (a run stopped "
                                                      "while storing it); not listed, redone "
                                                      "when asked for"))
                continue
            try:
                m = self._read(record_id)
            except PtdistError as exc:
                found.append(Checked(record_id, f"manifest: {exc}"))
                continue
            problem = (f"manifest says id {m.id}" if m.id != record_id else
                       self._file_problem(folder / self.tensor_file, m.file_sha256)
                       or self.content_problem(folder / self.tensor_file, m))
            found.append(Checked(record_id, problem, None if m.file_sha256 else
                                 "no checksum recorded (a manifest of schema 2)"))
        return found

    def content_problem(self, path: Path, manifest: M) -> str | None:
        """What is wrong with the tensor file ``path`` of a record whose checksum matches (or
        was not recorded), if anything; a kind of record with more to check says so here."""
        return None

    def _read(self, record_id: str) -> M:
        folder = self.folder(record_id)
        linked = self._link_problem(folder)
        if linked:
            raise PtdistError(f"its folder {linked}")
        # Not UTF-8 is a damaged manifest like any other: the JSON reader names it.
        text = read_bytes(folder / MANIFEST, "manifest", fix=None).decode("utf-8", "replace")
        return read_manifest(self.manifest_type, self.kind, text)

    def _check_root(self) -> None:
        """The folder of this kind of record is a folder, if it exists."""
        if self.root.exists() and not self.root.is_dir():
            raise PtdistError(f"{self.root} in store {self.store} is a file, where the store "
                              f"keeps its {self.kind}s in a folder; move the file away")

    @staticmethod
    def _link_problem(folder: Path) -> str | None:
        """What is wrong with a record folder that is a symbolic link (None for a folder)."""
        if not folder.is_symlink():
            return None
        return f"{folder} is a symbolic link (to {os.readlink(folder)}), not a folder of the store"

    def _file_problem(self, path: Path, expected: str | None) -> str | None:
        kind = not_a_file(path)
        if kind == "missing":
            return f"{self.tensor_file} is missing"
        if kind is not None:
            return f"{self.tensor_file} is {kind}, not a regular file"
        if expected is not None and file_sha256(path) != expected:
            return f"{self.tensor_file} does not match the checksum in its manifest (altered " \
                   "or corrupt)"
        return None

    def _damaged(self, record_id: str, problem: str) -> PtdistError:
        return PtdistError(f"{self.kind} {record_id} in store {self.store} is damaged: "
                           f"{problem}. Remove its folder ({self.folder(record_id)}) and run "
                           "the command that made it again, or restore it from a backup")
