"""Resolve a model argument (preset name, converted model, local folder, hub id) into a frozen
Backbone."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

from ptdist.backbones.base import Backbone
from ptdist.backbones.mlm import MaskedLMBackbone
from ptdist.backbones.presets import PRESETS, preset_dir
from ptdist.backbones.seq2seq import Seq2SeqBackbone
from ptdist.backbones.weights import (Checkpoint, LoadCheck, check_load, open_checkpoint,
                                      tensors_in, tied_as_stored, with_own_head,
                                      written_ties_head)
from ptdist.errors import PtdistError
# backbones' one hook into what stands in for the hub on a machine without it
from ptdist.offline import (CONVERTED, HEAD_PREFIXES, RECIPE, cached_head, converted_dir,
                            is_packaged, lacks_only_head, resolve_packaged, restore_head)
from ptdist.shipped import package_data

log = logging.getLogger(__name__)

# Configs of the paper's hub models (no weights): what the memory planner reads offline.
BUNDLED_CONFIGS = package_data("ptdist.backbones", "model_configs")
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
    (fitted on first use, ptdist.offline). Under DeepSpeed ZeRO-3, create ``HfDeepSpeedConfig``
    first so the weights are partitioned as they load instead of materialising the whole model
    per rank. The loaded weights are checked against the checkpoint's (`weights.check_load`)."""
    backbone, missing, checkpoint = _load(name, dtype, max_length)
    fitted = {}
    if backbone.kind == "mlm" and lacks_only_head(missing):
        head = restore_head(backbone, checkpoint.folder, missing)
        fitted = tensors_in(head / "head.safetensors")
    check = check_load(backbone.model, checkpoint, missing, fitted)
    _report_load(name, backbone.model, [m for m in missing if m not in fitted], check)
    return backbone


def fit_mlm_head(name: str, refit: bool = False) -> tuple[Path, dict, bool]:
    """The fitted MLM head of ``name``, an encoder checkpoint shipped without one: fitted now
    unless cached (or with ``refit``). Returns its folder, its record and whether it was fitted
    now."""
    backbone, missing, checkpoint = _load(name, torch.float32, 128)
    if backbone.kind != "mlm" or not lacks_only_head(missing):
        raise PtdistError(f"model '{name}' has its own MLM head (or is no encoder MLM): there "
                          "is no head to fit")
    _report_load(name, backbone.model, missing,
                 check_load(backbone.model, checkpoint, missing))
    return cached_head(backbone, checkpoint.folder, missing, refit=refit)


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


def _load(name: str, dtype: torch.dtype,
          max_length: int) -> tuple[Backbone, list[str], Checkpoint]:
    """The frozen backbone as the checkpoint holds it (tied as its files are), the tensors it
    lacked, and the checkpoint. Not yet checked against it."""
    from transformers import AutoTokenizer

    path = resolve_model_path(name)
    config = _config_at(path, name)
    kind = model_kind(config)
    checkpoint = open_checkpoint(path, name)
    cls = tied_as_stored(model_class(config, name), checkpoint)
    # A checkpoint without some weights gets them randomly initialised: from a fixed seed,
    # so every rank, every run and `ptdist eval` see the same frozen model. An encoder
    # without its MLM head then gets its fitted head instead (ptdist.offline).
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model, info = cls.from_pretrained(path, config=config, dtype=dtype,
                                          output_loading_info=True)
    missing = sorted(info.get("missing_keys") or [])
    tokenizer = AutoTokenizer.from_pretrained(path)
    if kind == "mlm" and tokenizer.mask_token_id is None:
        raise PtdistError(f"tokenizer of '{name}' has no mask token, so the MLM verbalizer "
                          "cannot be read; use an MLM-pretrained encoder (RoBERTa, BERT).")
    backbone_class = Seq2SeqBackbone if kind == "seq2seq" else MaskedLMBackbone
    return backbone_class(name, model, tokenizer, max_length=max_length), missing, checkpoint


def model_class(config, name: str) -> type:
    """The transformers class ptdist runs ``config`` in: its masked-LM or its seq2seq LM."""
    from transformers import MODEL_FOR_MASKED_LM_MAPPING, MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING

    classes = MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING if model_kind(config) == "seq2seq" else \
        MODEL_FOR_MASKED_LM_MAPPING
    if type(config) not in classes:
        raise PtdistError(
            f"model '{name}' ({config.model_type}) is neither an encoder MLM nor an "
            "encoder-decoder model; ptdist prompt-tunes RoBERTa/BERT-style MLMs and T5-style "
            "models.")
    return classes[type(config)]


def random_model(name: str, dtype: torch.dtype):
    """``name``'s architecture from its config (`model_config`) with random weights, tied as its
    checkpoint is: the config's ``tie_word_embeddings`` as written, so a T5 v1.1 has a head of
    its own (11.1 B parameters for XXL, not 11.0 B). Built where the caller builds: in a
    ``torch.device`` block, partitioned under ZeRO-3's ``HfDeepSpeedConfig``."""
    config = model_config(name)
    cls = model_class(config, name)
    if not written_ties_head(_config_source(name)):
        cls = with_own_head(cls, config)
    return cls._from_config(config, dtype=dtype)


def model_config(name: str):
    """``name``'s transformers config, without its weights: shipped with ptdist for the paper's
    hub models (`model_configs/`, so a plan needs no hub), else from its folder (a preset, a
    local or package folder) or the hub."""
    return _config_at(_config_source(name), name)


def _config_source(name: str) -> str:
    """Where `model_config` reads ``name``'s config: a bundled JSON file, or the model."""
    bundled = BUNDLED_CONFIGS / f"{name.replace('/', '--')}.json"
    return str(bundled) if bundled.exists() else resolve_model_path(name)


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


def _report_load(name: str, model, missing: list[str], check: LoadCheck) -> None:
    """The one line a model load prints: what was loaded, that it is its checkpoint, and what
    the checkpoint lacked."""
    params = sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters())  # ZeRO-3
    dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
    lacks = "" if not missing else (
        f"; {len(missing)} tensor(s) not in the checkpoint, randomly initialised (seed 0) and "
        f"frozen: {', '.join(sorted(missing)[:4])}{', ...' if len(missing) > 4 else ''}")
    log.info(f"[ptdist] loaded {name}: {type(model).__name__}, {params / 1e6:.1f}M parameters, "
             f"{dtype}; {check.checked} tensors equal the checkpoint's ({check.seconds:.2f} s)"
             f"{lacks}")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
