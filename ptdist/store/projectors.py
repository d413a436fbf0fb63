"""Trained projectors, one folder each under the store, named by a content-addressed id.

    <root>/projectors/<id>/projector.safetensors   the projector's weights (its state dict)
    <root>/projectors/<id>/manifest.json           source and target models, shape, mode,
                                                   training prompts and tasks, settings, scores
    <root>/projectors/<id>/eval.parquet            the cross-model transfer table (`ptdist
                                                   project eval`)
    <root>/projectors/<id>/projected/<task>.safetensors  projected prompts, usable as a
                                                   `prompt:PATH` init (TPT_model)

As for prompts, the manifest is written last and marks the projector complete.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ptdist.errors import PtdistError
from ptdist.store.atomic import atomic_write, atomic_write_json


class ProjectorStore:
    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    def folder(self, projector_id: str) -> Path:
        return self.root / "projectors" / projector_id

    def run_dir(self, projector_id: str) -> Path:
        """Checkpoints of a task-tuning run in progress."""
        return self.root / "runs" / f"projector-{projector_id}"

    def has(self, projector_id: str) -> bool:
        return (self.folder(projector_id) / "manifest.json").exists()

    def put(self, projector_id: str, weights: dict[str, torch.Tensor], manifest: dict) -> Path:
        folder = self.folder(projector_id)
        tensors = {k: v.detach().float().cpu().contiguous() for k, v in weights.items()}
        atomic_write(folder / "projector.safetensors",
                     lambda tmp: save_file(tensors, tmp, metadata={"id": projector_id}))
        atomic_write_json(folder / "manifest.json", dict(manifest, id=projector_id))
        return folder

    def manifest(self, projector_id: str) -> dict:
        if not self.has(projector_id):
            raise PtdistError(f"no projector '{projector_id}' in store {self.root}; `ptdist "
                              f"project list --store {self.root}` lists what it holds")
        return json.loads((self.folder(projector_id) / "manifest.json").read_text())

    def manifests(self) -> list[dict]:
        rows = [json.loads(p.read_text())
                for p in (self.root / "projectors").glob("*/manifest.json")]
        return sorted(rows, key=lambda r: (r.get("created", 0), r["id"]))

    def weights(self, projector_id: str) -> dict[str, torch.Tensor]:
        self.manifest(projector_id)  # a clear error for an unknown id
        return load_file(self.folder(projector_id) / "projector.safetensors")
