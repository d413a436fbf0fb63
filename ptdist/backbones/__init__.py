"""Frozen backbones (encoder MLM, encoder-decoder) and the soft prompt."""

from ptdist.backbones.base import Backbone, Batch
from ptdist.backbones.converted import CONVERTED
from ptdist.backbones.loading import (PRECISIONS, dtype_of, fit_mlm_head, fitted_head_key,
                                      load_backbone, model_config, model_kind,
                                      random_model, resolve_model_path)
from ptdist.backbones.presets import PRESETS
from ptdist.backbones.prompt import InitSpec, SoftPrompt, initial_prompt

__all__ = ["Backbone", "Batch", "CONVERTED", "InitSpec", "PRECISIONS", "PRESETS", "SoftPrompt",
           "dtype_of", "fit_mlm_head", "fitted_head_key", "initial_prompt", "load_backbone",
           "model_config", "model_kind", "random_model", "resolve_model_path"]
