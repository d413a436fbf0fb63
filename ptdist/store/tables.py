"""Result tables: Parquet files of typed records, written atomically.

A table holds rows of one record type (a frozen dataclass of `ptdist.store.results`). Its Arrow
schema is derived from the dataclass's fields (str, int, float, bool, each optionally None), so
the schema and the record cannot drift apart, and the file's metadata names the record and its
schema version. A table of an older schema is read through the record's ``upgrade(rows,
version)`` when it has one; otherwise a table written before tables carried that metadata is
read when its columns hold the record's fields, and a table written before a field with a
default was added reads with that default. A table of another record, or of a newer schema, is
refused with a clear error.
"""

from __future__ import annotations

import os
import types
import typing
from dataclasses import MISSING, fields
from functools import lru_cache
from pathlib import Path
from typing import Any, Sequence, TypeVar

import pyarrow as pa
import pyarrow.parquet as pq

from ptdist.errors import PtdistError
from ptdist.store.atomic import atomic_write

R = TypeVar("R")
_ARROW = {str: pa.string(), int: pa.int64(), float: pa.float64(), bool: pa.bool_()}
_RECORD_KEY, _VERSION_KEY = b"ptdist.record", b"ptdist.schema_version"


@lru_cache(maxsize=None)
def record_schema(cls: type) -> pa.Schema:
    """The Arrow schema of a record dataclass: one nullable column per field."""
    hints = typing.get_type_hints(cls)
    return pa.schema([(f.name, _arrow_type(hints[f.name], cls)) for f in fields(cls)])


def _arrow_type(hint: Any, cls: type) -> pa.DataType:
    if isinstance(hint, types.UnionType):  # X | None
        inner = [h for h in typing.get_args(hint) if h is not type(None)]
        hint = inner[0] if len(inner) == 1 else hint
    if hint not in _ARROW:
        raise TypeError(f"{cls.__name__}: a table column must be str, int, float or bool "
                        f"(optionally None), not {hint}")
    return _ARROW[hint]


def write_records(path: str | os.PathLike, cls: type[R], rows: Sequence[R]) -> Path:
    """Write ``rows`` (instances of ``cls``) as one Parquet file."""
    schema = record_schema(cls).with_metadata(
        {_RECORD_KEY: cls.__name__.encode(), _VERSION_KEY: str(cls.SCHEMA).encode()})
    names = schema.names
    table = pa.Table.from_pylist([{n: getattr(r, n) for n in names} for r in rows],
                                 schema=schema)
    return atomic_write(path, lambda tmp: pq.write_table(table, tmp))


def read_records(path: str | os.PathLike, cls: type[R]) -> list[R]:
    """The rows of a table written by `write_records` for ``cls``."""
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowInvalid) as exc:
        raise PtdistError(f"cannot read table {path}: {exc}") from None
    meta = table.schema.metadata or {}
    record, version = meta.get(_RECORD_KEY), int(meta.get(_VERSION_KEY, b"1"))
    names = record_schema(cls).names
    upgrade = getattr(cls, "upgrade", None) if version < cls.SCHEMA else None
    added = {f.name for f in fields(cls) if f.default is not MISSING}
    present = [n for n in names if n in table.column_names]
    columns_hold = set(names) - set(present) <= added
    if record not in (None, cls.__name__.encode()) or version > cls.SCHEMA or \
            not (upgrade or columns_hold):
        found = record.decode() if record else f"columns {table.column_names}"
        raise PtdistError(f"table {path} holds {found} (schema {version}), not "
                          f"{cls.__name__} (schema {cls.SCHEMA}) with columns {names}; it was "
                          "written by another ptdist version or is not a ptdist table: "
                          "delete it and re-run the stage that writes it")
    if upgrade:
        return [cls(**{n: row[n] for n in names if n in row})
                for row in upgrade(table.to_pylist(), version)]
    return [cls(**row) for row in table.select(present).to_pylist()]
