"""Result tables: Parquet files with an explicit schema, written atomically."""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from ptdist.store.atomic import atomic_write


def write_table(path: str | os.PathLike, rows: list[dict], schema: pa.Schema) -> Path:
    """Write ``rows`` (dicts keyed by the schema's field names) as one Parquet file."""
    table = pa.Table.from_pylist(rows, schema=schema)
    return atomic_write(path, lambda tmp: pq.write_table(table, tmp))


def read_table(path: str | os.PathLike) -> list[dict]:
    return pq.read_table(path).to_pylist()
