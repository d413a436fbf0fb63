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
from ptdist.files import read_bytes, require_file
from ptdist.store.atomic import atomic_write
from ptdist.store.layout import StoreLayout
from ptdist.store.manifests import PromptManifest, strict_json
from ptdist.store.records import RecordFolders

PROMPT_KEY = "prompt"
PEFT_KEY = "prompt_embeddings"
PROMPT_FILE = "prompt.safetensors"
ADAPTER_FILE, ADAPTER_CONFIG = "adapter_model.safetensors", "adapter_config.json"
FOLDER_FILES = (ADAPTER_FILE, PROMPT_FILE)  # what a PEFT adapter or a prompt folder holds


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
        return _shape_problem(tensor, manifest)

    def select(self, model: str, tasks: Collection[str] | None = None,
               ids: Collection[str] | None = None) -> list[PromptManifest]:
        """The prompts of ``model`` on the tasks named ``tasks`` (task names; None: any),
        among the prompt ids ``ids`` (None: the whole store), oldest first."""
        return [m for m in self.manifests()
                if m.model == model and (tasks is None or m.task in tasks)
                and (ids is None or m.id in ids)]

    def task_files(self) -> dict[str, str]:
        """``{task name: its YAML file}`` of the tasks defined in YAML that the store's prompts
        were trained on (the newest prompt's file where a name has had several), as their runs
        named them by absolute path."""
        return {m.task: m.task_ref for m in sorted(self.manifests(), key=lambda m: m.created)
                if m.task_ref.endswith((".yaml", ".yml")) and Path(m.task_ref).is_absolute()}

    def tensor(self, prompt_id: str) -> torch.Tensor:
        """The stored prompt, checked against its manifest: checksum, values, and shape (a
        tensor edited with its checksum is still not the prompt the manifest describes)."""
        tensor = read_prompt_file(self.tensor_path(prompt_id))
        problem = _shape_problem(tensor, self.manifest(prompt_id))
        if problem:
            raise self._damaged(prompt_id, problem)
        return tensor

    def load(self, ref: str) -> torch.Tensor:
        """A prompt by store id or by path: a prompt .safetensors file, a prompt folder, or an
        exported PEFT adapter folder."""
        if self.has(ref):
            return self.tensor(ref)
        path = Path(ref)
        if path.is_dir() and (own := folder_prompt_file(path)) is not None:
            return read_prompt_file(own)
        if path.suffix == ".safetensors" and path.exists():
            return read_prompt_file(path)
        raise PtdistError(f"'{ref}' is neither a prompt id in store {self.layout.root} nor a "
                          "prompt file (.safetensors) or folder; `ptdist prompts` lists the ids")


def _shape_problem(tensor: torch.Tensor, manifest: PromptManifest) -> str | None:
    if list(tensor.shape) != list(manifest.shape):
        return f"{PROMPT_FILE} has shape {list(tensor.shape)}, its manifest {manifest.shape}"
    return None


def folder_prompt_file(folder: Path) -> Path | None:
    """The prompt file of a PEFT adapter or ptdist prompt folder; None if it holds neither."""
    return next((folder / name for name in FOLDER_FILES if (folder / name).exists()), None)


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
    """The [L, d] tensor of a ptdist prompt file or a PEFT prompt-tuning adapter (whose
    ``adapter_config.json``, when beside it, must describe it: `_check_adapter_config`)."""
    require_file(path, "prompt file")
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
    if path.name == ADAPTER_FILE and (path.parent / ADAPTER_CONFIG).exists():
        _check_adapter_config(path.parent / ADAPTER_CONFIG, tensor)
    return tensor.float()


def _check_adapter_config(path: Path, tensor: torch.Tensor) -> None:
    """A PEFT adapter's config must be one of a prompt-tuning adapter of ``tensor``'s shape: an
    adapter whose config is damaged, of another method or another shape is not read from its
    tensor file alone."""
    text = read_bytes(path, "adapter config").decode("utf-8", "replace")
    try:
        config = strict_json(text)
    except PtdistError as exc:
        raise PtdistError(f"adapter config {path}: {exc}; fix it, or export the adapter "
                          "again") from None
    if not isinstance(config, dict):
        raise PtdistError(f"adapter config {path} is not a JSON object; fix it, or export the "
                          "adapter again")
    length, width = tensor.shape
    expected = {"peft_type": "PROMPT_TUNING", "token_dim": width}
    if isinstance(config.get("num_virtual_tokens"), int):
        # PEFT keeps one prompt per transformer submodule in one tensor.
        submodules = config.get("num_transformer_submodules")
        expected["num_virtual_tokens"] = length // (submodules if isinstance(submodules, int)
                                                    and submodules > 0 else 1)
    wrong = [f"{key} {config.get(key)!r} (its tensor file says {value!r})"
             for key, value in expected.items() if config.get(key) != value]
    if wrong:
        raise PtdistError(f"adapter config {path} does not describe a prompt-tuning adapter of "
                          f"its tensor file: {', '.join(wrong)}; fix it, or export the adapter "
                          "again")
