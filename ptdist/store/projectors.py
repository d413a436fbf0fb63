"""Trained projectors, one folder each (`StoreLayout.projector_dir`), named by a
content-addressed id (`records.RecordFolders`): ``projector.safetensors`` (its state dict) and
``manifest.json`` (source and target models, shape, mode, training prompts and tasks, settings,
scores, the file's checksum), written last.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ptdist.store.layout import StoreLayout
from ptdist.store.manifests import ProjectorManifest
from ptdist.store.records import RecordFolders

WEIGHTS = "projector.safetensors"


class ProjectorStore(RecordFolders[ProjectorManifest]):
    def __init__(self, layout: StoreLayout):
        super().__init__(layout.root, layout.projectors_dir(), layout.projector_dir,
                         ProjectorManifest, "projector", WEIGHTS, "ptdist project list")
        self.layout = layout

    def put(self, weights: dict[str, torch.Tensor], manifest: ProjectorManifest) -> Path:
        tensors = {k: v.detach().float().cpu().contiguous() for k, v in weights.items()}
        return self.write(manifest,
                          lambda tmp: save_file(tensors, tmp, metadata={"id": manifest.id}))

    def weights(self, projector_id: str) -> dict[str, torch.Tensor]:
        return load_file(self.tensor_path(projector_id))
