"""The artifact store: prompts and projectors (safetensors + typed JSON manifests), result
tables and activations (Parquet), under one root whose layout `StoreLayout` defines.

`Store` is the one handle every stage, job and command takes.
"""

from __future__ import annotations

import os
from pathlib import Path

from ptdist.errors import PtdistError
from ptdist.files import require_folder_path, require_writable_folder
from ptdist.store.layout import StoreLayout
from ptdist.store.projectors import ProjectorStore
from ptdist.store.prompts import PromptStore


def default_store_root() -> Path:
    return Path(os.environ.get("PTDIST_STORE", "store"))


class Store:
    """A store root: its layout, its prompts and its projectors; and where Ray Tune's and Ray
    Train's own records go: under the root, or under ``ray_storage``, a URI Ray writes to
    natively (``s3://bucket/prefix``) when the store's file system is not the place for them."""

    def __init__(self, root: str | os.PathLike | None = None, ray_storage: str | None = None):
        if root is not None and not str(root).strip():
            # Path("") is the working directory: the store's files would land among the user's.
            raise PtdistError("the store path is empty; give --store (or $PTDIST_STORE, or "
                              "storage_path) a folder, or leave it out for ./store")
        self.root = Path(root) if root is not None else default_store_root()
        # A folder, or a path that can become one: refused at once otherwise, before a command
        # does work it could not store.
        require_folder_path(self.root, "store", _FIX)
        self.ray_storage = ray_storage
        self.layout = StoreLayout(self.root)
        self.prompts = PromptStore(self.layout)
        self.projectors = ProjectorStore(self.layout)

    def require_writable(self) -> None:
        """Stop at once, before a command does work it could not store, if this process cannot
        create the root or write in it."""
        require_writable_folder(self.root, "store", _FIX)

    def ray_records(self, what: str) -> str:
        """Where Ray's records of ``what`` (``tune``, ``train``) go: a Tune or Train
        ``storage_path``."""
        if self.ray_storage is None:
            return str(self.layout.ray_dir(what))
        return f"{self.ray_storage.rstrip('/')}/{what}"

    def __repr__(self) -> str:
        return f"Store({str(self.root)!r})"

    def __reduce__(self):  # a Ray job carries the root, not the handles
        return (Store, (str(self.root), self.ray_storage))


_FIX = "give --store (or $PTDIST_STORE, or storage_path) a folder you can write (it is " \
    "created if missing)"


__all__ = ["Store", "StoreLayout", "default_store_root"]
