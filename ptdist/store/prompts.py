"""The prompt store: one folder per trained prompt, named by its content-addressed id
(`records.RecordFolders`: ``prompt.safetensors`` and a manifest written last, with the file's
checksum).

Each prompt has its own folder (`StoreLayout.prompt_dir`), so many Ray workers can write to one
store without a shared index to race on. Only safetensors and JSON are ever read back: nothing
is unpickled.
"""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ptdist.errors import PtdistError
from ptdist.store.atomic import atomic_write
from ptdist.store.layout import StoreLayout
from ptdist.store.manifests import PromptManifest
from ptdist.store.records import RecordFolders

PROMPT_KEY = "prompt"
PEFT_KEY = "prompt_embeddings"
PROMPT_FILE = "prompt.safetensors"


class PromptStore(RecordFolders[PromptManifest]):
    def __init__(self, layout: StoreLayout):
        super().__init__(layout.root, layout.prompts_dir(), layout.prompt_dir, PromptManifest,
                         "prompt", PROMPT_FILE, "ptdist prompts")
        self.layout = layout

    def put(self, prompt: torch.Tensor, manifest: PromptManifest) -> Path:
        if list(prompt.shape) != list(manifest.shape):
            raise ValueError(f"prompt of shape {list(prompt.shape)} stored with a manifest "
                             f"saying {manifest.shape}")
        return self.write(manifest, _prompt_writer(prompt, {"id": manifest.id}))

    def content_problem(self, path: Path, manifest: PromptManifest) -> str | None:
        try:
            tensor = read_prompt_file(path)
        except PtdistError as exc:
            return str(exc)
        if list(tensor.shape) != list(manifest.shape):
            return f"{PROMPT_FILE} has shape {list(tensor.shape)}, its manifest {manifest.shape}"
        return None

    def select(self, model: str, tasks: Collection[str] | None = None,
               ids: Collection[str] | None = None) -> list[PromptManifest]:
        """The prompts of ``model`` on the tasks named ``tasks`` (task names; None: any),
        among the prompt ids ``ids`` (None: the whole store), oldest first."""
        return [m for m in self.manifests()
                if m.model == model and (tasks is None or m.task in tasks)
                and (ids is None or m.id in ids)]

    def tensor(self, prompt_id: str) -> torch.Tensor:
        return read_prompt_file(self.tensor_path(prompt_id))

    def load(self, ref: str) -> torch.Tensor:
        """A prompt by store id or by path: a prompt .safetensors file, a prompt folder, or an
        exported PEFT adapter folder."""
        if self.has(ref):
            return self.tensor(ref)
        path = Path(ref)
        if path.is_dir():
            for name in (PROMPT_FILE, "adapter_model.safetensors"):
                if (path / name).exists():
                    return read_prompt_file(path / name)
        elif path.suffix == ".safetensors" and path.exists():
            return read_prompt_file(path)
        raise PtdistError(f"'{ref}' is neither a prompt id in store {self.layout.root} nor a "
                          "prompt file (.safetensors) or folder; `ptdist prompts` lists the ids")


def best_of(manifests: Collection[PromptManifest]) -> PromptManifest:
    """The best-scoring prompt; ties go to the larger id, so every caller picks the same one
    whatever order the store lists them in."""
    return max(manifests, key=lambda m: (m.score, m.id))


def by_task(prompts: Collection[PromptManifest], tasks: list[str],
            where: str) -> dict[str, list[PromptManifest]]:
    """``{task name: its prompts}`` for each of ``tasks`` (names) among ``prompts``; every task
    without a prompt is named in one error (``where``: which prompts were searched)."""
    found: dict[str, list[PromptManifest]] = {}
    for m in prompts:
        found.setdefault(m.task, []).append(m)
    missing = [t for t in tasks if t not in found]
    if missing:
        raise PtdistError(f"no prompt {where} for task(s): {', '.join(missing)}; train them "
                          "first (`ptdist train` or a sweep), or leave them out")
    return {t: found[t] for t in tasks}


def best_per_task(prompts: Collection[PromptManifest], tasks: list[str],
                  where: str) -> dict[str, PromptManifest]:
    """``{task name: its best prompt}`` for each of ``tasks`` (`by_task`)."""
    return {t: best_of(mine) for t, mine in by_task(prompts, tasks, where).items()}


def _prompt_writer(prompt: torch.Tensor, metadata: dict[str, str]):
    tensor = prompt.detach().float().cpu().contiguous()
    return lambda tmp: save_file({PROMPT_KEY: tensor}, tmp, metadata=metadata)


def write_prompt_file(path: Path, prompt: torch.Tensor, metadata: dict[str, str]) -> Path:
    """A prompt as a file that `PromptStore.load` and ``prompt:PATH`` inits read."""
    return atomic_write(path, _prompt_writer(prompt, metadata))


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
    bad = int((~torch.isfinite(tensor)).sum())
    if bad:
        raise PtdistError(f"prompt in {path} holds {bad} non-finite value(s) (NaN or infinity) "
                          f"of {tensor.numel()}: a diverged run's; train it again with a lower "
                          "learning rate, or use another prompt")
    return tensor.float()
