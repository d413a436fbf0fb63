"""FFN activations in Parquet, partitioned like a Hive table under
`StoreLayout.activations`:

    activations/model=<model>/task=<task>/layer=<i>/part-<uuid>.parquet

One row per (prompt, layer). Columns: ``prompt_id``, ``layer_name`` ("encoder.3"),
``protocol`` ("prompt" | "data"), ``examples`` (rows averaged; 0 for the prompt protocol),
``n_active``, ``values`` (fixed_size_list<float32>[d_ff]) and ``states`` (the activation
states ``values > 0`` bit-packed: fixed_size_list<uint8>[ceil(d_ff / 8)], numpy.packbits'
big-endian bit order). ``model``, ``task`` and ``layer`` are the partition keys. Plain Arrow
types only: any Parquet reader (pyarrow, Ray Data, DuckDB, Spark) reads it.

Rows are buffered per partition and written every ``flush_rows`` rows, so memory stays bounded
however many prompts are captured; each part file is written under a temporary name and renamed
when complete.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from ptdist.store.layout import StoreLayout


def activation_schema(d_ff: int) -> pa.Schema:
    return pa.schema([
        ("prompt_id", pa.string()), ("layer_name", pa.string()), ("protocol", pa.string()),
        ("examples", pa.int32()), ("n_active", pa.int32()),
        ("values", pa.list_(pa.float32(), d_ff)),
        ("states", pa.list_(pa.uint8(), (d_ff + 7) // 8)),
    ])


class ActivationWriter:
    """Streams activation rows of one model into its partitions."""

    def __init__(self, layout: StoreLayout, model: str, d_ff: int, flush_rows: int = 64):
        self.dir = layout.activations(model)
        self.schema = activation_schema(d_ff)
        self.flush_rows = flush_rows
        self._buffers: dict[tuple[str, int], list[dict]] = {}
        self._writers: dict[tuple[str, int], tuple[pq.ParquetWriter, Path, Path]] = {}

    def add(self, prompt_id: str, task: str, protocol: str, examples: int,
            activations: np.ndarray, layer_names: list[str]) -> None:
        """Queue one prompt's activations ``[layers, d_ff]``."""
        for layer, (name, values) in enumerate(zip(layer_names, activations)):
            values = np.asarray(values, dtype=np.float32)
            active = values > 0
            rows = self._buffers.setdefault((task, layer), [])
            rows.append({"prompt_id": prompt_id, "layer_name": name, "protocol": protocol,
                         "examples": examples, "n_active": int(active.sum()), "values": values,
                         "states": np.packbits(active)})
            if len(rows) >= self.flush_rows:
                self._flush((task, layer))

    def _flush(self, key: tuple[str, int]) -> None:
        rows = self._buffers.pop(key, [])
        if not rows:
            return
        if key not in self._writers:
            folder = self.dir / f"task={key[0]}" / f"layer={key[1]}"
            folder.mkdir(parents=True, exist_ok=True)
            final = folder / f"part-{uuid.uuid4().hex}.parquet"
            tmp = final.with_name("." + final.name + ".tmp")
            # Activation floats rarely repeat: dictionary-encoding them only adds size.
            writer = pq.ParquetWriter(tmp, self.schema, compression="zstd",
                                      use_dictionary=["prompt_id", "layer_name", "protocol"])
            self._writers[key] = (writer, tmp, final)
        columns = {f.name: [r[f.name] for r in rows] for f in self.schema}
        self._writers[key][0].write_table(pa.table(columns, schema=self.schema))

    def close(self) -> None:
        for key in list(self._buffers):
            self._flush(key)
        for writer, tmp, final in self._writers.values():
            writer.close()
            os.replace(tmp, final)
        self._writers.clear()

    def __enter__(self) -> "ActivationWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def activation_dataset(layout: StoreLayout, model: str) -> ds.Dataset | None:
    """The model's activations as a pyarrow dataset (partition keys as columns), or None."""
    folder = layout.activations(model)
    if not folder.exists():
        return None
    return ds.dataset(folder, format="parquet", partitioning="hive",
                      exclude_invalid_files=True, ignore_prefixes=[".", "_"])


def captured(layout: StoreLayout, model: str, protocol: str) -> set[str]:
    """Ids of the prompts whose activations are stored for ``protocol``."""
    dataset = activation_dataset(layout, model)
    if dataset is None:
        return set()
    table = dataset.to_table(columns=["prompt_id"], filter=ds.field("protocol") == protocol)
    return set(table.column("prompt_id").to_pylist())


def read_states(layout: StoreLayout, model: str,
                protocol: str) -> dict[str, tuple[str, np.ndarray]]:
    """``{prompt id: (task, states [layers, d_ff] bool)}``, unpacked from the bit columns.

    A T5 prompt's states are its decoder layers: captures made before ON read T5's decoder
    only also hold encoder rows, which are left out here (the decoder rows are the same)."""
    dataset = activation_dataset(layout, model)
    if dataset is None:
        return {}
    table = dataset.to_table(columns=["prompt_id", "task", "layer", "layer_name", "states"],
                             filter=ds.field("protocol") == protocol)
    d_ff = dataset.schema.field("values").type.list_size
    grouped: dict[str, tuple[str, dict[tuple[bool, int], np.ndarray]]] = {}
    for row in table.to_pylist():
        bits = np.unpackbits(np.asarray(row["states"], dtype=np.uint8))
        key = (row["layer_name"].startswith("decoder"), int(row["layer"]))
        grouped.setdefault(row["prompt_id"], (row["task"], {}))[1][key] = bits[:d_ff].astype(bool)
    out = {}
    for pid, (task, layers) in grouped.items():
        decoder = any(is_decoder for is_decoder, _ in layers)
        out[pid] = (task, np.stack([layers[k] for k in sorted(layers) if k[0] == decoder]))
    return out
