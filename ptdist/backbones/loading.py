"""Resolve a model argument (preset name, converted model, local folder, hub id) into a frozen
Backbone."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ptdist.backbones.base import Backbone
from ptdist.backbones.converted import CONVERTED, converted_dir
from ptdist.backbones.mlm import MaskedLMBackbone
from ptdist.backbones.mlm_head import (HEAD_PREFIXES, RECIPE, cached_head, lacks_only_head,
                                       restore_head)
from ptdist.backbones.presets import PRESETS, preset_dir
from ptdist.backbones.seq2seq import Seq2SeqBackbone
from ptdist.errors import PtdistError
from ptdist.packaged import is_packaged, resolve_packaged
from ptdist.runtime import say

# Configs of the paper's hub models (no weights): what the memory planner reads offline.
BUNDLED_CONFIGS = Path(__file__).resolve().parent / "model_configs"
# The precisions ptdist runs a model in; T5 overflows in fp16, so there is none.
PRECISIONS = {"bf16": torch.bfloat16, "fp32": torch.float32}


def dtype_of(precision: str) -> torch.dtype:
    """The torch dtype of precision ``bf16`` or ``fp32``."""
    if precision not in PRECISIONS:
        raise PtdistError(f"unknown precision '{precision}'; use one of: "
                          f"{', '.join(PRECISIONS)} (fp16 overflows in T5)")
    return PRECISIONS[precision]


def resolve_model_path(name: str) -> str:
    """A preset's or converted model's cache folder, a folder inside an installed package
    (``pkg:NAME/path``), a local folder, or the hub id unchanged."""
    if name in PRESETS:
        return str(preset_dir(name))
    if name in CONVERTED:
        return str(converted_dir(name))
    if is_packaged(name):
        return str(resolve_packaged(name))
    if os.path.isdir(name):
        return str(Path(name).resolve())
    if os.path.exists(name) or name.startswith((".", "/", "~")):
        raise PtdistError(f"model path '{name}' is not a folder with a model (config.json and "
                          "weights); pass a model folder, a hub id, or one of: "
                          + ", ".join(PRESETS))
    return name


def model_kind(config) -> str:
    if getattr(config, "is_encoder_decoder", False):
        return "seq2seq"
    return "mlm"


def load_backbone(name: str, *, dtype: torch.dtype = torch.float32,
                  max_length: int = 128) -> Backbone:
    """Load ``name`` frozen; an encoder checkpoint without its MLM head gets its fitted head
    (fitted on first use, `mlm_head.py`). Under DeepSpeed ZeRO-3, create ``HfDeepSpeedConfig``
    first so the weights are partitioned as they load instead of materialising the whole model
    per rank."""
    backbone, missing, path = _load(name, dtype, max_length)
    if backbone.kind == "mlm" and lacks_only_head(missing):
        restore_head(backbone, checkpoint_folder(path), missing)
    return backbone


def fit_mlm_head(name: str, refit: bool = False) -> tuple[Path, dict, bool]:
    """The fitted MLM head of ``name``, an encoder checkpoint shipped without one: fitted now
    unless cached (or with ``refit``). Returns its folder, its record and whether it was fitted
    now."""
    backbone, missing, path = _load(name, torch.float32, 128)
    if backbone.kind != "mlm" or not lacks_only_head(missing):
        raise PtdistError(f"model '{name}' has its own MLM head (or is no encoder MLM): there "
                          "is no head to fit")
    return cached_head(backbone, checkpoint_folder(path), missing, refit=refit)


def fitted_head_key(name: str) -> str | None:
    """The recipe key of the fitted head that ``name`` gets when it loads, if it is an encoder
    checkpoint in a local folder whose weight files hold no MLM head (read from the safetensors
    headers, without loading a weight); None for any other model."""
    path = resolve_model_path(name)
    files = sorted(Path(path).glob("*.safetensors")) if os.path.isdir(path) else []
    if not files or model_kind(_config_at(path, name)) != "mlm":
        return None
    from safetensors import safe_open

    for file in files:
        with safe_open(str(file), "pt") as weights:
            if any(key.startswith(HEAD_PREFIXES) for key in weights.keys()):
                return None
    return RECIPE.key


def _load(name: str, dtype: torch.dtype, max_length: int) -> tuple[Backbone, list[str], str]:
    """The frozen backbone as the checkpoint holds it, the tensors it lacked, and its path."""
    from transformers import AutoModelForMaskedLM, AutoModelForSeq2SeqLM, AutoTokenizer

    path = resolve_model_path(name)
    config = _config_at(path, name)
    kind = model_kind(config)
    auto = AutoModelForSeq2SeqLM if kind == "seq2seq" else AutoModelForMaskedLM
    try:
        # A checkpoint without some weights gets them randomly initialised: from a fixed seed,
        # so every rank, every run and `ptdist eval` see the same frozen model. An encoder
        # without its MLM head then gets its fitted head instead (`mlm_head.py`).
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model, info = auto.from_pretrained(path, dtype=dtype, output_loading_info=True)
    except ValueError as exc:
        raise PtdistError(
            f"model '{name}' ({config.model_type}) is neither an encoder MLM nor an "
            f"encoder-decoder model; ptdist prompt-tunes RoBERTa/BERT-style MLMs and T5-style "
            f"models ({_first_line(exc)})."
        ) from None
    missing = info.get("missing_keys") or []
    _report_load(name, model, missing, fitted_head=kind == "mlm" and lacks_only_head(missing))
    tokenizer = AutoTokenizer.from_pretrained(path)
    if kind == "mlm" and tokenizer.mask_token_id is None:
        raise PtdistError(f"tokenizer of '{name}' has no mask token, so the MLM verbalizer "
                          "cannot be read; use an MLM-pretrained encoder (RoBERTa, BERT).")
    cls = Seq2SeqBackbone if kind == "seq2seq" else MaskedLMBackbone
    return cls(name, model, tokenizer, max_length=max_length), missing, path


def checkpoint_folder(path: str) -> Path:
    """The folder holding the checkpoint's files: ``path`` itself, or a hub model's snapshot
    in the local hub cache (from_pretrained has just put it there)."""
    if os.path.isdir(path):
        return Path(path)
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(path, local_files_only=True))


def model_config(name: str):
    """``name``'s transformers config, without its weights: shipped with ptdist for the paper's
    hub models (`model_configs/`, so a plan needs no hub), else from its folder (a preset, a
    local or package folder) or the hub."""
    bundled = BUNDLED_CONFIGS / f"{name.replace('/', '--')}.json"
    return _config_at(str(bundled) if bundled.exists() else resolve_model_path(name), name)


def _config_at(path: str, name: str):
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise PtdistError(
            f"could not load model '{name}': it is not a preset ({', '.join(PRESETS)}), not a "
            f"local folder, and loading it from the Hugging Face hub failed ({_first_line(exc)}). "
            f"Without hub access, download it elsewhere (`hf download {name} --local-dir DIR`) "
            "and pass --model DIR."
        ) from None


def _report_load(name: str, model, missing: list[str], fitted_head: bool) -> None:
    """The one line a model load prints: what was loaded, and what the checkpoint lacked (a
    missing MLM head is said to be the fitted one that goes in, never "randomly initialised":
    the lines that follow name it, and announce its fit if it is not cached)."""
    params = sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters())  # ZeRO-3
    dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
    names = f"{', '.join(sorted(missing)[:4])}{', ...' if len(missing) > 4 else ''}"
    lacks = "" if not missing else (
        f"; its MLM head is not in the checkpoint ({len(missing)} tensor(s): {names}): "
        "ptdist's fitted head goes in" if fitted_head else
        f"; {len(missing)} tensor(s) not in the checkpoint, randomly initialised (seed 0) and "
        f"frozen: {names}")
    say(f"[ptdist] loaded {name}: {type(model).__name__}, {params / 1e6:.1f}M parameters, "
        f"{dtype}{lacks}")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
