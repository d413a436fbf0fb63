"""The prompt store: one folder per trained prompt, named by its content-addressed id.

    <root>/prompts/<id>/prompt.safetensors   the [L, d] tensor (key "prompt")
    <root>/prompts/<id>/manifest.json        model, task, seed, init, steps, score, config hash...
    <root>/runs/<id>/                        checkpoints of a run in progress

Each prompt has its own folder, so many Ray workers can write to one store without a shared
index to race on; the manifest is written last and marks the prompt complete. Only
safetensors and JSON are ever read back: nothing is unpickled.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ptdist.errors import PtdistError
from ptdist.store.atomic import atomic_write, atomic_write_json

PROMPT_KEY = "prompt"
PEFT_KEY = "prompt_embeddings"


def default_store_root() -> Path:
    return Path(os.environ.get("PTDIST_STORE", "store"))


class PromptStore:
    def __init__(self, root: str | os.PathLike | None = None):
        self.root = Path(root) if root is not None else default_store_root()

    def prompt_dir(self, prompt_id: str) -> Path:
        return self.root / "prompts" / prompt_id

    def run_dir(self, prompt_id: str) -> Path:
        return self.root / "runs" / prompt_id

    def has(self, prompt_id: str) -> bool:
        return (self.prompt_dir(prompt_id) / "manifest.json").exists()

    def put(self, prompt_id: str, prompt: torch.Tensor, manifest: dict) -> Path:
        folder = self.prompt_dir(prompt_id)
        write_prompt_file(folder / "prompt.safetensors", prompt, {"id": prompt_id})
        atomic_write_json(folder / "manifest.json",
                          dict(manifest, id=prompt_id, shape=list(prompt.shape)))
        return folder

    def manifest(self, prompt_id: str) -> dict:
        path = self.prompt_dir(prompt_id) / "manifest.json"
        if not path.exists():
            raise PtdistError(f"no prompt '{prompt_id}' in store {self.root}; `ptdist prompts "
                              f"--store {self.root}` lists what it holds")
        return json.loads(path.read_text())

    def manifests(self) -> list[dict]:
        """Every complete prompt's manifest row, oldest first."""
        rows = [json.loads(p.read_text())
                for p in (self.root / "prompts").glob("*/manifest.json")]
        return sorted(rows, key=lambda r: (r.get("created", 0), r["id"]))

    def load(self, id_or_path: str) -> tuple[torch.Tensor, dict]:
        """A prompt and its manifest, by store id or by path: a prompt .safetensors file, a
        prompt folder, or an exported PEFT adapter folder."""
        if self.has(id_or_path):
            folder = self.prompt_dir(id_or_path)
            return read_prompt_file(folder / "prompt.safetensors"), self.manifest(id_or_path)
        path = Path(id_or_path)
        if path.is_dir():
            for name in ("prompt.safetensors", "adapter_model.safetensors"):
                if (path / name).exists():
                    manifests = [path / m for m in ("manifest.json", "ptdist_manifest.json")]
                    found = next((m for m in manifests if m.exists()), None)
                    meta = json.loads(found.read_text()) if found else {}
                    return read_prompt_file(path / name), meta
        elif path.suffix == ".safetensors" and path.exists():
            return read_prompt_file(path), {}
        raise PtdistError(f"'{id_or_path}' is neither a prompt id in store {self.root} nor a "
                          "prompt file (.safetensors) or folder; `ptdist prompts` lists the ids")


def write_prompt_file(path: Path, prompt: torch.Tensor, metadata: dict[str, str]) -> Path:
    """A prompt as a file that `PromptStore.load` and ``prompt:PATH`` inits read."""
    tensor = prompt.detach().float().cpu().contiguous()
    return atomic_write(path, lambda tmp: save_file({PROMPT_KEY: tensor}, tmp, metadata=metadata))


def read_prompt_file(path: Path) -> torch.Tensor:
    """The [L, d] tensor of a ptdist prompt file or a PEFT prompt-tuning adapter."""
    try:
        with safe_open(path, framework="pt") as f:
            keys = list(f.keys())
            key = PROMPT_KEY if PROMPT_KEY in keys else PEFT_KEY if PEFT_KEY in keys else None
            if key is None:
                raise PtdistError(f"{path} holds no prompt (tensors: {keys}); expected key "
                                  f"'{PROMPT_KEY}' or PEFT's '{PEFT_KEY}'")
            tensor = f.get_tensor(key)
    except PtdistError:
        raise
    except Exception as exc:  # safetensors raises its own error types for corrupt headers
        raise PtdistError(f"cannot read prompt file {path}: {exc}") from None
    if tensor.dim() != 2:
        raise PtdistError(f"prompt in {path} has shape {list(tensor.shape)}; expected [L, d]")
    return tensor.float()
