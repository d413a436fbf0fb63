"""Trained projectors, one folder each (`StoreLayout.projector_dir`), named by a
content-addressed id: ``projector.safetensors`` (its state dict) and ``manifest.json`` (source
and target models, shape, mode, training prompts and tasks, settings, scores). As for prompts,
the manifest is written last and marks the projector complete.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ptdist.errors import PtdistError
from ptdist.store.atomic import atomic_write, atomic_write_json
from ptdist.store.layout import StoreLayout
from ptdist.store.manifests import ProjectorManifest

MANIFEST = "manifest.json"
WEIGHTS = "projector.safetensors"


class ProjectorStore:
    def __init__(self, layout: StoreLayout):
        self.layout = layout

    def has(self, projector_id: str) -> bool:
        return (self.layout.projector_dir(projector_id) / MANIFEST).exists()

    def put(self, weights: dict[str, torch.Tensor], manifest: ProjectorManifest) -> Path:
        folder = self.layout.projector_dir(manifest.id)
        tensors = {k: v.detach().float().cpu().contiguous() for k, v in weights.items()}
        atomic_write(folder / WEIGHTS,
                     lambda tmp: save_file(tensors, tmp, metadata={"id": manifest.id}))
        atomic_write_json(folder / MANIFEST, manifest.to_json())
        return folder

    def manifest(self, projector_id: str) -> ProjectorManifest:
        if not self.has(projector_id):
            raise PtdistError(f"no projector '{projector_id}' in store {self.layout.root}; "
                              f"`ptdist project list --store {self.layout.root}` lists what it "
                              "holds")
        path = self.layout.projector_dir(projector_id) / MANIFEST
        return ProjectorManifest.from_json(json.loads(path.read_text()))

    def manifests(self) -> list[ProjectorManifest]:
        rows = [ProjectorManifest.from_json(json.loads(p.read_text()))
                for p in self.layout.projectors_dir().glob(f"*/{MANIFEST}")]
        return sorted(rows, key=lambda m: (m.created, m.id))

    def weights(self, projector_id: str) -> dict[str, torch.Tensor]:
        self.manifest(projector_id)  # a clear error for an unknown id
        return load_file(self.layout.projector_dir(projector_id) / WEIGHTS)
