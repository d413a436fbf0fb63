"""FFN activations in Parquet, partitioned like a Hive table under
`StoreLayout.activations`:

    activations/model=<model>/task=<task>/layer=<i>/part-<session>-<n>.parquet
    activations/model=<model>/_commits/<session>-<n>.json    what is captured (written last)
    activations/model=<model>/_writers/<session>.lock        held while its writer runs

One row per (prompt, layer). Columns: ``prompt_id``, ``layer_name`` ("encoder.3"),
``protocol`` ("prompt" | "data"), ``examples`` (rows averaged; 0 for the prompt protocol),
``n_active``, ``values`` (fixed_size_list<float32>[d_ff]) and ``states`` (the activation
states ``values > 0`` bit-packed: fixed_size_list<uint8>[ceil(d_ff / 8)], numpy.packbits'
big-endian bit order). ``model``, ``task`` and ``layer`` are the partition keys. Plain Arrow
types only: any Parquet reader (pyarrow, Ray Data, DuckDB, Spark) reads it.

**Commits.** Rows are buffered per partition and streamed to hidden part files, so memory stays
bounded however many prompts are captured. Every ``commit_every`` prompts (and at the end) the
writer commits: it closes its part files, fsyncs them, renames them to their visible names,
fsyncs their folders, and then writes the commit record (atomically, fsync'd) naming the files
and the prompts they complete. A prompt's capture is visible to ptdist when, and only when, a
commit record names it, so a capture killed anywhere (before the first rename, between renames,
after the last) leaves its prompts uncaptured: the next capture of the model cleans what the dead
writer left (hidden temp files, renamed but uncommitted parts) and captures them again. A prompt
captured twice is read from its latest commit. Readers check that each prompt has every layer.

Cleaning never touches a live writer's files: each writer holds an exclusive `flock` on its lock
file for its lifetime, which the kernel releases when the process dies, so concurrent captures
of one model (``--chunks``) leave each other alone. Other readers (pyarrow, DuckDB, Ray Data)
read the folder directly and may see the parts of a commit in progress or of a killed writer
until the next capture has cleaned them.

Part files of the layout before commits (``part-<uuid>.parquet``, no commit records) are read
as one commit holding their complete prompts; the first capture writes that commit down.
"""

from __future__ import annotations

import fcntl
import json
import os
import logging
import re
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from ptdist.errors import PtdistError
from ptdist.faults import reach
from ptdist.store.atomic import atomic_write_json, fsync_dir, fsync_file
from ptdist.store.layout import StoreLayout

log = logging.getLogger(__name__)

COMMITS, WRITERS, LEGACY = "_commits", "_writers", "legacy.json"
# A writer's files carry its session: part files (hidden while written) and commit records
# (hidden while written by atomic_write).
_SESSION_FILE = re.compile(r"^\.?(?:part-)?([0-9a-f]{16})-\d+\.(?:parquet|json)(?:\..*tmp)?$")
_LEGACY_PART = re.compile(r"^part-[0-9a-f]{32}\.parquet$")
_LEGACY_TEMP = re.compile(r"^\.part-[0-9a-f]{32}\.parquet\.tmp$")


def activation_schema(d_ff: int) -> pa.Schema:
    return pa.schema([
        ("prompt_id", pa.string()), ("layer_name", pa.string()), ("protocol", pa.string()),
        ("examples", pa.int32()), ("n_active", pa.int32()),
        ("values", pa.list_(pa.float32(), d_ff)),
        ("states", pa.list_(pa.uint8(), (d_ff + 7) // 8)),
    ])


@dataclass(frozen=True)
class Commit:
    """One commit record: the part files it made visible (relative to the model's folder) and
    the captures they complete, as ``(prompt id, task, protocol)``."""

    name: str
    created: float
    layers: int
    files: tuple[str, ...]
    prompts: tuple[tuple[str, str, str], ...]


class ActivationWriter:
    """Streams activation rows of one model into its partitions, committing every
    ``commit_every`` prompts and when closed. A writer that fails (an exception inside its
    block) commits nothing more: what it left is cleaned by the next capture."""

    def __init__(self, layout: StoreLayout, model: str, d_ff: int, flush_rows: int = 64,
                 commit_every: int = 256):
        self.dir, self.model = layout.activations(model), model
        self.schema = activation_schema(d_ff)
        self.flush_rows, self.commit_every = flush_rows, commit_every
        self.session = uuid.uuid4().hex[:16]
        self._lock_path = self.dir / WRITERS / f"{self.session}.lock"
        self._lock = _hold_lock(self._lock_path)
        self._buffers: dict[tuple[str, int], list[dict]] = {}
        self._writers: dict[tuple[str, int], tuple[pq.ParquetWriter, Path]] = {}
        self._pending: list[tuple[str, str, str]] = []
        self._layers = 0
        self._parts = 0
        self._commits = 0

    def add(self, prompt_id: str, task: str, protocol: str, examples: int,
            activations: np.ndarray, layer_names: list[str]) -> None:
        """Queue one prompt's activations ``[layers, d_ff]`` (every layer of it at once)."""
        for layer, (name, values) in enumerate(zip(layer_names, activations)):
            values = np.asarray(values, dtype=np.float32)
            active = values > 0
            rows = self._buffers.setdefault((task, layer), [])
            rows.append({"prompt_id": prompt_id, "layer_name": name, "protocol": protocol,
                         "examples": examples, "n_active": int(active.sum()), "values": values,
                         "states": np.packbits(active)})
            if len(rows) >= self.flush_rows:
                self._flush((task, layer))
        self._layers = len(layer_names)
        self._pending.append((prompt_id, task, protocol))
        if len(self._pending) >= self.commit_every:
            self.commit()

    def _flush(self, key: tuple[str, int]) -> None:
        rows = self._buffers.pop(key, [])
        if not rows:
            return
        if key not in self._writers:
            folder = self.dir / f"task={key[0]}" / f"layer={key[1]}"
            folder.mkdir(parents=True, exist_ok=True)
            self._parts += 1
            tmp = folder / f".part-{self.session}-{self._parts}.parquet.tmp"
            # Activation floats rarely repeat: dictionary-encoding them only adds size.
            writer = pq.ParquetWriter(tmp, self.schema, compression="zstd",
                                      use_dictionary=["prompt_id", "layer_name", "protocol"])
            self._writers[key] = (writer, tmp)
        columns = {f.name: [r[f.name] for r in rows] for f in self.schema}
        self._writers[key][0].write_table(pa.table(columns, schema=self.schema))

    def commit(self) -> None:
        """Make the queued prompts visible: part files durable and renamed, then the record."""
        if not self._pending:
            return
        for key in list(self._buffers):
            self._flush(key)
        finals = []
        for writer, tmp in self._writers.values():
            writer.close()
            fsync_file(tmp)
            final = tmp.with_name(tmp.name[1:-len(".tmp")])
            reach(f"activations {self.model} part {len(finals) + 1}")
            os.replace(tmp, final)
            finals.append(final)
        for folder in {final.parent for final in finals}:
            fsync_dir(folder)
        reach(f"activations {self.model} commit")
        self._commits += 1
        name = f"{self.session}-{self._commits}"
        atomic_write_json(self.dir / COMMITS / f"{name}.json", {
            "created": time.time(), "layers": self._layers,
            "files": sorted(str(f.relative_to(self.dir)) for f in finals),
            "prompts": [list(p) for p in self._pending]})
        self._writers.clear()
        self._pending = []

    def close(self) -> None:
        self.commit()
        self._release()

    def abandon(self) -> None:
        """Stop without committing: this writer's uncommitted part files are removed."""
        for writer, tmp in self._writers.values():
            writer.close()
            tmp.unlink(missing_ok=True)
        self._release()

    def _release(self) -> None:
        self._lock_path.unlink(missing_ok=True)
        self._lock.close()  # releases the flock

    def __enter__(self) -> "ActivationWriter":
        return self

    def __exit__(self, exc_type, *exc) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abandon()


def _hold_lock(path: Path):
    """``path`` created exclusively flock'ed, and held for as long as the returned file is
    open. It is locked under a hidden name and then renamed, so no cleaner ever sees it
    unlocked."""
    path.parent.mkdir(parents=True, exist_ok=True)
    hidden = path.with_name(f".{path.name}")
    handle = open(hidden, "w")
    fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.rename(hidden, path)
    return handle


def _writer_alive(folder: Path, session: str) -> bool:
    """Whether the writer ``session`` still runs: its lock file exists and is flock'ed. A
    file system that cannot tell (no flock) counts as alive, so nothing is cleaned there."""
    path = folder / WRITERS / f"{session}.lock"
    if not path.exists():
        return False
    with open(path, "a") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        except OSError:
            return True
    return False


def repair(layout: StoreLayout, model: str) -> int:
    """Clean what dead writers of ``model`` left (hidden temp files, parts no commit names,
    unfinished commit records, lock files), remove commits that lost a part file, and write
    down the commit of a store of the layout before commits. Returns the number of files
    removed."""
    folder = layout.activations(model)
    if not folder.exists():
        return 0
    legacy = _legacy_commit(folder)
    if legacy is not None:
        atomic_write_json(folder / COMMITS / LEGACY, {
            "created": legacy.created, "layers": legacy.layers, "files": list(legacy.files),
            "prompts": [list(p) for p in legacy.prompts]})
    candidates = [*folder.glob("task=*/layer=*/*"), *(folder / COMMITS).glob(".*"),
                  *(folder / WRITERS).glob("*.lock")]
    # Who is alive is settled before the commit records are read: a writer found dead cannot
    # commit afterwards, so a part it committed is never taken for a leftover.
    alive = {session: _writer_alive(folder, session)
             for session in {_session(p) for p in candidates} - {None}}
    removed, named = 0, set()
    for commit in _commit_records(folder):
        if all((folder / f).exists() for f in commit.files):
            named.update(commit.files)
        else:  # a commit that lost a file serves nothing: its other files and it go too
            for path in [folder / f for f in commit.files] + [folder / COMMITS /
                                                                f"{commit.name}.json"]:
                removed += path.exists()
                path.unlink(missing_ok=True)
    for path in candidates:
        session = _session(path)
        if session is None:
            leftover = _LEGACY_TEMP.match(path.name) is not None
        else:
            leftover = not alive[session] and (path.suffix == ".lock" or path.name.startswith(
                ".") or str(path.relative_to(folder)) not in named)
        if leftover:
            path.unlink(missing_ok=True)
            removed += 1
    return removed


def _session(path: Path) -> str | None:
    """The writer session a file of the activation folder belongs to (None: a legacy file)."""
    if path.suffix == ".lock":
        return path.stem
    match = _SESSION_FILE.match(path.name)
    return match.group(1) if match else None


def _commit_records(folder: Path) -> list[Commit]:
    """The model's commit records, oldest first; an unreadable one is named and skipped."""
    commits = []
    for path in (folder / COMMITS).glob("*.json"):
        try:
            data = json.loads(path.read_text())
            commits.append(Commit(path.stem, float(data["created"]), int(data["layers"]),
                                  tuple(data["files"]),
                                  tuple(tuple(p) for p in data["prompts"])))
        except (ValueError, KeyError, TypeError) as exc:
            log.warning(f"activation commit record {path} is damaged ({exc}); its prompts "
                        "count as not captured, so the next capture redoes them")
    return sorted(commits, key=lambda c: (c.created, c.name))


def _legacy_commit(folder: Path) -> Commit | None:
    """The part files of the layout before commits as one commit of their complete captures,
    or None when there are none or their commit is written down already."""
    if (folder / COMMITS / LEGACY).exists():
        return None
    files = sorted(str(p.relative_to(folder)) for p in folder.glob("task=*/layer=*/part-*")
                   if _LEGACY_PART.match(p.name))
    if not files:
        return None
    table = _dataset(folder, files).to_table(columns=["prompt_id", "task", "protocol", "layer"])
    # Every layer's folder exists before the first part is renamed, even where a killed
    # capture renamed none.
    layers = len({p.name for p in folder.glob("task=*/layer=*")})
    seen: dict[tuple[str, str, str], set[int]] = {}
    for row in table.to_pylist():
        seen.setdefault((row["prompt_id"], row["task"], row["protocol"]), set()).add(
            int(row["layer"]))
    complete = tuple(sorted(key for key, got in seen.items() if len(got) == layers))
    return Commit(LEGACY[:-len(".json")], 0.0, layers, tuple(files), complete)


def _dataset(folder: Path, files: list[str]) -> ds.Dataset:
    return ds.dataset([str(folder / f) for f in files], format="parquet",
                      partitioning=ds.partitioning(flavor="hive"),
                      partition_base_dir=str(folder))


def _all_commits(folder: Path) -> list[Commit]:
    """Every commit of the model's folder, the legacy one (not yet written down) first."""
    if not folder.exists():
        return []
    legacy = _legacy_commit(folder)
    return ([legacy] if legacy is not None else []) + _commit_records(folder)


def _latest(layout: StoreLayout, model: str, protocol: str) -> dict[str, tuple[Commit, str]]:
    """``{prompt id: (the latest commit naming its capture, its task)}`` for ``protocol``,
    over commits whose files all exist."""
    folder = layout.activations(model)
    latest = {}
    for commit in _all_commits(folder):
        missing = [f for f in commit.files if not (folder / f).exists()]
        if missing:
            log.warning(f"activation commit {commit.name} of {model} misses {len(missing)} "
                        f"part file(s) (e.g. {missing[0]}); its prompts count as not captured, "
                        "so the next capture redoes them")
            continue
        latest.update({pid: (commit, task) for pid, task, proto in commit.prompts
                       if proto == protocol})
    return latest


def captured(layout: StoreLayout, model: str, protocol: str) -> set[str]:
    """Ids of the prompts whose activations are committed for ``protocol``."""
    return set(_latest(layout, model, protocol))


def read_states(layout: StoreLayout, model: str,
                protocol: str) -> dict[str, tuple[str, np.ndarray]]:
    """``{prompt id: (task, states [layers, d_ff] bool)}`` of every committed capture,
    unpacked from the bit columns; a capture without all its layers is a clear error.

    A T5 prompt's states are its decoder layers: captures made before ON read T5's decoder
    only also hold encoder rows, which are left out here (the decoder rows are the same)."""
    latest = _latest(layout, model, protocol)
    by_commit: dict[str, tuple[Commit, set[str]]] = {}
    for pid, (commit, _) in latest.items():
        by_commit.setdefault(commit.name, (commit, set()))[1].add(pid)
    folder = layout.activations(model)
    grouped: dict[str, dict[int, tuple[bool, np.ndarray]]] = {}
    for commit, pids in by_commit.values():
        dataset = _dataset(folder, list(commit.files))
        d_ff = dataset.schema.field("values").type.list_size
        table = dataset.to_table(columns=["prompt_id", "layer", "layer_name", "states"],
                                 filter=(ds.field("protocol") == protocol)
                                 & ds.field("prompt_id").isin(sorted(pids)))
        for row in table.to_pylist():
            bits = np.unpackbits(np.asarray(row["states"], dtype=np.uint8))
            grouped.setdefault(row["prompt_id"], {})[int(row["layer"])] = \
                (row["layer_name"].startswith("decoder"), bits[:d_ff].astype(bool))
    incomplete = sorted(pid for pid, (commit, _) in latest.items()
                        if sorted(grouped.get(pid, {})) != list(range(commit.layers)))
    if incomplete:
        raise PtdistError(f"the activations of {len(incomplete)} prompt(s) of '{model}' "
                          f"({protocol} protocol) lack layers: {', '.join(incomplete)}; their "
                          f"part files in {folder} were altered. Delete {folder} and run "
                          f"`ptdist neurons capture --model {model}` again")
    return {pid: (latest[pid][1], _ffn_states(layers)) for pid, layers in grouped.items()}


def _ffn_states(layers: dict[int, tuple[bool, np.ndarray]]) -> np.ndarray:
    """One prompt's states ``[layers, d_ff]``: its decoder layers when it has any, else all."""
    decoder = any(is_decoder for is_decoder, _ in layers.values())
    return np.stack([states for _, (is_decoder, states) in sorted(layers.items())
                     if is_decoder == decoder])


def activation_dataset(layout: StoreLayout, model: str) -> ds.Dataset | None:
    """Every committed part file of the model as one pyarrow dataset (partition keys as
    columns; a prompt captured twice appears twice), or None."""
    folder = layout.activations(model)
    files = sorted({f for c in _all_commits(folder) for f in c.files})
    return _dataset(folder, files) if files else None
