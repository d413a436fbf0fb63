"""Resolve a model argument (preset name, local folder, hub id) into a frozen Backbone."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ptdist.backbones.base import Backbone
from ptdist.backbones.mlm import MaskedLMBackbone
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
    """A preset's cache folder, a folder inside an installed package (``pkg:NAME/path``), a
    local folder, or the hub id unchanged."""
    if name in PRESETS:
        return str(preset_dir(name))
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
    """Load ``name`` frozen. Under DeepSpeed ZeRO-3, create ``HfDeepSpeedConfig`` first so the
    weights are partitioned as they load instead of materialising the whole model per rank."""
    from transformers import AutoModelForMaskedLM, AutoModelForSeq2SeqLM, AutoTokenizer

    path = resolve_model_path(name)
    config = _config_at(path, name)
    kind = model_kind(config)
    auto = AutoModelForSeq2SeqLM if kind == "seq2seq" else AutoModelForMaskedLM
    try:
        # A checkpoint without some weights (e.g. an encoder without its MLM head) gets them
        # randomly initialised: from a fixed seed, so every rank, every run and `ptdist eval`
        # see the same frozen model.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model, info = auto.from_pretrained(path, dtype=dtype, output_loading_info=True)
    except ValueError as exc:
        raise PtdistError(
            f"model '{name}' ({config.model_type}) is neither an encoder MLM nor an "
            f"encoder-decoder model; ptdist prompt-tunes RoBERTa/BERT-style MLMs and T5-style "
            f"models ({_first_line(exc)})."
        ) from None
    _report_load(name, model, info.get("missing_keys") or [])
    tokenizer = AutoTokenizer.from_pretrained(path)
    if kind == "mlm" and tokenizer.mask_token_id is None:
        raise PtdistError(f"tokenizer of '{name}' has no mask token, so the MLM verbalizer "
                          "cannot be read; use an MLM-pretrained encoder (RoBERTa, BERT).")
    cls = Seq2SeqBackbone if kind == "seq2seq" else MaskedLMBackbone
    return cls(name, model, tokenizer, max_length=max_length)


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


def _report_load(name: str, model, missing: list[str]) -> None:
    """The one line a model load prints: what was loaded, and what the checkpoint lacked."""
    params = sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters())  # ZeRO-3
    dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
    lacks = "" if not missing else (
        f"; {len(missing)} tensor(s) not in the checkpoint, randomly initialised (seed 0) and "
        f"frozen: {', '.join(sorted(missing)[:4])}{', ...' if len(missing) > 4 else ''}")
    say(f"[ptdist] loaded {name}: {type(model).__name__}, {params / 1e6:.1f}M parameters, "
        f"{dtype}{lacks}")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
