"""A frozen model's checkpoint as the truth about its weights: the safetensors files, which of
the model's tensors they hold and under which name, the ties they imply, and the check that a
loaded model holds exactly their tensors.

Why: a loader can run another model than its checkpoint without a word. transformers 5 ties
T5's output head to its input embeddings unless both are loaded and differ, and under ZeRO-3's
partitioned load both are empty placeholders that compare equal: a real T5 v1.1 (a head of its
own) then runs with its embeddings as its head (docs/scale.md). So the ties are read from the
files before a load, and every load is compared with the files after it.

Checkpoints come as safetensors or, like the hub's google/t5-v1_1-* and many older models, as
pickled ``pytorch_model.bin`` files. Those are read exactly as transformers reads them to load
the model at all: with torch's weights-only unpickler (tensors and plain containers, no code),
memory-mapped. The store never holds a pickle.
"""

from __future__ import annotations

import hashlib
import json
import time
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch
from torch import nn

from ptdist.errors import PtdistError

# A checkpoint's weight files, in the order from_pretrained prefers them: (single file, index
# of shards).
FORMATS = (("model.safetensors", "model.safetensors.index.json"),
           ("pytorch_model.bin", "pytorch_model.bin.index.json"))
# Key renames transformers applies to old checkpoints of the families ptdist runs (BERT's
# TensorFlow-era LayerNorm names): a model name and the checkpoint names it may be stored under.
LEGACY_NAMES = (("LayerNorm.weight", "LayerNorm.gamma"), ("LayerNorm.bias", "LayerNorm.beta"))


@dataclass(frozen=True)
class Checkpoint:
    """A model's weight files, read from their headers: which file holds each tensor, and the
    tie of the output head that the checkpoint's config.json writes (true where it is silent,
    as transformers reads it)."""

    name: str
    keys: dict[str, Path]
    ties_head: bool

    @property
    def folder(self) -> Path:
        return next(iter(self.keys.values())).parent

    def key_of(self, param: str, prefix: str) -> str | None:
        """The name the files hold model tensor ``param`` under: the same, without or with the
        base model's ``prefix`` (an encoder checkpoint in a masked-LM model), or its legacy
        LayerNorm name."""
        stems = (param, param.removeprefix(prefix + "."), f"{prefix}.{param}")
        for stem in dict.fromkeys(stems):
            legacy = [stem.replace(new, old) for new, old in LEGACY_NAMES if stem.endswith(new)]
            for key in (stem, *legacy):
                if key in self.keys:
                    return key
        return None


def open_checkpoint(path: str, name: str) -> Checkpoint:
    """The checkpoint at ``path`` (a folder or a hub id: its files come from the hub cache,
    fetched now if absent, as from_pretrained would): its safetensors files, else its
    ``pytorch_model.bin`` files, whole or sharded."""
    for single, index in FORMATS:
        files = _weight_files(path, single, index)
        if files:
            keys = {key: file for f in files for key, file in tensors_in(f).items()}
            return Checkpoint(name, keys, written_ties_head(path))
    raise PtdistError(
        f"model '{name}' has no complete weight files (one of "
        f"{', '.join(f for pair in FORMATS for f in pair)}); ptdist checks every load against "
        "the checkpoint's own tensors. Give the folder a model was saved into "
        "(save_pretrained), or a hub id whose files are complete")


def _weight_files(path: str, single: str, index: str) -> list[Path]:
    """The files of one weight format: its shards where an index names them, else the single
    file; empty when the format is absent or an index names a shard that is not there."""
    listed = _checkpoint_file(path, index)
    if listed is None:
        found = _checkpoint_file(path, single)
        return [found] if found is not None else []
    shards = sorted(set(json.loads(listed.read_text())["weight_map"].values()))
    files = [_checkpoint_file(path, shard) for shard in shards]
    return [] if None in files else files


def written_ties_head(config: str) -> bool:
    """Whether the config at ``config`` (a folder, hub id or JSON file) ties the output head to
    the input embeddings, as it is written: transformers' T5 config reads
    ``tie_word_embeddings: false`` and ties anyway. True where it is silent, as in transformers."""
    from transformers import PretrainedConfig

    written, _ = PretrainedConfig.get_config_dict(config)
    return written.get("tie_word_embeddings", True) is not False


def _checkpoint_file(path: str, filename: str) -> Path | None:
    from transformers.utils import cached_file

    found = cached_file(path, filename, _raise_exceptions_for_missing_entries=False)
    return Path(found) if found is not None else None


def tensors_in(file: Path) -> dict[str, Path]:
    """The names of the tensors a weight file holds (a safetensors file's header, or a pickled
    file's state dict), each with the file."""
    if file.suffix == ".bin":
        return dict.fromkeys(_unpickled(file), file)
    from safetensors import safe_open

    with safe_open(str(file), "pt") as weights:
        return dict.fromkeys(weights.keys(), file)


def read_tensor(file: Path, key: str) -> torch.Tensor:
    """One tensor of a weight file, as stored (only that tensor is read)."""
    if file.suffix == ".bin":
        return _unpickled(file)[key]
    from safetensors import safe_open

    with safe_open(str(file), "pt") as weights:
        return weights.get_tensor(key)


@lru_cache(maxsize=1)
def _unpickled(file: Path) -> dict[str, torch.Tensor]:
    """A pickled weight file's state dict, as transformers loads it: torch's weights-only
    unpickler, memory-mapped where the file is in torch's zip format (its tensors are read from
    disk when touched). One file is kept open: a check reads a file's tensors in a row."""
    try:
        return torch.load(file, map_location="cpu", weights_only=True,
                          mmap=zipfile.is_zipfile(file))
    except Exception as exc:  # noqa: BLE001 - any unreadable pickle is the same user error
        raise PtdistError(f"cannot read weight file {file}: {str(exc).splitlines()[0]}. It must "
                          "be a state dict of tensors saved with torch.save (re-download it, or "
                          "re-save the model with save_pretrained)") from None


def tied_as_stored(cls: type, checkpoint: Checkpoint) -> type:
    """Model class ``cls``, tied as ``checkpoint`` is: a tie whose target the files hold apart
    from its source (a T5 v1.1 head, which transformers' T5 config ties whatever the checkpoint
    says) is dropped before the load, so that no load path decides it from the tensors it
    happens to hold (ZeRO-3's empty placeholders compare equal)."""
    ties = dict(cls._tied_weights_keys or {})
    prefix = cls.base_model_prefix
    apart = {target for target, source in ties.items()
             if _held_apart(checkpoint, checkpoint.key_of(target, prefix),
                            checkpoint.key_of(source, prefix))}
    return _without_ties(cls, apart)


def with_own_head(cls: type, config) -> type:
    """Model class ``cls`` with an output head apart from its input embeddings: what a
    checkpoint whose config says ``tie_word_embeddings: false`` holds (T5 v1.1), built from the
    config alone (a plan, a benchmark). Which tie is the head's is read from a model built on
    the meta device."""
    with torch.device("meta"):
        probe = cls(config)
    head = probe.get_output_embeddings()
    return _without_ties(cls, {f"{name}.weight" for name, module in probe.named_modules()
                               if module is head})


def _without_ties(cls: type, targets: set[str]) -> type:
    """``cls``, or a subclass of the same name whose ``targets`` are tied to nothing."""
    ties = dict(cls._tied_weights_keys or {})
    if not targets & ties.keys():
        return cls
    kept = {target: source for target, source in ties.items() if target not in targets}
    return type(cls.__name__, (cls,), {"_tied_weights_keys": kept,
                                       "__module__": cls.__module__,
                                       "__qualname__": cls.__qualname__})


def _held_apart(checkpoint: Checkpoint, target: str | None, source: str | None) -> bool:
    if target is None or source is None or target == source:
        return False
    return not torch.equal(read_tensor(checkpoint.keys[target], target),
                           read_tensor(checkpoint.keys[source], source))


@dataclass(frozen=True)
class LoadCheck:
    """What a load check compared: tensors equal to the checkpoint's (or the fitted head's),
    tensors the checkpoint lacked (randomly initialised, nothing to compare), and its seconds."""

    checked: int
    initialised: int
    seconds: float


def check_load(model: nn.Module, checkpoint: Checkpoint, missing: list[str],
               fitted: dict[str, Path] | None = None) -> LoadCheck:
    """Refuse a loaded ``model`` that does not hold its checkpoint's tensors.

    Each distinct tensor of the model (tied names share one) is compared with every file tensor
    stored under one of its names: a sha256 of its bytes against one of the file tensor's
    bytes cast to the tensor's dtype (the cast the load applied: bf16, or fp32 where the model
    keeps a module in fp32), so the comparison is exact. ``fitted`` names the tensors a fitted
    MLM head put in and the file each came from; a tensor that no file holds must be one the
    load reported ``missing`` (randomly initialised). One tensor is held at a time beside the
    model.

    A model that each process loaded whole is checked whole by each. Under ZeRO-3 every rank
    gathers each tensor in turn (`GatheredParameters`), and the ranks share the comparisons
    (tensor i on rank i mod world): each reads and hashes 1/world of the checkpoint. The first
    difference in the model's order reaches every rank, so all refuse together."""
    start = time.perf_counter()
    prefix = getattr(model, "base_model_prefix", "")
    sources = {name: (checkpoint.keys[key], key) for name in _tensor_names(model)
               if (key := checkpoint.key_of(name, prefix)) is not None}
    sources.update((name, (file, name)) for name, file in (fitted or {}).items())
    rank, world = _ranks() if any(hasattr(p, "ds_id") for p in model.parameters()) else (0, 1)
    problems: list[tuple[int, str]] = []
    checked = initialised = 0
    for index, (names, tensor) in enumerate(_distinct_tensors(model)):
        stored = [name for name in names if name in sources]
        mine = index % world == rank and not problems
        if not stored:
            initialised += 1
            if mine and not set(names) & set(missing):
                problems.append((index, f"{names[0]} is in no weight file and was not "
                                        "reported missing by the load"))
            continue
        checked += 1
        with gathered(tensor):
            problem = mine and _difference(tensor, names, {n: sources[n] for n in stored})
            if problem:
                problems.append((index, problem))
    problem = min(_on_every_rank(problems, world), default=(0, None))[1] or \
        _mis_tied_head(model, checkpoint)
    if problem is not None:
        raise PtdistError(f"model '{checkpoint.name}' did not load as its checkpoint holds it: "
                          f"{problem}. ptdist refuses to run another model than the one named; "
                          "check the weight files (re-download them) and that transformers is "
                          "the locked version (requirements/lock.txt)")
    return LoadCheck(checked, initialised, time.perf_counter() - start)


def _tensor_names(model: nn.Module) -> list[str]:
    return [name for name, _ in _named_tensors(model)]


def _named_tensors(model: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """Every parameter and saved buffer, by each of its names (a tied tensor under all)."""
    yield from model.named_parameters(remove_duplicate=False)
    saved = set(model.state_dict(keep_vars=True))
    yield from ((name, b) for name, b in model.named_buffers(remove_duplicate=False)
                if name in saved)


def _distinct_tensors(model: nn.Module) -> list[tuple[list[str], torch.Tensor]]:
    """Each distinct tensor with all its names, in the model's order (the same on every rank:
    under ZeRO-3 each is a collective)."""
    names: dict[int, list[str]] = {}
    tensors: dict[int, torch.Tensor] = {}
    for name, tensor in _named_tensors(model):
        names.setdefault(id(tensor), []).append(name)
        tensors[id(tensor)] = tensor
    return [(names[key], tensors[key]) for key in names]


def _difference(tensor: torch.Tensor, names: list[str],
                stored: dict[str, tuple[Path, str]]) -> str | None:
    """Why ``tensor`` (known as ``names``) is not the file tensor each of its ``stored`` names
    has; None if it is."""
    digest = _digest(tensor)
    for name, (file, key) in stored.items():
        expected = read_tensor(file, key)
        if tuple(expected.shape) != tuple(tensor.shape):
            return (f"{name} has shape {list(tensor.shape)} where {key} of {file.name} has "
                    f"{list(expected.shape)}")
        wanted = _digest(expected.to(tensor.dtype))
        if wanted != digest:
            tied = [other for other in names if other != name]
            also = f" (one tensor with {', '.join(tied)})" if tied else ""
            return (f"{name}{also} differs from {key} of {file.name} in "
                    f"{str(tensor.dtype).removeprefix('torch.')} (sha256 {digest[:12]} where "
                    f"the file gives {wanted[:12]})")
    return None


def tensor_bytes(tensor: torch.Tensor):
    """A tensor's bytes (as a numpy array), wherever it lives."""
    return tensor.detach().reshape(-1).cpu().contiguous().view(torch.uint8).numpy()


def _digest(tensor: torch.Tensor) -> str:
    return hashlib.sha256(tensor_bytes(tensor)).hexdigest()


def _mis_tied_head(model: nn.Module, checkpoint: Checkpoint) -> str | None:
    """A head tied to the input embeddings where the checkpoint's config says it is not."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if checkpoint.ties_head or head is None:
        return None
    if head.weight is model.get_input_embeddings().weight:
        return ("its output head is its input embeddings, but the checkpoint's config says "
                "tie_word_embeddings: false and its files hold no head of its own")
    return None


@contextmanager
def gathered(tensor: torch.Tensor) -> Iterator[None]:
    """For the block, ``tensor`` whole: gathered from every rank where ZeRO-3 partitions it (a
    collective: every rank gathers the same tensors in the same order)."""
    if not hasattr(tensor, "ds_id"):
        yield
        return
    import deepspeed

    with deepspeed.zero.GatheredParameters([tensor]):
        yield


def _ranks() -> tuple[int, int]:
    import torch.distributed as dist

    return (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)


def _on_every_rank(problems: list, world: int) -> list:
    """Every rank's ``problems``, on every rank."""
    if world == 1:
        return problems
    import torch.distributed as dist

    parts: list = [None] * world
    dist.all_gather_object(parts, problems)
    return [problem for part in parts for problem in part]
